"""Modified rectifier backward passes: deconvnet and guided backpropagation.

Both are :class:`~cnnlens._hooks.RectifierRule` subclasses, used through the one mechanism
for rectifiers, :class:`~cnnlens._hooks.RectifierMode`. It intercepts every rectifier call
of the forward pass — ``nn.ReLU`` (in place or not, a single instance called several times
as in torchvision's ResNet blocks), ``F.relu``/``torch.relu``/``Tensor.relu_`` (torchvision's
DenseNet), ``nn.ReLU6``/``F.relu6``/``F.hardtanh(x, 0, t)`` (EfficientNet-Lite0) — without
attaching anything to the model.

At a rectifier y = clip(x, 0, upper) with incoming gradient g:

* true gradient: g · [x > 0] · [x < upper]
* deconvnet (Zeiler & Fergus 2014): max(g · [x < upper], 0) — the forward mask of the lower
  bound is ignored, only positive gradients pass;
* guided backpropagation (Springenberg et al. 2015): max(g · [x < upper], 0) · [x > 0] —
  both masks.

The upper clip of ReLU6 is not a rectifier: the gradient passes it as autograd would
(zero where x ≥ upper). :class:`RectifierMode` applies that mask before calling the rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._hooks import RectifierRule

__all__ = ["DeconvnetRule", "GuidedRule"]


class GuidedRule(RectifierRule):
    """Guided backpropagation: pass g only where the input was positive and g is positive.

    Only the sign of the rectifier's input matters, so the rule works on its output
    (``output_only``) and in-place rectifiers stay in place."""

    output_only = True

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        # g where x > 0 (one fused kernel, as autograd's own ReLU backward), then max(., 0)
        masked: Tensor = torch.ops.aten.threshold_backward(grad_out, x, 0.0)
        return masked.clamp_(min=0)


class DeconvnetRule(RectifierRule):
    """Deconvnet: the rectifier is applied to the gradient itself, whatever the input was."""

    output_only = True

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        del x
        return grad_out.clamp(min=0)
