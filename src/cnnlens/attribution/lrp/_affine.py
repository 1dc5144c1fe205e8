"""One call of an affine layer (``F.conv2d`` or ``F.linear``) as LRP rules see it: the
parameters used (possibly with a BatchNorm folded in), how to run the layer with modified
inputs and parameters, and how to map an output-shaped tensor back to the input (the
transposed layer, i.e. the vector-Jacobian product of the linear part)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Affine", "ConvGeometry", "conv2d_call", "linear_call"]


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    items = tuple(int(v) for v in value)
    return (items[0], items[0]) if len(items) == 1 else (items[0], items[1])


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, padding, dilation and groups of a 2-D convolution. ``pre_pad`` (left, right,
    top, bottom) is explicit zero padding applied first (``padding="same"`` when it is
    asymmetric)."""

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    pre_pad: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Affine:
    """``weight`` and ``bias`` of one affine call; ``geometry`` is ``None`` for a dense
    layer. ``name`` is the module name (``"layer1.0.conv1+bn1"`` when a BatchNorm is folded
    in) or the function name when the weight belongs to no module."""

    weight: Tensor
    bias: Tensor | None
    name: str
    geometry: ConvGeometry | None = None

    @property
    def kind(self) -> str:
        """``"conv"`` or ``"linear"`` (what composites assign rules by)."""
        return "linear" if self.geometry is None else "conv"

    def with_params(self, weight: Tensor, bias: Tensor | None, name: str) -> Affine:
        return replace(self, weight=weight, bias=bias, name=name)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer applied to ``x`` with the given parameters."""
        g = self.geometry
        if g is None:
            return F.linear(x, weight, bias)
        if g.pre_pad is not None:
            x = F.pad(x, g.pre_pad)
        return F.conv2d(x, weight, bias, g.stride, g.padding, g.dilation, g.groups)

    def transpose(self, grad: Tensor, weight: Tensor, like: Tensor) -> Tensor:
        """The transposed layer: ``d/dx <grad, forward(x, weight, 0)>`` for an input ``x``
        shaped like ``like`` (whose values are not read). A new tensor."""
        g = self.geometry
        if g is None:
            return grad @ weight
        shape = list(like.shape)
        if g.pre_pad is not None:
            left, right, top, bottom = g.pre_pad
            shape[-2] += top + bottom
            shape[-1] += left + right
            like = like.new_empty(shape)
        result: Tensor = torch.ops.aten.convolution_backward(
            grad,
            like,
            weight,
            None,
            list(g.stride),
            list(g.padding),
            list(g.dilation),
            False,
            [0, 0],
            g.groups,
            (True, False, False),
        )[0]
        if g.pre_pad is not None:
            left, right, top, bottom = g.pre_pad
            result = result[..., top : shape[-2] - bottom, left : shape[-1] - right]
        return result

    def bias_term(self, bias: Tensor, like: Tensor) -> Tensor:
        """``bias`` shaped to broadcast against an output like ``like``."""
        if self.geometry is None:
            return bias
        return bias.view(1, -1, *([1] * (like.dim() - 2)))


def conv2d_call(bound: Mapping[str, Any], name: str) -> tuple[Tensor, Affine] | None:
    """The input and the :class:`Affine` of an ``F.conv2d`` call given its arguments by
    name, or ``None`` when it is not one LRP handles (not a 4-D batch)."""
    x, weight = bound["input"], bound["weight"]
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor) or x.dim() != 4:
        return None
    stride = _pair(bound.get("stride", 1))
    dilation = _pair(bound.get("dilation", 1))
    padding_arg = bound.get("padding", 0)
    pre_pad: tuple[int, int, int, int] | None = None
    if isinstance(padding_arg, str):
        padding = (0, 0)
        if padding_arg == "same":
            kh, kw = int(weight.shape[-2]), int(weight.shape[-1])
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            if th % 2 == 0 and tw % 2 == 0:
                padding = (th // 2, tw // 2)
            else:  # PyTorch puts the odd extra pixel at the bottom/right
                pre_pad = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        padding = _pair(padding_arg)
    geometry = ConvGeometry(stride, padding, dilation, int(bound.get("groups", 1)), pre_pad)
    bias = bound.get("bias")
    return x, Affine(weight, bias if isinstance(bias, Tensor) else None, name, geometry)


def linear_call(bound: Mapping[str, Any], name: str) -> tuple[Tensor, Affine] | None:
    """The input and the :class:`Affine` of an ``F.linear`` call given its arguments by
    name."""
    x, weight = bound["input"], bound["weight"]
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor) or weight.dim() != 2:
        return None
    bias = bound.get("bias")
    return x, Affine(weight, bias if isinstance(bias, Tensor) else None, name)
