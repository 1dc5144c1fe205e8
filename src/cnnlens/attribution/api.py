"""``explain()``: one verb for every decision-explanation method."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._guard import guard
from .._input_errors import input_errors
from .._modules import layer_name, locate_layer
from .._trace import default_feature_layer
from ..errors import InputError, ZeroAttributionWarning
from ..targets import Target, TargetSpec, resolve_target

__all__ = ["METHODS", "Explanation", "MethodResult", "MethodSpec", "explain"]


@dataclass(frozen=True)
class MethodResult:
    """What a method returns when it has more to report than the attribution: ``extras``
    become :attr:`Explanation.extras` (integrated gradients' completeness gap, ...)."""

    attribution: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class MethodFn(Protocol):
    def __call__(
        self,
        module: nn.Module,
        inputs: Tensor,
        target: Target,
        layer: nn.Module | None,
        **options: Any,
    ) -> Tensor | MethodResult: ...


@dataclass(frozen=True)
class MethodSpec:
    """How ``explain`` runs one method.

    ``kind``: ``"input"`` (attribution (B, C, H, W) in input space, signed),
    ``"occlusion"`` (mean score drop, (B, C|1, H, W)), ``"cam"`` (signed (B, h, w) at a
    layer), ``"gradcam"`` (non-negative (B, h, w) at a layer). ``if_zero`` overrides the
    kind's explanation of an all-zero result (see :data:`ZERO_HINTS`).

    ``torchscript``: the method is made of forward and input-gradient passes only, so it
    gives the eager answer on a TorchScript model; the others intercept operations or hook
    layers, which TorchScript runs outside Python, and refuse it.
    """

    fn: MethodFn
    kind: str
    uses_layer: bool = False
    torchscript: bool = False
    options: frozenset[str] = frozenset()
    summary: str = ""
    if_zero: str = ""
    """Why this method can give an all-zero result and what to try then (for the warning
    :func:`warn_if_zero` issues)."""


class _MethodNames:
    """The method names as constants (``METHODS.GRADCAM == "gradcam"``); iterable."""

    SALIENCY = "saliency"
    SMOOTHGRAD = "smoothgrad"
    DECONVNET = "deconvnet"
    GUIDED_BACKPROP = "guided_backprop"
    OCCLUSION = "occlusion"
    CAM = "cam"
    GRADCAM = "gradcam"
    GUIDED_GRADCAM = "guided_gradcam"
    DEEPLIFT = "deeplift"
    LRP = "lrp"
    INPUT_X_GRADIENT = "input_x_gradient"
    INTEGRATED_GRADIENTS = "integrated_gradients"
    GRADCAM_PP = "gradcam_pp"
    LAYERCAM = "layercam"
    SCORECAM = "scorecam"

    def _names(self) -> tuple[str, ...]:
        return tuple(sorted(registry()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in registry()

    def __len__(self) -> int:
        return len(registry())

    def __repr__(self) -> str:
        return f"METHODS{self._names()}"


METHODS = _MethodNames()


def registry() -> dict[str, MethodSpec]:
    """Every method, from the modules that implement them."""
    from . import cam, deeplift, gradient, lrp, occlusion

    methods: dict[str, MethodSpec] = {}
    for module in (gradient, cam, occlusion, deeplift, lrp):
        methods.update(module.METHODS)
    return methods


@dataclass(frozen=True)
class Explanation:
    """The result of :func:`explain`. ``attribution`` is the raw tensor (see the contract
    for each method's shape and meaning); :meth:`heatmap` gives a [0, 1] map at input size.
    ``extras`` holds what a method reports besides it, per item: for integrated gradients
    ``delta`` (Σ attribution − (score − baseline score)), ``relative_delta``, ``score`` and
    ``baseline_score``; for LRP ``score`` (the relevance put in at the output) and
    ``absorbed`` (what biases and stabilizers took on the way down); for occlusion with
    ``drill_down`` ``interpolated`` (B, 1, H, W, the share of interpolated windows
    over each pixel), ``window_drops`` and
    ``window_interpolated`` (B, rows, cols), the windows' drops and which are estimated."""

    method: str
    targets: Tensor | None
    attribution: Tensor
    kind: str
    input_size: tuple[int, int]
    layer: str | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def signed(self) -> bool:
        """Whether negative values carry meaning (shown with a diverging colormap)."""
        return self.kind in ("input", "occlusion", "cam")

    def heatmap(self) -> Tensor:
        """(B, H, W) in [0, 1] at input resolution, per item scaled by its maximum."""
        a = self.attribution.detach()
        if self.kind == "input":
            maps = a.abs().amax(dim=1)
        elif self.kind == "occlusion":
            maps = a.mean(dim=1).clamp(min=0)
        else:
            maps = a if self.kind == "gradcam" else a - a.flatten(1).amin(dim=1).view(-1, 1, 1)
            if maps.shape[-2:] != self.input_size:
                maps = F.interpolate(
                    maps.unsqueeze(1).float(),
                    size=self.input_size,
                    mode="bilinear",
                    align_corners=False,
                ).squeeze(1)
            maps = maps.clamp(min=0)
        peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
        return (maps / torch.where(peak > 0, peak, torch.ones_like(peak))).float()


def method_spec(method: str) -> MethodSpec:
    methods = registry()
    if method not in methods:
        close = difflib.get_close_matches(str(method), list(methods), n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; one of {', '.join(sorted(methods))}"
        )
        raise InputError(f"unknown method {method!r}{hint}")
    return methods[method]


def check_inputs(inputs: object) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise InputError(f"inputs must be a tensor (B, C, H, W), got {type(inputs).__name__}")
    if inputs.dim() != 4:
        raise InputError(f"inputs must be 4-D (B, C, H, W), got shape {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise InputError(f"inputs must be floating point, got {inputs.dtype}")
    if inputs.shape[0] == 0:
        raise InputError("inputs is an empty batch")
    return inputs


ZERO_HINTS: dict[str, str] = {
    "input": (
        "no signal reached the input: the score does not change with the input locally "
        "(every unit feeding it inactive, or the input equal to the baseline); try "
        "occlusion or integrated_gradients, or check the target"
    ),
    "occlusion": (
        "covering any window leaves the score unchanged; try a larger window or another "
        "baseline value"
    ),
    "cam": "the layer's feature maps or the class weights are zero; try another layer",
    "gradcam": (
        "ReLU(Σ_k w_k A^k) is zero everywhere: the weighted feature maps are negative at "
        "every position (common at the last block of MobileNetV3, EfficientNet and ConvNeXt, "
        "whose feature maps are mostly negative); try another layer (layer=...), or 'cam', "
        "which keeps the sign"
    ),
}
"""Per method kind: why a result can be identically zero and what to try."""


def zero_items(attribution: Tensor) -> list[int]:
    """The items (first dimension) whose attribution is identically zero."""
    return [int(i) for i in torch.nonzero(~attribution.flatten(1).ne(0).any(dim=1)).flatten()]


def warn_if_zero(method: str, spec: MethodSpec, attribution: Tensor, layer: str | None) -> None:
    """One check for every method: an all-zero result shows nothing and must not pass in
    silence, so it gets a :class:`~cnnlens.ZeroAttributionWarning` saying why it happens
    with this method and what to try."""
    items = zero_items(attribution)
    if not items:
        return
    where = f" at layer {layer!r}" if layer is not None else ""
    which = "every item" if len(items) == attribution.shape[0] else f"items {items}"
    warnings.warn(
        f"{method}: the result is identically zero for {which}{where}: "
        + (spec.if_zero or ZERO_HINTS.get(spec.kind, "try another method")),
        ZeroAttributionWarning,
        stacklevel=3,
    )


def explain(
    model: Any,
    inputs: Tensor,
    method: str,
    *,
    target: TargetSpec = None,
    layer: nn.Module | str | None = None,
    **options: Any,
) -> Explanation:
    """Explain the model's score for each item of ``inputs`` with ``method``.

    ``model``: a module, a ``LoadedModel``, ``torch.compile`` output or a
    ``DataParallel``/``DistributedDataParallel`` wrapper (the eager module inside is used);
    a TorchScript model runs the methods made of forward and input-gradient passes and
    refuses the others with :class:`InputError`. The model is run in eval mode with
    parameter gradients off, under a lock that serializes calls on it (and on any model
    that shares a module with it, such as one of its parts) from several threads;
    flags are restored afterwards, and no hook is left behind, also when an error is raised.
    A result that is identically zero for some item comes with a
    :class:`~cnnlens.ZeroAttributionWarning` saying why and what to try.
    """
    inputs = check_inputs(inputs)
    spec = method_spec(method)
    unknown = set(options) - spec.options
    if unknown:
        raise InputError(
            f"method {method!r} takes no option {', '.join(sorted(unknown))}"
            + (f"; options: {', '.join(sorted(spec.options))}" if spec.options else "")
        )
    resolved = resolve_target(target, inputs.shape[0])
    if not spec.uses_layer and layer is not None:
        raise InputError(f"method {method!r} works on the input and takes no layer")
    with (
        input_errors(inputs),  # a batch of the wrong channel count: InputError, not torch's
        guard(model, needs=None if spec.torchscript else method) as module,
    ):
        layer_module: nn.Module | None = None
        name: str | None = None
        if spec.uses_layer:
            if layer is None:
                layer_module = default_feature_layer(module, inputs)
                name = layer_name(module, layer_module)
            else:
                layer_module, name = locate_layer(module, layer)
        attribution = spec.fn(module, inputs.detach(), resolved, layer_module, **options)
    result = attribution if isinstance(attribution, MethodResult) else MethodResult(attribution)
    warn_if_zero(method, spec, result.attribution, name)
    return Explanation(
        method=method,
        targets=None if resolved.is_callable else resolved.classes,
        attribution=result.attribution.detach(),
        kind=spec.kind,
        input_size=(int(inputs.shape[-2]), int(inputs.shape[-1])),
        layer=name,
        extras={k: v.detach() for k, v in result.extras.items()},
    )
