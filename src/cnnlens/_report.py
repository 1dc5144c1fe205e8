"""The report's computation: every explanation method side by side for an image, with
the options each ran with, timings and deletion/insertion curves, where two methods give
the same map, the layers shown described (stage, resolution, receptive field), plus a look
at model behaviour. Returns data only; ``render/_html.py`` turns it into a page."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ._guard import guard
from ._modules import layer_name
from ._progress import Progress, step
from ._progress import progress as _progress
from ._trace import trace_calls
from .attribution.api import Explanation, explain, registry
from .behaviour import Factorization, activations, factorize, filters
from .behaviour._inspect import first_convolution, mid_feature_layer, prefer_rectified, top_channels
from .errors import InputError
from .evaluate import DeletionInsertion, TrustRow, trust_table
from .evaluate._deletion import CURVE_STEPS
from .layers import layers
from .models import LoadedModel

__all__ = [
    "DEFAULT_OPTIONS",
    "REPORT_METHODS",
    "ROAD_FRACTIONS",
    "TRUST_METRICS",
    "Coincidence",
    "ImageReport",
    "LayerNote",
    "MethodResult",
    "ModelBehaviour",
    "Report",
    "build_report",
    "depth_layers",
    "report_steps",
]

# The field's map, in the order the report shows it.
REPORT_METHODS: tuple[str, ...] = (
    "occlusion",
    "saliency",
    "smoothgrad",
    "deconvnet",
    "guided_backprop",
    "cam",
    "gradcam",
    "guided_gradcam",
    "deeplift",
    "lrp",
)

# The options the report runs each method with; every one is written out (not left to
# the method's default) so the page can say exactly what was used.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 32, "stride": 16, "baseline": 0.0},
    "smoothgrad": {"samples": 16, "noise": 0.15, "seed": 0},
    "deeplift": {"baseline": "zeros"},
    "lrp": {"composite": "epsilon_plus"},
}

# The trust table under each class: the metrics that need no re-run of the method (the
# deletion/insertion curves are those drawn in each panel), ROAD at three fractions to keep
# the report quick.
TRUST_METRICS: tuple[str, ...] = ("deletion", "insertion", "road", "infidelity")
ROAD_FRACTIONS: tuple[float, ...] = (0.2, 0.5, 0.8)

# Two maps this close (Pearson r of the heatmaps) are called the same picture.
SAME_MAP = 0.99


@dataclass(frozen=True)
class MethodResult:
    method: str
    explanation: Explanation | None
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)
    curves: DeletionInsertion | None = None
    error: str | None = None
    trust: TrustRow | None = None

    @property
    def deletion_auc(self) -> float | None:
        return None if self.curves is None else float(self.curves.deletion_auc[0])

    @property
    def insertion_auc(self) -> float | None:
        return None if self.curves is None else float(self.curves.insertion_auc[0])


@dataclass(frozen=True)
class Coincidence:
    """Two methods that gave the same map here. ``exact``: one is a non-negative multiple
    of the other's positive part (measured ``difference``: the largest deviation relative
    to the map's peak); else they only correlate (``correlation``)."""

    first: str
    second: str
    correlation: float
    exact: bool
    difference: float


@dataclass(frozen=True)
class ImageReport:
    name: str
    picture: Image.Image  # the crop the model saw
    inputs: Tensor
    top: list[tuple[int, str, float]]  # (class, label, probability)
    explained: dict[int, list[MethodResult]]  # class -> results
    coincidences: dict[int, list[Coincidence]] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerNote:
    """A layer in plain terms: ``stage`` of ``stages`` (the network's distinct feature-map
    resolutions, input side first), output ``channels`` × ``size``, ``stride`` (input
    pixels per map position) and ``receptive_field`` (h, w) in input pixels (None: no
    local field, or ``receptive_field_error`` says why it could not be computed)."""

    name: str
    type: str
    channels: int
    size: tuple[int, int]
    stride: int
    stage: int
    stages: int
    receptive_field: tuple[int, int] | None
    receptive_field_error: str | None = None


@dataclass(frozen=True)
class ModelBehaviour:
    first_filters: Tensor
    first_layer: str
    depths: list[tuple[str, Tensor, Tensor, Tensor]]  # (layer, maps (C,h,w), top values, top ids)
    factor_layer: str
    factorization: Factorization


@dataclass(frozen=True)
class Report:
    model: str
    images: list[ImageReport]
    behaviour: ModelBehaviour | None
    layers: dict[str, LayerNote] = field(default_factory=dict)
    zero_colour: tuple[int, ...] = ()  # the input tensor 0 as a pixel colour (0-255)
    # The same steps as every other view, so its AUCs are theirs: 32 instead of 24 cost
    # the demo report 2-3 s of its 30 (29.4-29.6 s with 24 steps, 31.2-33.1 s with 32).
    curve_steps: int = CURVE_STEPS
    timings: dict[str, float] = field(default_factory=dict)


