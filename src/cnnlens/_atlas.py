"""The atlas's computation (in the spirit of OpenAI Microscope): for chosen layers, each
channel's feature visualization, its top dataset patches and (first layer) its filter;
plus the t-SNE map of the dataset and example nearest-neighbour queries. Returns data
only; ``render/_atlas.py`` writes the pages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ._modules import layer_name, resolve_layer
from ._progress import Progress, step
from ._progress import progress as _progress
from ._trace import default_feature_layer, trace_calls
from .behaviour import activations, filters, visualize
from .behaviour._inspect import first_convolution
from .dataset import FeatureStore, Patch, embed, extract_features, pixel_nearest, top_patches
from .dataset._batches import split_item, to_input
from .dataset._sources import Head, item_labels
from .errors import InputError
from .layers import receptive_field
from .models import LoadedModel

__all__ = [
    "FLAT_STD",
    "Atlas",
    "ChannelView",
    "LayerView",
    "NeighbourQuery",
    "atlas_steps",
    "build_atlas",
]


# A feature visualization whose pixels vary less than this (std, [0, 1] scale) is flat: the
# optimizer could not drive the unit away from the plain start.
FLAT_STD = 0.02


@dataclass(frozen=True)
class ChannelView:
    channel: int
    visualization: Tensor | None  # (C, H, W) in [0, 1]
    patches: list[Patch]
    weights: Tensor | None  # the channel's filter, first convolution only
    pixel_std: float = 1.0  # the visualization's pixel standard deviation
    reached: float | None = None  # the channel's mean activation on the visualization

    @property
    def flat(self) -> bool:
        """The optimizer could not drive this unit: it stays silent on its visualization, or
        the picture has no more contrast than the starting noise and reaches less than a
        tenth of the unit's strongest dataset activation."""
        if self.visualization is None or (self.reached is not None and self.reached <= 0):
            return True
        best = max((p.activation for p in self.patches), default=0.0)
        weak = self.reached is None or self.reached < 0.1 * best
        return self.pixel_std < FLAT_STD and weak

    @property
    def low_contrast(self) -> bool:
        """A nearly uniform picture that still drives the unit (shown, with a note)."""
        return not self.flat and self.pixel_std < FLAT_STD

    @property
    def silent(self) -> bool:
        """The unit never fired on the sampled items (every top patch at <= 0)."""
        return all(p.activation <= 0 for p in self.patches)


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
    progress: bool | None = None,
    engine: str = "local",
    **ray_options: Any,
) -> Atlas:
    """Compute the atlas for ``layers`` (dotted names) of ``model`` over ``dataset``.

    ``channels``: the first N channels of each layer; ``sample``: items used for patches,
    the map and the neighbour queries (the first N of the dataset). ``progress``: a bar on
    stderr counting finished steps (see :mod:`cnnlens._progress`). ``engine="ray"`` runs
    the dataset passes (patches, features, pixel neighbours) on Ray, with the same results
    (``ray_options`` as in :func:`cnnlens.extract_features`)."""
    if not layers:
        raise InputError("the atlas needs at least one layer")
    named: dict[int, str] = {}
    for name in layers:  # an unknown or repeated layer fails before any work
        key = id(resolve_layer(model.module, name))
        if key in named:
            first = named[key]
            raise InputError(
                f"layer {name!r} is given twice"
                if first == name
                else f"layers {first!r} and {name!r} are the same layer; give it once"
            )
        named[key] = name
    passes = {"engine": engine, **ray_options} if engine != "local" or ray_options else {}
    with _progress(atlas_steps(len(layers)), "atlas", enabled=progress) as bar:
        return _build(
            model,
            dataset,
            layers,
            (channels, k, steps, sample, queries, neighbours, seed),
            passes,
            bar,
        )


def atlas_steps(layers: int) -> int:
    """The steps :func:`build_atlas` counts: patches and visualizations per layer, the map,
    the neighbour queries."""
    return 2 * layers + 2


