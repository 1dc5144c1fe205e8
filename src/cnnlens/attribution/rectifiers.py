"""Modified backward passes at rectifiers and other activations: deconvnet and guided
backpropagation, as rule sets of the interception engine (:mod:`cnnlens._engine`).

The engine intercepts every rectifier call of the forward pass — ``nn.ReLU`` (in place or
not, a single instance called several times as in torchvision's ResNet blocks),
``F.relu``/``torch.relu``/``Tensor.relu_`` (torchvision's DenseNet), ``nn.ReLU6``/``F.relu6``/
``F.hardtanh(x, 0, t)`` (EfficientNet-Lite0, MobileNet-v2) — and every other elementwise
activation (SiLU, GELU, Hardswish, Hardsigmoid, sigmoid, tanh, ELU, ...), in any call form,
without attaching anything to the model.

At a rectifier y = clip(x, 0, upper) with incoming gradient g:

* true gradient: g · [x > 0] · [x < upper]
* deconvnet (Zeiler & Fergus 2014): max(g · [x < upper], 0) — the forward mask of the lower
  bound is ignored, only positive gradients pass;
* guided backpropagation (Springenberg et al. 2015): max(g · [x < upper], 0) · [x > 0] —
  both masks.

The upper clip of ReLU6 is not a rectifier: the gradient passes it as autograd would
(zero where x ≥ upper); the engine's rectifier rule applies that mask before the rule.

At any other elementwise activation y = f(x) (the papers only define rectifiers; this is
our generalization, the same rule written for the rectifier's derivative [x > 0]):

* guided backpropagation: max(f'(x) · g, 0) — the activation's own derivative, then the
  negative signal is zeroed (for f = ReLU this is exactly the rule above);
* deconvnet: max(g, 0) — the activation is passed as the identity and the signal is
  rectified, as at a rectifier.

Products (squeeze-and-excitation gates), normalizations, pooling and every linear operation
keep their gradient. ``cnnlens.coverage(model, "guided_backprop", x)`` lists which rule each
activation of a model gets.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._engine import Rule, RuleSet, gradient_rules
from .._hooks import RectifierCallRule, RectifierRule
from .._ops import Call

__all__ = ["DECONVNET", "GUIDED", "DeconvnetRule", "GuidedRule", "Switch", "guided_rules"]


class Switch:
    """Whether guided backpropagation's rules rectify the gradient (``guided``) or pass the
    true one, read when the backward pass runs: one forward pass then serves a backward
    pass with the true gradient (Grad-CAM's, in Guided Grad-CAM) and a guided one."""

    def __init__(self, guided: bool = True) -> None:
        self.guided = guided


_ALWAYS = Switch()


class GuidedRule(RectifierRule):
    """Guided backpropagation: pass g only where the input was positive and g is positive
    (with ``switch.guided`` off: the true gradient, g where the input was positive).

    Only the sign of the rectifier's input matters, so the rule works on its output
    (``output_only``) and in-place rectifiers stay in place."""

    output_only = True

    def __init__(self, switch: Switch = _ALWAYS) -> None:
        self.switch = switch

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        # g where x > 0 (one fused kernel, as autograd's own ReLU backward), then max(., 0)
        masked: Tensor = torch.ops.aten.threshold_backward(grad_out, x, 0.0)
        return masked.clamp_(min=0) if self.switch.guided else masked

    def clipped(self, x: Tensor, grad_out: Tensor, upper: float) -> Tensor:
        # g where 0 < x < upper, in one kernel (autograd's own ReLU6 backward)
        masked: Tensor = torch.ops.aten.hardtanh_backward(grad_out, x, 0.0, upper)
        return masked.clamp_(min=0) if self.switch.guided else masked


class DeconvnetRule(RectifierRule):
    """Deconvnet: the rectifier is applied to the gradient itself, whatever the input was."""

    output_only = True

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        del x
        return grad_out.clamp(min=0)

    def clipped(self, x: Tensor, grad_out: Tensor, upper: float) -> Tensor:
        # max(g, 0) where x < upper; x >= 0 here (the rule sees the output), so the lower
        # bound -1 masks nothing
        masked: Tensor = torch.ops.aten.hardtanh_backward(grad_out, x, -1.0, upper)
        return masked.clamp_(min=0)


class _RectifiedActivation(torch.autograd.Function):
    """y = f(x); backward: max(f'(x) · g, 0) (``derivative``; f'(x) · g with
    ``switch.guided`` off) or max(g, 0)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: Call, derivative: bool, switch: Switch) -> Tensor:
        ctx.fn, ctx.derivative, ctx.switch = call.apply, derivative, switch
        if derivative:
            ctx.save_for_backward(x)
        out: Tensor = call.apply(x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        if not ctx.derivative:
            return grad.clamp(min=0), None, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (signal,) = torch.autograd.grad(ctx.fn(leaf), leaf, grad)
        return signal.clamp_(min=0) if ctx.switch.guided else signal, None, None, None


class _ActivationRule(Rule):
    def __init__(self, name: str, derivative: bool, switch: Switch = _ALWAYS) -> None:
        self.name = name
        self.derivative = derivative
        self.switch = switch

    def __call__(self, call: Call) -> Any:
        return _RectifiedActivation.apply(call.x, call, self.derivative, self.switch)


def guided_rules(switch: Switch = _ALWAYS) -> RuleSet:
    """Guided backpropagation's rules, rectifying the gradient while ``switch.guided``."""
    return RuleSet(
        "guided_backprop",
        gradient_rules(
            rectifier=RectifierCallRule(GuidedRule(switch), "guided"),
            activation=_ActivationRule("guided: max(f'(x)·g, 0)", True, switch),
        ),
    )


GUIDED = guided_rules()
DECONVNET = RuleSet(
    "deconvnet",
    gradient_rules(
        rectifier=RectifierCallRule(DeconvnetRule(), "deconvnet"),
        activation=_ActivationRule("deconvnet: max(g, 0)", derivative=False),
    ),
)
