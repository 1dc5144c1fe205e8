"""Class activation maps at a layer: CAM, Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM and
Guided Grad-CAM, plus :func:`cam_model`, the conversion CAM needs when a model has no
global-average-pooling + linear head.

One template does the work for every variant (pytorch-grad-cam's idea): :func:`capture`
runs the forward pass, records the layer's activation A (B, K, h, w) and, when the variant
needs it, the gradient ∂y/∂A of the target score; a variant only says how the channel weights
w (broadcastable to A) are obtained. The map is Σ_k w_k A^k, rectified for Grad-CAM-type
methods and signed for CAM.

The gradient is taken with the layer's output as an autograd leaf (``Recorder(leaf=True)``):
the backward pass stops at the layer, nothing is propagated to the input or the parameters.
When the layer is called several times during one forward pass (a shared module), its last
call is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._engine import Engine
from .._guard import submodules
from .._hooks import Recorder
from .._modules import layer_name
from .._progress import progress as progress_bar
from ..errors import InputError
from ..targets import Target
from ._cam_model import CamModel, cam_model
from .api import MethodSpec
from .gradient import warn_if_plain
from .rectifiers import Switch, guided_rules

__all__ = [
    "METHODS",
    "CamModel",
    "LayerCapture",
    "cam_model",
    "capture",
    "linear_head",
]


@dataclass(frozen=True)
class LayerCapture:
    """What one forward (and backward) pass gives the CAM variants.

    ``activation``: the layer's output at its last call (B, K, h, w), detached.
    ``gradient``: ∂(target score)/∂activation, same shape, or ``None`` when not asked for.
    ``output``: the model's output for ``inputs`` (detached tensors for a tensor output).
    """

    module: nn.Module
    inputs: Tensor
    target: Target
    layer: nn.Module
    activation: Tensor
    gradient: Tensor | None
    output: Any


def capture(
    module: nn.Module, inputs: Tensor, target: Target, layer: nn.Module, *, gradient: bool
) -> LayerCapture:
    """Run ``module`` on ``inputs`` recording ``layer``'s last call; with ``gradient=True``
    also the gradient of the target scores with respect to it (the backward pass stops at
    the layer). Top-class targets are fixed from this forward pass."""
    output, activation = _recording(module, inputs, layer, leaf=gradient)
    target.resolve(output)
    grad: Tensor | None = None
    if gradient:
        grad = _gradient_at(activation, target.score(output))
        output = _detach(output)
    return LayerCapture(module, inputs, target, layer, activation.detach(), grad, output)


def _recording(
    module: nn.Module,
    inputs: Tensor,
    layer: nn.Module,
    *,
    leaf: bool,
    mode: AbstractContextManager[Any] | None = None,
) -> tuple[Any, Tensor]:
    """The model's output for ``inputs`` and ``layer``'s output at its last call, checked to
    be a feature map; gradients on with ``leaf`` (the layer's output is then an autograd
    leaf) or ``mode`` (a context the forward pass runs in; the layer's output stays in the
    graph)."""
    batch = inputs.shape[0]
    try:
        with (
            Recorder([layer], leaf=leaf) as recorder,
            torch.set_grad_enabled(leaf or mode is not None),
            mode if mode is not None else nullcontext(),
        ):
            output = module(inputs)
    except TypeError as exc:
        if "cannot record" in str(exc):
            raise InputError(f"{exc}; choose a layer whose output is a feature map") from None
        raise
    if not recorder.records[layer]:
        raise InputError(f"layer {_name(module, layer)} was not called during the forward pass")
    activation = recorder.last(layer)
    if activation.dim() != 4 or activation.shape[0] != batch:
        raise InputError(
            f"layer {_name(module, layer)} gives {tuple(activation.shape)}; class activation "
            f"maps need a feature map (B={batch}, C, h, w)"
        )
    return output, activation


def _gradient_at(activation: Tensor, scores: Tensor, *, keep_graph: bool = False) -> Tensor:
    """∂(Σ scores)/∂activation; zeros where the scores do not depend on it."""
    if scores.requires_grad:
        (g,) = torch.autograd.grad(
            scores.sum(), activation, allow_unused=True, retain_graph=keep_graph
        )
        if g is not None:
            return g
    return torch.zeros_like(activation)


def _detach(output: Any) -> Any:
    return output.detach() if isinstance(output, Tensor) else output


def _name(module: nn.Module, layer: nn.Module) -> str:
    try:
        return repr(layer_name(module, layer))
    except InputError:
        return type(layer).__name__


# ---------------------------------------------------------------------------------------
# The template


class _CamVariant:
    """A CAM variant: how channel weights are found. ``weigh`` returns the weights
    (broadcastable to the feature map) and the feature map they multiply."""

    gradient: bool = True
    rectify: bool = True

    def weights(self, cap: LayerCapture, **options: Any) -> Tensor:
        raise NotImplementedError

    def weigh(self, cap: LayerCapture, **options: Any) -> tuple[Tensor, Tensor]:
        return self.weights(cap, **options), cap.activation

    def __call__(
        self,
        module: nn.Module,
        inputs: Tensor,
        target: Target,
        layer: nn.Module | None,
        **options: Any,
    ) -> Tensor:
        if layer is None:
            raise InputError("class activation maps need a layer")
        return self.map(capture(module, inputs, target, layer, gradient=self.gradient), **options)

    def map(self, cap: LayerCapture, **options: Any) -> Tensor:
        weights, maps = self.weigh(cap, **options)
        cam = (weights * maps).sum(dim=1)
        return F.relu(cam) if self.rectify else cam


def _gradient(cap: LayerCapture) -> Tensor:
    assert cap.gradient is not None
    return cap.gradient


class _GradCam(_CamVariant):
    """Selvaraju et al. 2017: α_k = spatial mean of ∂y/∂A^k."""

    def weights(self, cap: LayerCapture, **options: Any) -> Tensor:
        return _gradient(cap).mean(dim=(2, 3), keepdim=True)


class _GradCamPP(_CamVariant):
    """Chattopadhay et al. 2018 (closed form for an exponentiated score):
    α^{kij} = g² / (2g² + Σ_ab A^k_ab g³), w_k = Σ_ij α^{kij} ReLU(g_ij)."""

    def weights(self, cap: LayerCapture, **options: Any) -> Tensor:
        g = _gradient(cap)
        g2 = g.pow(2)
        denominator = 2 * g2 + cap.activation.sum(dim=(2, 3), keepdim=True) * g2 * g
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        return (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)


class _LayerCam(_CamVariant):
    """Jiang et al. 2021: each position weighted by its own positive gradient."""

    def weights(self, cap: LayerCapture, **options: Any) -> Tensor:
        return F.relu(_gradient(cap))


class _Cam(_CamVariant):
    """Zhou et al. 2016: the target class's row of the final linear layer, applied to the
    feature map that the model averages into it (signed, no rectifier)."""

    gradient = False
    rectify = False

    def weigh(self, cap: LayerCapture, **options: Any) -> tuple[Tensor, Tensor]:
        if cap.target.classes is None:
            raise InputError(
                "cam explains one class of a classifier; give class targets "
                "(use gradcam for a callable target)"
            )
        linear, maps = linear_head(cap, cap.target.classes)
        classes = cap.target.classes.to(linear.weight.device)
        if int(classes.max()) >= linear.out_features:
            raise InputError(
                f"target class {int(classes.max())} is out of range for "
                f"{linear.out_features} outputs"
            )
        weights = linear.weight.detach()[classes].to(maps.dtype)
        return weights[:, :, None, None], maps


class _ScoreCam(_CamVariant):
    """Wang et al. 2020: each channel, upsampled and scaled to [0, 1], masks the input; the
    target scores of the masked inputs, softmax-normalized over channels, are the weights.
    Masked inputs are evaluated ``batch_size`` at a time under inference mode (a batch may
    mix items), so memory is bounded by the batch size whatever the number of channels.

    A channel that is constant over the map (a dead channel after a ReLU, common in the
    last layers) makes an all-zero mask: every such channel of an item masks the input to
    the same zeros, so that input runs once per item, not once per channel."""

    gradient = False

    def weights(self, cap: LayerCapture, **options: Any) -> Tensor:
        batch_size = int(options.get("batch_size", 32))
        progress: bool | None = options.get("progress")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        inputs, activation = cap.inputs, cap.activation
        items, channels = activation.shape[:2]
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        with torch.inference_mode():
            varies = _varying(activation, size, batch_size)
            pairs = varies.nonzero()  # the (item, channel) of each mask, item by item
            blank = (~varies).any(dim=1).nonzero().flatten()  # items with a constant channel
            steps = math.ceil(len(pairs) / batch_size) + math.ceil(len(blank) / batch_size)
            scores = torch.zeros(items, channels, dtype=inputs.dtype, device=inputs.device)
            blank_scores = torch.zeros(items, dtype=inputs.dtype, device=inputs.device)
            with progress_bar(steps, "scorecam", enabled=progress, unit="batch") as bar:
                for i in range(0, len(pairs), batch_size):
                    item, channel = pairs[i : i + batch_size].unbind(1)
                    maps = activation[item, channel][:, None]
                    masks = _unit_range(_upsample(maps, size)).to(inputs.dtype)
                    part = cap.target.score(cap.module(inputs[item] * masks), item)
                    scores[item, channel] = part.to(scores.dtype)
                    bar.advance()
                for i in range(0, len(blank), batch_size):
                    item = blank[i : i + batch_size]
                    part = cap.target.score(cap.module(inputs[item] * 0), item)
                    blank_scores[item] = part.to(scores.dtype)
                    bar.advance()
            scores = torch.where(varies, scores, blank_scores[:, None])
        return torch.softmax(scores, dim=1)[:, :, None, None].to(activation.dtype)


def _varying(activation: Tensor, size: tuple[int, int], batch_size: int) -> Tensor:
    """(items, channels) bool: which channels of each item make a mask (decided on the
    upsampled map, as :func:`_unit_range` decides), ``batch_size`` maps at a time."""
    return torch.stack(
        [
            torch.cat(
                [
                    _spread(_upsample(maps[start : start + batch_size, None], size))[2].flatten()
                    for start in range(0, maps.shape[0], batch_size)
                ]
            )
            for maps in activation
        ]
    )


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, 1, h, w) maps at the input's size (N, 1, H, W), bilinearly."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def _spread(maps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per map (N, 1, H, W): its minimum and span (N, 1, 1, 1), and whether it varies by
    more than rounding (64 ulps of its largest magnitude)."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    span = flat.amax(dim=1).view(-1, 1, 1, 1) - low
    rounding = 64 * torch.finfo(maps.dtype).eps * flat.abs().amax(dim=1).view(-1, 1, 1, 1)
    return low, span, span > rounding


def _unit_range(maps: Tensor) -> Tensor:
    """Each map (N, 1, H, W) scaled to [0, 1]; a constant map becomes zeros. A map whose
    spread is within rounding of its values (64 ulps) counts as constant: scaling rounding
    noise up to [0, 1] would make a mask out of it, and which maps are noise-free then
    depends on the batch the activations were computed in."""
    low, span, varies = _spread(maps)
    return torch.where(varies, (maps - low) / torch.where(varies, span, 1.0), 0.0)


# ---------------------------------------------------------------------------------------
# CAM: the GAP + linear head


_RECTIFIERS: tuple[tuple[str, Callable[[Tensor], Tensor]], ...] = (
    ("", lambda a: a),
    ("ReLU", F.relu),
    ("ReLU6", F.relu6),
)


# Outputs checked besides the target classes: enough that a head which agrees on them and
# is another function of the pooled map would be a coincidence, few enough that the check
# costs nothing next to the forward pass (the whole classifier again was 0.35 ms of a
# 19 ms forward pass of EfficientNet-Lite0).
_CHECKED_OUTPUTS = 32


def _checked_outputs(outputs: int, classes: Tensor | None) -> Tensor:
    """The output columns :func:`linear_head` compares: the target classes (CAM's map is
    the decomposition of exactly those outputs) and ``_CHECKED_OUTPUTS`` spread over all."""
    spread = torch.linspace(0, outputs - 1, min(outputs, _CHECKED_OUTPUTS)).round().long()
    if classes is None:
        return spread
    targets = classes.detach().cpu().long()
    found: Tensor = torch.unique(torch.cat([spread, targets[(targets >= 0) & (targets < outputs)]]))
    return found


def linear_head(cap: LayerCapture, classes: Tensor | None = None) -> tuple[nn.Linear, Tensor]:
    """The ``nn.Linear`` that maps the spatial mean of the layer's feature map (possibly
    rectified first, as torchvision's DenseNet does with ``F.relu``) to the model's output,
    and that feature map. Checked numerically on the captured forward pass, on the outputs
    of ``classes`` (the targets) and on outputs spread over all the others, so any
    architecture with such a head qualifies and nothing else does."""
    output = cap.output
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise InputError(
            "cam needs a classifier whose output is (batch, classes); use gradcam for other heads"
        )
    channels = cap.activation.shape[1]
    candidates = [
        m
        for m in submodules(cap.module)
        if isinstance(m, nn.Linear)
        and m.in_features == channels
        and m.out_features == output.shape[1]
    ]
    output = output.detach()
    scale = float(output.abs().max().clamp(min=1.0))
    columns = _checked_outputs(output.shape[1], classes).to(output.device)
    expected = output[:, columns]
    for _, rectify in _RECTIFIERS:
        maps = rectify(cap.activation)
        pooled = maps.mean(dim=(2, 3))
        for linear in reversed(candidates):
            index = columns.to(linear.weight.device)
            weight = linear.weight.detach()[index].to(pooled.dtype)
            bias = None if linear.bias is None else linear.bias.detach()[index].to(pooled.dtype)
            predicted = F.linear(pooled, weight, bias)
            if torch.allclose(predicted, expected.to(pooled.dtype), rtol=1e-3, atol=1e-4 * scale):
                return linear, maps
    raise InputError(
        f"cam needs the model's output to be a linear layer applied to the global average of "
        f"the feature map of layer {_name(cap.module, cap.layer)}, and this model does not compute that; pick the layer "
        f"before the global pooling, use gradcam, or train such a head with "
        f"cnnlens.cam_model(model, layer, num_classes).fit(dataset)"
    )


# ---------------------------------------------------------------------------------------
# Guided Grad-CAM


_GRADCAM = _GradCam()


def _guided_gradcam(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None,
    **options: Any,
) -> Tensor:
    """Selvaraju et al. 2017: guided backpropagation ⊙ Grad-CAM upsampled (bilinearly) to
    the input size. (B, C, H, W), signed as guided backpropagation is.

    One forward pass, under guided backpropagation's rules with the layer recorded, serves
    both: the backward pass to the layer with the rules passing the true gradient gives
    Grad-CAM's, then the guided backward pass to the input (the two methods run one after
    the other would make two forward passes)."""
    if layer is None:
        raise InputError("class activation maps need a layer")
    switch = Switch(guided=False)
    rules = guided_rules(switch)
    engine = Engine(rules, model=module, strict=bool(options.get("strict", False)))
    x = inputs.detach().requires_grad_()
    output, activation = _recording(module, x, layer, leaf=False, mode=engine)
    target.resolve(output)
    scores = target.input_scores(output)
    grad = _gradient_at(activation, scores, keep_graph=True)
    switch.guided = True
    (guided,) = torch.autograd.grad(scores.sum(), x, allow_unused=True)
    if guided is None:
        guided = torch.zeros_like(x)
    warn_if_plain(rules, sum(engine.counts.values()), stacklevel=3)
    cap = LayerCapture(module, inputs, target, layer, activation.detach(), grad, _detach(output))
    upsampled = F.interpolate(
        _GRADCAM.map(cap).unsqueeze(1),
        size=inputs.shape[-2:],
        mode="bilinear",
        align_corners=False,
    )
    return guided * upsampled.to(guided.dtype)


METHODS: dict[str, MethodSpec] = {
    "cam": MethodSpec(
        _Cam(),
        "cam",
        uses_layer=True,
        summary="class activation map of a GAP + linear head (Zhou et al. 2016)",
    ),
    "gradcam": MethodSpec(
        _GRADCAM,
        "gradcam",
        uses_layer=True,
        summary="gradient-weighted class activation map (Selvaraju et al. 2017)",
    ),
    "gradcam_pp": MethodSpec(
        _GradCamPP(),
        "gradcam",
        uses_layer=True,
        summary="Grad-CAM++ (Chattopadhay et al. 2018)",
    ),
    "layercam": MethodSpec(
        _LayerCam(),
        "gradcam",
        uses_layer=True,
        summary="LayerCAM, positions weighted by their positive gradients (Jiang et al. 2021)",
    ),
    "scorecam": MethodSpec(
        _ScoreCam(),
        "gradcam",
        uses_layer=True,
        options=frozenset({"batch_size", "progress"}),
        summary="Score-CAM, channels weighted by the scores of masked inputs (Wang et al. 2020)",
    ),
    "guided_gradcam": MethodSpec(
        _guided_gradcam,
        "input",
        uses_layer=True,
        options=frozenset({"strict"}),
        summary="guided backpropagation times upsampled Grad-CAM (Selvaraju et al. 2017)",
        if_zero=(
            "its Grad-CAM factor is zero everywhere (the weighted feature maps are negative "
            "at every position) or no positive gradient passed the rectifiers; try another "
            "layer (layer=...), or guided_backprop alone"
        ),
    ),
}
