"""The atlas's computation (in the spirit of OpenAI Microscope): for chosen layers, each
channel's feature visualization, its top dataset patches and (first layer) its filter;
plus the t-SNE map of the dataset and example nearest-neighbour queries. Returns data
only; ``render/_atlas.py`` writes the pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch import Tensor, nn

from ._modules import layer_name, resolve_layer
from ._trace import default_feature_layer, trace_calls
from .behaviour import filters, visualize
from .behaviour._inspect import first_convolution
from .dataset import Patch, embed, extract_features, pixel_nearest, top_patches
from .dataset._batches import split_item, to_input
from .dataset._sources import Head, item_labels
from .errors import InputError
from .layers import receptive_field
from .models import LoadedModel

__all__ = ["Atlas", "ChannelView", "LayerView", "NeighbourQuery", "build_atlas"]


@dataclass(frozen=True)
class ChannelView:
    channel: int
    visualization: Tensor | None  # (C, H, W) in [0, 1]
    patches: list[Patch]
    weights: Tensor | None  # the channel's filter, first convolution only


@dataclass(frozen=True)
class LayerView:
    name: str
    channels: list[ChannelView]
    receptive_field: tuple[int, int] | None
    patch_pictures: dict[int, list[Image.Image]]


@dataclass(frozen=True)
class NeighbourQuery:
    query: int
    feature: list[int]
    pixel: list[int]


@dataclass(frozen=True)
class Atlas:
    model: str
    dataset: str
    layers: list[LayerView]
    map_layer: str
    points: np.ndarray  # (N, 2) t-SNE of the first N items
    labels: list[str]  # per item, "" when unlabelled
    pictures: list[Image.Image]  # per item, as the model sees it
    queries: list[NeighbourQuery]


def _picture(model: LoadedModel, image: object) -> Image.Image:
    if isinstance(image, Image.Image):
        return model.preprocessing.crop_image(image)
    tensor = to_input(image, None)
    return model.deprocess(tensor) if tensor.min() < 0 else _pixels_to_image(tensor)


def _pixels_to_image(tensor: Tensor) -> Image.Image:
    from .render import tensor_to_image

    return tensor_to_image(tensor)


def _patch_picture(model: LoadedModel, patch: Patch) -> Image.Image:
    pixels = model.preprocessing.invert(patch.pixels.float().cpu())
    from .render import tensor_to_image

    return tensor_to_image(pixels)


def build_atlas(
    model: LoadedModel,
    dataset: object,
    layers: Sequence[str],
    *,
    channels: int = 8,
    k: int = 6,
    steps: int = 96,
    sample: int = 600,
    queries: int = 3,
    neighbours: int = 6,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Atlas:
    """Compute the atlas for ``layers`` (dotted names) of ``model`` over ``dataset``.

    ``channels``: the first N channels of each layer; ``sample``: items used for patches,
    the map and the neighbour queries (the first N of the dataset)."""
    if not layers:
        raise InputError("the atlas needs at least one layer")
    tick = progress or (lambda _stage: None)
    module = model.module
    resolved = [resolve_layer(module, name) for name in layers]
    subset = Head(dataset, sample)
    first_conv = first_convolution(module)
    probe = model.preprocess(Image.new("RGB", model.input_size[::-1]))
    first_group = _first_layer_group(module, probe, first_conv)
    views = []
    for name, layer in zip(layers, resolved, strict=True):
        tick(f"{name}: top patches")
        found = top_patches(
            model, subset, layer, channels=list(range(channels)), k=k, progress=False
        )
        chosen = sorted(found)
        tick(f"{name}: feature visualization")
        objectives = [f"{name}:{c}" for c in chosen]
        pictures = visualize(model, objectives, steps=steps, seed=seed, progress=False)
        try:
            rf = receptive_field(module, layer, model.input_size)
            size: tuple[int, int] | None = rf.size
        except InputError:
            size = None
        weights = filters(module, first_conv) if id(layer) in first_group else None
        views.append(
            LayerView(
                name=name,
                channels=[
                    ChannelView(
                        c,
                        pictures[i],
                        found[c],
                        None if weights is None or c >= weights.shape[0] else weights[c],
                    )
                    for i, c in enumerate(chosen)
                ],
                receptive_field=size,
                patch_pictures={c: [_patch_picture(model, p) for p in found[c]] for c in chosen},
            )
        )
    tick("dataset map")
    map_layer = default_feature_layer(module, probe)
    store = extract_features(model, subset, map_layer, progress=False)
    features = np.asarray(store.features)
    points = (
        embed(features, "tsne", seed=seed) if len(features) >= 10 else np.zeros((len(features), 2))
    )
    names = item_labels(dataset)
    items = [split_item(subset[i]) for i in range(len(subset))]
    labels = [
        (
            names[lab]
            if names is not None and 0 <= lab < len(names)
            else (str(lab) if lab >= 0 else "")
        )
        for _, lab in items
    ]
    pictures_all = [_picture(model, image) for image, _ in items]
    tick("nearest neighbours")
    rng = np.random.default_rng(seed)
    chosen_queries = rng.choice(len(items), size=min(queries, len(items)), replace=False)
    found_queries = []
    for q in chosen_queries.tolist():
        idx, _ = store.nearest(features[q], min(neighbours + 1, len(items)))
        feature_rows = [int(i) for i in np.atleast_1d(idx) if int(i) != q][:neighbours]
        pidx, _ = pixel_nearest(
            subset, items[q][0], min(neighbours + 1, len(items)), model=model, progress=False
        )
        pixel_rows = [int(i) for i in np.atleast_1d(pidx) if int(i) != q][:neighbours]
        found_queries.append(NeighbourQuery(q, feature_rows, pixel_rows))
    spec = getattr(dataset, "spec", None)
    return Atlas(
        model=model.name,
        dataset=spec if isinstance(spec, str) else type(dataset).__name__,
        layers=views,
        map_layer=layer_name(module, map_layer),
        points=points,
        labels=labels,
        pictures=pictures_all,
        queries=found_queries,
    )


def _first_layer_group(module: nn.Module, probe: Tensor, conv: nn.Module) -> set[int]:
    """Ids of modules whose output has exactly the first convolution's output shape and
    comes right after it (conv, its batch norm, its rectifier): their channels are that
    convolution's filters."""
    calls = trace_calls(module, probe)
    shapes = [c.output_shape for c in calls]
    start = next(i for i, c in enumerate(calls) if c.module is conv)
    group = {id(conv)}
    for call, shape in zip(calls[start + 1 :], shapes[start + 1 :], strict=True):
        if shape != shapes[start]:
            break
        group.add(id(call.module))
    return group