def _build(
    model: LoadedModel,
    dataset: object,
    layers: Sequence[str],
    settings: tuple[int, int, int, int, int, int, int],
    passes: dict[str, Any],
    bar: Progress,
) -> Atlas:
    channels, k, steps, sample, queries, neighbours, seed = settings
    module = model.module
    subset = Head(dataset, sample)
    probe = model.preprocess(Image.new("RGB", model.input_size[::-1]))
    first_conv = first_convolution(module)
    first_group = _first_layer_group(module, probe, first_conv)
    views = []
    for name in layers:
        layer = resolve_layer(module, name)
        with step(bar, f"{name}: top patches"):
            found = top_patches(
                model, subset, layer, channels=list(range(channels)), k=k, progress=False, **passes
            )
        chosen = sorted(found)
        with step(bar, f"{name}: feature visualization"):
            pictures = visualize(
                model, [f"{name}:{c}" for c in chosen], steps=steps, seed=seed, progress=False
            )
            reached = _reached(model, layer, pictures, chosen, probe)
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
                        float(pictures[i].float().std()),
                        reached[i],
                    )
                    for i, c in enumerate(chosen)
                ],
                receptive_field=_field_size(model, layer),
                patch_pictures={c: [_patch_picture(model, p) for p in found[c]] for c in chosen},
            )
        )
    with step(bar, "dataset map"):
        map_layer = default_feature_layer(module, probe)
        store = extract_features(model, subset, map_layer, progress=False, **passes)
        features = np.asarray(store.features)
        points = (
            embed(features, "tsne", seed=seed)
            if len(features) >= 10
            else np.zeros((len(features), 2))
        )
        items = [split_item(subset[i]) for i in range(len(subset))]
        labels = _labels(dataset, [lab for _, lab in items])
        pictures_all = [_picture(model, image) for image, _ in items]
    with step(bar, "nearest neighbours"):
        found_queries = _queries(
            model, subset, store, features, items, (queries, neighbours, seed), passes
        )
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


def _field_size(model: LoadedModel, layer: nn.Module) -> tuple[int, int] | None:
    try:
        return receptive_field(model.module, layer, model.input_size).size
    except InputError:  # no spatial map (after global pooling)
        return None


def _labels(dataset: object, labels: Sequence[int]) -> list[str]:
    """Each item's class name ("" when unlabelled)."""
    names = item_labels(dataset)
    return [
        names[lab]
        if names is not None and 0 <= lab < len(names)
        else (str(lab) if lab >= 0 else "")
        for lab in labels
    ]


def _queries(
    model: LoadedModel,
    subset: Head,
    store: FeatureStore,
    features: np.ndarray,
    items: Sequence[tuple[object, int]],
    settings: tuple[int, int, int],
    passes: dict[str, Any],
) -> list[NeighbourQuery]:
    """Random query items with their feature-space and pixel-space neighbours."""
    queries, neighbours, seed = settings
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(items), size=min(queries, len(items)), replace=False).tolist()
    wanted = min(neighbours + 1, len(items))
    # One pass over the pictures for all the queries.
    pixel_idx, _ = pixel_nearest(
        subset, [items[q][0] for q in chosen], wanted, model=model, progress=False, **passes
    )
    found = []
    for q, pidx in zip(chosen, pixel_idx, strict=True):
        idx, _ = store.nearest(features[q], wanted)
        feature_rows = [int(i) for i in np.atleast_1d(idx) if int(i) != q][:neighbours]
        pixel_rows = [int(i) for i in np.atleast_1d(pidx) if int(i) != q][:neighbours]
        found.append(NeighbourQuery(q, feature_rows, pixel_rows))
    return found


def _reached(
    model: LoadedModel, layer: nn.Module, pictures: Tensor, channels: Sequence[int], probe: Tensor
) -> list[float]:
    """Each channel's mean activation on its own visualization (the objective it reached)."""
    x = pictures.detach().float()
    c_in = probe.shape[1]
    if x.shape[1] != c_in:
        x = x.mean(dim=1, keepdim=True).expand(-1, c_in, -1, -1)
    if x.shape[-2:] != probe.shape[-2:]:
        x = F.interpolate(x, size=probe.shape[-2:], mode="bilinear", align_corners=False)
    pre = model.preprocessing
    mean = torch.tensor(pre.mean[:c_in], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(pre.std[:c_in], dtype=x.dtype).view(1, -1, 1, 1)
    maps = activations(model.module, ((x - mean) / std).to(probe.device), layer)
    return [float(maps[i, c].mean()) for i, c in enumerate(channels)]


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