def depth_layers(
    model: nn.Module, inputs: Tensor, fractions: Sequence[int] = (4, 8, 16)
) -> list[nn.Module]:
    """For each 1/f of the input side, the deepest module whose feature map has that size
    (shallow, middle and deep looks at the same network)."""
    side = min(inputs.shape[-2:])
    calls = [
        c
        for c in trace_calls(model, inputs[:1])
        if c.output_shape is not None and len(c.output_shape) == 4 and c.output_shape[1] > 3
    ]
    chosen: list[nn.Module] = []
    for fraction in fractions:
        at = prefer_rectified([c for c in calls if min(c.output_shape[-2:]) == side // fraction])  # type: ignore[index]
        if at and all(at[-1].module is not m for m in chosen):
            chosen.append(at[-1].module)
    return chosen


def describe_layers(
    model: LoadedModel, inputs: Tensor, names: Sequence[str]
) -> dict[str, LayerNote]:
    """Each named layer's :class:`LayerNote` (one receptive-field probe for all of them)."""
    wanted = set(names)
    if not wanted:
        return {}
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    error = None
    try:
        infos = layers(model, size)
    except InputError as exc:  # the probe cannot run this model: describe without fields
        infos, error = layers(model, size, receptive_fields=False), str(exc)
    maps = [i for i in infos if i.output_shape is not None and len(i.output_shape) == 3]
    # Stages: the resolutions of the layers with weights (padding modules make odd sizes).
    sizes = sorted(
        {i.output_shape[-2:] for i in maps if min(i.output_shape[-2:]) > 1 and i.parameters},  # type: ignore[index]
        key=lambda s: -s[0] * s[1],
    )
    side = int(inputs.shape[-1])
    notes = {}
    for info in maps:
        if info.name not in wanted or info.output_shape is None:
            continue
        channels, h, w = info.output_shape
        notes[info.name] = LayerNote(
            name=info.name,
            type=info.type,
            channels=channels,
            size=(h, w),
            stride=max(1, round(side / w)),
            stage=sizes.index((h, w)) + 1 if (h, w) in sizes else len(sizes),
            stages=len(sizes),
            receptive_field=None if info.receptive_field is None else info.receptive_field.size,
            receptive_field_error=error,
        )
    return notes


def _top(model: LoadedModel, inputs: Tensor, n: int) -> list[tuple[int, str, float]]:
    with torch.inference_mode(), guard(model) as module:
        probs = module(inputs).softmax(dim=1)[0]
    values, ids = probs.topk(min(n, probs.shape[0]))
    return [(int(i), model.label(int(i)), float(v)) for v, i in zip(values, ids, strict=True)]


def _explain_one(
    model: LoadedModel,
    inputs: Tensor,
    target: int,
    method: str,
    options: dict[str, Any],
    steps: int,
) -> MethodResult:
    if method not in registry():
        return MethodResult(method, None, 0.0, options, error="not available in this build")
    start = time.perf_counter()
    try:
        explanation = explain(model, inputs, method, target=target, **options)
    except InputError as exc:  # e.g. CAM on a model without a GAP + linear head
        return MethodResult(method, None, time.perf_counter() - start, options, error=str(exc))
    seconds = time.perf_counter() - start
    (row,) = trust_table(
        model,
        inputs,
        [explanation],
        metrics=TRUST_METRICS,
        steps=steps,
        fractions=ROAD_FRACTIONS,
        target=target,
        progress=False,
    ).rows
    return MethodResult(method, explanation, seconds, options, row.curves, trust=row)


def _cam_multiple(cam: Tensor, gradcam: Tensor) -> float:
    """max |gradcam − c·ReLU(cam)| / max gradcam for the best c ≥ 0 (0: the same map)."""
    positive = cam.clamp(min=0).double().flatten()
    other = gradcam.double().flatten()
    scale = float(positive @ other / (positive @ positive).clamp(min=1e-30))
    peak = float(other.abs().max()) or 1.0
    return float((other - scale * positive).abs().max()) / peak


def coincidences(results: Sequence[MethodResult]) -> list[Coincidence]:
    """Pairs of methods whose heatmaps are the same picture here (see :data:`SAME_MAP`)."""
    done = [r for r in results if r.explanation is not None]
    found = []
    for i, a in enumerate(done):
        for b in done[i + 1 :]:
            assert a.explanation is not None and b.explanation is not None
            x = a.explanation.heatmap()[0].flatten().double()
            y = b.explanation.heatmap()[0].flatten().double()
            r = float(torch.corrcoef(torch.stack([x, y]))[0, 1]) if x.std() * y.std() > 0 else 0.0
            pair = {a.method, b.method}
            exact = pair == {"cam", "gradcam"} and a.explanation.layer == b.explanation.layer
            difference = 0.0
            if exact:
                cam, grad = (a, b) if a.method == "cam" else (b, a)
                assert cam.explanation is not None and grad.explanation is not None
                difference = _cam_multiple(
                    cam.explanation.attribution[0], grad.explanation.attribution[0]
                )
                exact = difference < 1e-3
            if exact or r >= SAME_MAP:
                found.append(Coincidence(a.method, b.method, r, exact, difference))
    return found


def _behaviour(model: LoadedModel, inputs: Tensor, k: int) -> ModelBehaviour:
    module = model.module
    conv = first_convolution(module)
    depths = []
    for layer in depth_layers(module, inputs):
        maps = activations(module, inputs, layer)[0]
        values, ids = top_channels(maps[None], 8)
        depths.append((layer_name(module, layer), maps, values[0], ids[0]))
    factor_layer = mid_feature_layer(module, inputs)
    return ModelBehaviour(
        first_filters=filters(module, conv),
        first_layer=layer_name(module, conv),
        depths=depths,
        factor_layer=layer_name(module, factor_layer),
        factorization=factorize(module, inputs, factor_layer, k),
    )


def report_steps(images: int, methods: int, classes: int = 1, behaviour: bool = True) -> int:
    """How many steps :func:`build_report` counts (for a caller's own display)."""
    return images * (1 + classes * methods) + (1 if behaviour else 0) + 1


def build_report(
    model: LoadedModel,
    images: Sequence[tuple[str, Image.Image]],
    *,
    targets: Sequence[int | None] | None = None,
    second_class: bool = False,
    methods: Sequence[str] = REPORT_METHODS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    steps: int = CURVE_STEPS,
    factors: int = 6,
    behaviour: bool = True,
    progress: bool | None = None,
) -> Report:
    """Compute everything the report shows. ``targets``: per image, a class or None (top
    class); ``second_class`` adds the second most likely class. ``options``: per method,
    options that replace :data:`DEFAULT_OPTIONS` for it. ``steps``: deletion/insertion
    steps. ``progress``: a bar on stderr (see :mod:`cnnlens._progress`)."""
    if targets is not None and len(targets) != len(images):
        raise InputError(f"{len(targets)} targets for {len(images)} images")
    chosen = {m: dict(DEFAULT_OPTIONS.get(m, {})) for m in methods}
    for method, given in (options or {}).items():
        if method not in chosen:
            raise InputError(f"options for {method!r}, which is not among the methods")
        chosen[method] = dict(given)
    total = report_steps(len(images), len(methods), 2 if second_class else 1, behaviour)
    with _progress(total, "report", enabled=progress) as bar:
        reports = [
            _image_report(
                model,
                name,
                image,
                None if targets is None else targets[i],
                second_class,
                chosen,
                steps,
                bar,
            )
            for i, (name, image) in enumerate(images)
        ]
        look = None
        if behaviour and reports:
            with step(bar, "model behaviour"):
                look = _behaviour(model, reports[0].inputs, factors)
        shown = [
            r.explanation.layer
            for image in reports
            for results in image.explained.values()
            for r in results
            if r.explanation is not None and r.explanation.layer is not None
        ]
        if look is not None:
            shown += [name for name, *_ in look.depths] + [look.factor_layer]
        with step(bar, "layers: receptive fields"):
            notes = describe_layers(model, reports[0].inputs, shown) if reports else {}
    zero = model.preprocessing.invert(torch.zeros(3, 1, 1))
    return Report(
        model=model.name,
        images=reports,
        behaviour=look,
        layers=notes,
        zero_colour=tuple(round(255 * float(v)) for v in zero.flatten()),
        curve_steps=steps,
    )


def _image_report(
    model: LoadedModel,
    name: str,
    image: Image.Image,
    wanted: int | None,
    second_class: bool,
    options: dict[str, dict[str, Any]],
    steps: int,
    bar: Progress,
) -> ImageReport:
    with step(bar, f"{name}: predict"):
        inputs = model.preprocess(image)
        top = _top(model, inputs, 5)
        classes = [top[0][0] if wanted is None else wanted]
        if second_class:
            classes.append(next(c for c, _, _ in top if c != classes[0]))
    explained: dict[int, list[MethodResult]] = {}
    for target in classes:
        results = []
        for method, method_options in options.items():
            with step(bar, f"{name}: {method}"):
                results.append(_explain_one(model, inputs, target, method, method_options, steps))
        explained[target] = results
    return ImageReport(
        name,
        model.deprocess(inputs),
        inputs,
        top,
        explained,
        {c: coincidences(r) for c, r in explained.items()},
    )
