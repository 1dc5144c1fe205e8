"""Commands ``index``, ``neighbors``, ``embed`` and ``patches``: the model seen through a
whole dataset (a folder of pictures or ``fashion-mnist[:train|:test]``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from ..dataset import FeatureStore, embed, extract_features, pixel_nearest, top_patches
from ..dataset._batches import split_item
from ..dataset._embed import EMBED_METHODS
from ..dataset._sources import Head, open_dataset, open_item
from ..errors import InputError
from ..models import LoadedModel, load_model
from ..render import save_picture, tensor_to_image
from ..render._dataset import (
    embedding_html,
    embedding_scatter,
    neighbours_figure,
    patch_rows,
    thumbnail_map,
)
from ._behaviour import parse_channels
from ._common import (
    Output,
    add_batch_size,
    add_count,
    add_dataset,
    add_image,
    add_model_args,
    add_output,
    open_image,
    open_model,
    positive_int,
    wrote,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "index",
        help="extract a layer's features of a dataset into a store",
        description="Run the model over every item of DATASET and keep one feature vector "
        "per item from a layer, pooled, in a store folder on disk (memory stays flat); "
        "an interrupted run resumes where it stopped. The store serves neighbors and embed.",
        epilog="examples:\n  cnnlens index fashion-mnist:test --model fashion_cnn --layer features.relu3 -o fm_store\n"
        "  cnnlens index photos/ --layer _blocks.15 --pool max -o photo_store",
    )
    add_dataset(p, nargs="?", note=" (optional with --verify)")
    add_model_args(p)
    p.add_argument("--layer", help="layer name (default: the last feature map)")
    p.add_argument(
        "--pool",
        choices=("avg", "max", "flatten"),
        default="avg",
        help="how a feature map becomes a vector: global average, global max, or every "
        "value (default avg)",
    )
    add_batch_size(p, 64, "items per forward pass")
    add_workers(p)
    add_limit(p)
    add_count(
        p, "--shard-rows", default=None, help="rows per shard of a new store (default: about 32 MB)"
    )
    p.add_argument(
        "--redo",
        metavar="SHARDS",
        help="shards to compute again, e.g. 3,7 or all (as a damage message advises)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="only check the store: every shard's checksum (and the dataset's content if given)",
    )
    add_engine_args(p)
    add_output(p, "store folder (resumes if it holds a partial store)", kind="folder")
    p.set_defaults(run=run_index)

    p = sub.add_parser(
        "neighbors",
        help="nearest neighbours in feature space and pixel space",
        description="The dataset items nearest to IMAGE in a store's feature space, and "
        "for comparison the nearest in pixel space (Euclidean over the resized pictures).",
        epilog="example:\n  cnnlens neighbors fashion-mnist:test@7 --store fm_store -k 8 -o nn.png",
    )
    add_image(p, help="image file, sample name, or a dataset item as DATASET@INDEX")
    p.add_argument("--store", required=True, help="store folder made by `cnnlens index`")
    add_model_args(p, default=None, default_text="the model the store was made with")
    add_count(p, "-k", default=8, help="neighbours to show (default 8)")
    p.add_argument(
        "--metric",
        choices=("cosine", "l2"),
        default="cosine",
        help="distance in feature space (default cosine)",
    )
    p.add_argument("--no-pixels", action="store_true", help="skip the pixel-space row")
    add_engine_args(p)
    add_output(p, kind="picture")
    p.set_defaults(run=run_neighbors)

    p = sub.add_parser(
        "embed",
        help="a 2-D map of a store's features (t-SNE, UMAP, PCA)",
        description="Project a store's feature vectors to 2-D and draw them coloured by "
        "class, or as the classic map of thumbnails (--thumbnails); --html adds a page "
        "showing each point's picture on hover.",
        epilog="examples:\n  cnnlens embed --store fm_store -o tsne.png --html tsne.html\n"
        "  cnnlens embed --store fm_store --method umap --thumbnails 900 -o map.png",
    )
    p.add_argument("--store", required=True, help="store folder made by `cnnlens index`")
    p.add_argument(
        "--method", choices=EMBED_METHODS, default="tsne", help="projection (default tsne)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_count(p, "--sample", default=None, help="embed a seeded random sample of N rows")
    p.add_argument(
        "--thumbnails",
        nargs="?",
        type=int,
        const=1024,
        metavar="N",
        help="draw the classic image map instead: N pictures snapped to a grid (default 1024)",
    )
    p.add_argument(
        "--tile",
        type=positive_int,
        default=32,
        metavar="PIXELS",
        help="thumbnail size in pixels (default 32)",
    )
    p.add_argument(
        "--html",
        type=Output("file"),
        metavar="FILE",
        help="also write an interactive page (pictures shown on hover)",
    )
    add_count(p, "--html-points", default=2000, help="points on the HTML page (default 2000)")
    add_output(p, kind="picture")
    p.set_defaults(run=run_embed)

    p = sub.add_parser(
        "patches",
        help="maximally activating dataset patches per channel",
        description="For each chosen channel of a layer, the k dataset patches (-k; each "
        "position's receptive field) where the channel is most active, in one pass over "
        "the data.",
        epilog="example:\n  cnnlens patches fashion-mnist:test --model fashion_cnn "
        "--layer features.relu2 --channels 0-7 -o patches.png",
    )
    add_dataset(p)
    add_model_args(p)
    p.add_argument("--layer", help="layer name (default: the last feature map)")
    p.add_argument("--channels", default="0-15", help="channels, e.g. 0-15 or 3,17 (default 0-15)")
    add_count(p, "-k", default=9, help="patches per channel (default 9)")
    add_batch_size(p, 64, "items per forward pass")
    add_workers(p)
    add_limit(p)
    add_engine_args(p)
    add_output(p, kind="picture")
    p.set_defaults(run=run_patches)


def add_workers(parser: Any) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="DataLoader worker processes that read and preprocess items (default 0: none)",
    )


def add_limit(parser: Any) -> None:
    add_count(parser, "--limit", default=None, help="only the first N items")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where the dataset pass runs: this process (default) or a Ray cluster "
        "(pip install 'cnnlens[ray]')",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to join (auto: the one running on this machine; default: start a "
        "local one)",
    )
    add_count(parser, "--ray-workers", default=None, help="Ray actors (default: one per CPU)")
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="GPUS",
        help="GPUs per Ray actor (default 0: CPU)",
    )


def engine_options(args: argparse.Namespace, model: LoadedModel | None) -> dict[str, Any]:
    """``engine`` and the Ray options of the engine arguments. Ray actors load the model
    from the command's spec themselves (random weights are shipped, as they cannot be
    drawn again)."""
    if args.engine != "ray":
        for flag, value in (("--address", args.address), ("--ray-workers", args.ray_workers)):
            if value is not None:
                raise InputError(f"{flag} only applies with --engine ray")
        return {}
    options: dict[str, Any] = {
        "engine": "ray",
        "address": args.address,
        "workers": args.ray_workers,
        "num_gpus": args.gpus_per_worker,
    }
    if model is not None and not getattr(args, "random_weights", False):
        options["model_spec"] = {
            "spec": args.model,
            "arch": args.arch,
            "trust_pickle": bool(getattr(args, "trust_pickle", False)),
        }
    return options


def _dataset(spec: str, limit: int | None) -> Any:
    data = open_dataset(spec)
    return Head(data, limit) if limit is not None else data


def _redo(text: str | None) -> list[int] | str | None:
    if text is None or text == "all":
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--redo {text!r}: give shard numbers like 3,7 or 'all'") from None


def run_verify(args: argparse.Namespace) -> int:
    store = FeatureStore.open(args.output)  # checks every shard's size, ids and checksum
    if args.dataset is not None:
        store.check_dataset(_dataset(args.dataset, args.limit))
    shards = len(store.manifest["shards"])
    state = "complete" if store.complete else f"{store.done} of {store.total} rows done"
    print(f"{args.output}: {shards} shards verified, {state}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    if args.verify:
        return run_verify(args)
    if args.dataset is None:
        raise InputError("index needs a DATASET (only --verify works without one)")
    model = open_model(args)
    data = _dataset(args.dataset, args.limit)
    meta = {
        "model_spec": args.model,
        "arch": args.arch,
        "random_weights": bool(args.random_weights),
        "limit": args.limit,
    }
    store = extract_features(
        model,
        data,
        args.layer,
        batch_size=args.batch_size,
        out=args.output,
        pool=args.pool,
        num_workers=args.workers,
        meta=meta,
        shard_rows=args.shard_rows,
        redo=_redo(args.redo),
        **engine_options(args, model),
    )
    print(f"{store.count} x {store.dim} features of {store.layer!r} in {args.output}")
    return 0


def _store_model(store: FeatureStore, args: argparse.Namespace) -> LoadedModel:
    if args.model is not None:
        return open_model(args)
    meta = store.meta
    spec = meta.get("model_spec")
    if not spec:
        raise InputError(f"{args.store} does not record its model; pass --model")
    if meta.get("random_weights"):
        raise InputError(
            f"{args.store} was made with random weights, which cannot be made again; "
            "index with pretrained weights"
        )
    kwargs = {"arch": meta["arch"]} if meta.get("arch") else {}
    return load_model(spec, device=args.device, **kwargs)


def _store_dataset(store: FeatureStore, where: str) -> Any:
    if store.dataset is None:
        raise InputError(f"{where} does not record its dataset (made outside `cnnlens index`)")
    data = open_dataset(store.dataset)
    store.check_dataset(Head(data, store.total))  # the pictures shown are the rows' own
    return Head(data, store.count)


def _picture(image: Any, model: LoadedModel | None) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Tensor):
        if model is not None:
            return model.deprocess(image)
        return tensor_to_image(image)
    raise InputError(f"cannot draw a dataset item of type {type(image).__name__}")


def _label_name(store: FeatureStore, label: int) -> str:
    classes = store.classes
    if label < 0:
        return ""
    return classes[label] if classes is not None and label < len(classes) else str(label)


def run_neighbors(args: argparse.Namespace) -> int:
    store = FeatureStore.open(args.store)
    model = _store_model(store, args)
    item = open_item(args.image)
    if item is not None:
        query_image, query_label = split_item(item)
    else:
        query_image, query_label = open_image(args.image), -1
    indices, distances = store.nearest(query_image, args.k, metric=args.metric, model=model)
    index = store.index_info(args.metric)
    if index["kind"] != "flat":
        print(
            f"approximate search ({index['kind']}, nprobe {index['nprobe']} of "
            f"{index['nlist']} lists): recall@10 {index['recall_at_10']:.3f} when built",
            file=sys.stderr,
        )
    data = _store_dataset(store, args.store)

    def tiles(rows: np.ndarray, dists: np.ndarray, kind: str) -> list[tuple[Image.Image, str]]:
        out = []
        for row, dist in zip(rows, dists, strict=True):
            image, label = split_item(data[int(row)])
            name = _label_name(store, label)
            out.append((_picture(image, model), f"#{int(row)} {name}\n{kind}={dist:.3g}"))
        return out

    feature = tiles(indices, distances, "d")
    pixel = None
    if not args.no_pixels:
        p_idx, p_dist = pixel_nearest(
            data, query_image, args.k, model=model, **engine_options(args, None)
        )
        pixel = tiles(p_idx, p_dist, "L2")
    caption = "query" + (f"\n{_label_name(store, query_label)}" if query_label >= 0 else "")
    figure = neighbours_figure(
        _picture(query_image, model),
        caption,
        feature,
        pixel,
        feature_title=f"features\n{store.layer}\n{args.metric}",
        pixel_title="pixels\nL2",
    )
    save_picture(figure, args.output)
    wrote(args.output)
    return 0


def _is_gray(image: Image.Image) -> bool:
    if image.mode == "L":
        return True
    r, g, b = (np.asarray(c) for c in image.convert("RGB").split())
    return bool(np.array_equal(r, g) and np.array_equal(g, b))


def run_embed(args: argparse.Namespace) -> int:
    store = FeatureStore.open(args.store)
    rows = np.arange(store.count)
    rng = np.random.default_rng(args.seed)
    if args.sample is not None:
        if args.sample < 4:
            raise InputError("--sample must be at least 4")
        if args.sample < store.count:
            rows = np.sort(rng.choice(store.count, args.sample, replace=False))
    features = np.asarray(store.features[rows])
    labels = np.asarray(store.labels[rows])
    points = embed(features, args.method, seed=args.seed)
    title = f"{args.method} of {store.model_name} {store.layer} ({len(rows)} items)"

    def pictures(chosen: np.ndarray) -> list[Image.Image]:
        data = _store_dataset(store, args.store)
        return [_picture(split_item(data[int(rows[i])])[0], None) for i in chosen]

    def subset(limit: int, what: str) -> np.ndarray:
        if limit >= len(rows):
            return np.arange(len(rows))
        print(f"{what}: a seeded random {limit} of {len(rows)} points", file=sys.stderr)
        return np.sort(rng.choice(len(rows), limit, replace=False))

    if args.thumbnails is not None:
        chosen = subset(args.thumbnails, "thumbnails")
        thumbs = pictures(chosen)
        image = thumbnail_map(points[chosen], thumbs, tile=args.tile)
        if all(_is_gray(t) for t in thumbs):
            image = image.convert("L")  # a third of the file size, same picture
    else:
        image = embedding_scatter(points, labels, store.classes, title=title)
    save_picture(image, args.output)
    wrote(args.output)
    if args.html:
        chosen = subset(args.html_points, "html")
        captions = [f"#{int(rows[i])} {_label_name(store, int(labels[i]))}".strip() for i in chosen]
        page = embedding_html(
            points[chosen],
            pictures(chosen),
            captions,
            labels[chosen],
            store.classes,
            title=title,
        )
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)  # checked at parse time
        Path(args.html).write_text(page, encoding="utf-8")
        wrote(args.html)
    return 0


def run_patches(args: argparse.Namespace) -> int:
    model = open_model(args)
    data = _dataset(args.dataset, args.limit)
    channels = parse_channels(args.channels)
    found = top_patches(
        model,
        data,
        args.layer,
        channels=channels,
        k=args.k,
        batch_size=args.batch_size,
        num_workers=args.workers,
        **engine_options(args, model),
    )
    rows = []
    for channel, patches in found.items():
        images = [tensor_to_image(model.preprocessing.invert(p.pixels)) for p in patches]
        captions = [f"{p.activation:.2f}" for p in patches]
        rows.append((f"ch {channel}", images, captions))
    save_picture(patch_rows(rows), args.output)
    wrote(args.output)
    return 0
