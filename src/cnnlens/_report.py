"""The report's computation: every explanation method side by side for an image, with
timings and deletion/insertion AUCs, plus a look at model behaviour. Returns data only;
``render/_html.py`` turns it into a page."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from ._guard import guard
from ._modules import layer_name
from ._trace import trace_calls
from .attribution.api import Explanation, explain, registry
from .behaviour import Factorization, activations, factorize, filters
from .behaviour._inspect import first_convolution, mid_feature_layer, prefer_rectified, top_channels
from .errors import InputError
from .evaluate import deletion_insertion
from .models import LoadedModel

__all__ = [
    "REPORT_METHODS",
    "ImageReport",
    "MethodResult",
    "ModelBehaviour",
    "build_report",
    "depth_layers",
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

# One line per method: what the panel shows and how to read it.
METHOD_NOTES: dict[str, str] = {
    "occlusion": "Score drop when a 32-px grey window covers each place (Zeiler & Fergus 2014): bright = the score fell most there.",
    "saliency": "|gradient| of the class score w.r.t. each pixel (Simonyan et al. 2013): where small changes move the score most.",
    "smoothgrad": "Gradients averaged over noisy copies of the image (Smilkov et al. 2017): saliency with the speckle averaged out.",
    "deconvnet": "Backward pass keeping only positive signals at each rectifier (Zeiler & Fergus 2014): image-like patterns the units respond to, barely class-specific.",
    "guided_backprop": "Gradient masked by both the forward and backward rectifier signs (Springenberg et al. 2015): sharp edges, weakly class-specific.",
    "cam": "Class activation map: the class weights applied to the last feature maps before global pooling (Zhou et al. 2016).",
    "gradcam": "Feature maps weighted by their mean gradient, rectified (Selvaraju et al. 2017): coarse, class-discriminative regions.",
    "guided_gradcam": "Guided backprop multiplied by the upsampled Grad-CAM: sharp and class-discriminative.",
    "deeplift": "Contributions relative to a black baseline, rescale rule (Shrikumar et al. 2017); they sum to score(image) - score(baseline).",
    "lrp": "Layer-wise relevance propagation, epsilon-plus composite (Bach et al. 2015): relevance conserved layer by layer down to the pixels.",
}

DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 32, "stride": 16},
    "smoothgrad": {"samples": 16, "noise": 0.15, "seed": 0},
    "lrp": {"composite": "epsilon_plus"},
}


@dataclass(frozen=True)
class MethodResult:
    method: str
    note: str
    explanation: Explanation | None
    seconds: float
    deletion_auc: float | None = None
    insertion_auc: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ImageReport:
    name: str
    picture: Image.Image  # the crop the model saw
    inputs: Tensor
    top: list[tuple[int, str, float]]  # (class, label, probability)
    explained: dict[int, list[MethodResult]]  # class -> results


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


def _top(model: LoadedModel, inputs: Tensor, n: int) -> list[tuple[int, str, float]]:
    with torch.inference_mode(), guard(model) as module:
        probs = module(inputs).softmax(dim=1)[0]
    values, ids = probs.topk(min(n, probs.shape[0]))
    return [(int(i), model.label(int(i)), float(v)) for v, i in zip(values, ids, strict=True)]


def _explain_all(
    model: LoadedModel,
    inputs: Tensor,
    target: int,
    methods: Sequence[str],
    steps: int,
    tick: Callable[[str], None],
) -> list[MethodResult]:
    known = registry()
    results = []
    for method in methods:
        tick(method)
        note = METHOD_NOTES.get(method, "")
        if method not in known:
            results.append(
                MethodResult(method, note, None, 0.0, error="not available in this build")
            )
            continue
        start = time.perf_counter()
        try:
            explanation = explain(
                model, inputs, method, target=target, **DEFAULT_OPTIONS.get(method, {})
            )
        except InputError as exc:  # e.g. CAM on a model without a GAP + linear head
            results.append(
                MethodResult(method, note, None, time.perf_counter() - start, error=str(exc))
            )
            continue
        seconds = time.perf_counter() - start
        curves = deletion_insertion(
            model, inputs, explanation, steps=steps, target=target, progress=False
        )
        results.append(
            MethodResult(
                method,
                note,
                explanation,
                seconds,
                float(curves.deletion_auc[0]),
                float(curves.insertion_auc[0]),
            )
        )
    return results


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


def build_report(
    model: LoadedModel,
    images: Sequence[tuple[str, Image.Image]],
    *,
    targets: Sequence[int | None] | None = None,
    second_class: bool = False,
    methods: Sequence[str] = REPORT_METHODS,
    steps: int = 24,
    factors: int = 6,
    behaviour: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Compute everything the report shows. ``targets``: per image, a class or None (top
    class); ``second_class`` adds the second most likely class."""
    if targets is not None and len(targets) != len(images):
        raise InputError(f"{len(targets)} targets for {len(images)} images")
    tick = progress or (lambda _stage: None)
    reports = []
    for i, (name, image) in enumerate(images):
        tick(f"{name}: predict")
        inputs = model.preprocess(image)
        top = _top(model, inputs, 5)
        wanted = targets[i] if targets is not None else None
        classes = [top[0][0] if wanted is None else wanted]
        if second_class:
            classes.append(next(c for c, _, _ in top if c != classes[0]))

        def stage(method: str, image_name: str = name) -> None:
            tick(f"{image_name}: {method}")

        explained = {c: _explain_all(model, inputs, c, methods, steps, stage) for c in classes}
        reports.append(ImageReport(name, model.deprocess(inputs), inputs, top, explained))
    look = None
    if behaviour and reports:
        tick("model behaviour")
        look = _behaviour(model, reports[0].inputs, factors)
    return Report(model=model.name, images=reports, behaviour=look)
