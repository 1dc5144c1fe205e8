"""One call of an affine layer (``F.conv2d`` or ``F.linear``) as LRP rules see it: the
parameters used (possibly with a BatchNorm folded in), how to run the layer with modified
inputs and parameters, and how to map an output-shaped tensor back to the input (the
transposed layer, i.e. the vector-Jacobian product of the linear part)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._params import Derived

__all__ = ["Affine", "ConvGeometry", "Norm", "conv2d_call", "linear_call"]


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


Norm = tuple[Tensor, Tensor, Tensor | None, Tensor | None, float]
"""running mean, running variance, weight, bias and eps of a BatchNorm folded into a layer."""


def _positive(w: Tensor) -> Tensor:
    return w.clamp(min=0)


def _negative(w: Tensor) -> Tensor:
    return w.clamp(max=0)


def _square(w: Tensor) -> Tensor:
    return w * w


_PARTS: dict[str, Callable[[Tensor], Tensor]] = {
    "+": _positive,
    "-": _negative,
    "abs": torch.abs,
    "ones": torch.ones_like,
    "square": _square,
}


@dataclass(frozen=True)
class Affine:
    """``weight`` and ``bias`` of one affine call; ``geometry`` is ``None`` for a dense
    layer. ``name`` is the module name (``"layer1.0.conv1+bn1"`` when a BatchNorm is folded
    in) or the function name when the weight belongs to no module. ``norm``: the BatchNorm
    folded in, if any.

    Rules see the folded layer through :meth:`conv` and :meth:`transpose`, which run a
    *part* of its weight — ``"w"`` itself, ``"+"``/``"-"`` its positive/negative part,
    ``"abs"``, ``"square"``, ``"ones"``, ``"boosted"`` — with a part of its bias. The folded
    parameters and their parts are made on first use and kept in ``derived`` (per version
    of the tensors they come from) when given, else made for this call only."""

    weight: Tensor
    bias: Tensor | None
    name: str
    geometry: ConvGeometry | None = None
    norm: Norm | None = None
    derived: Derived | None = None

    @property
    def kind(self) -> str:
        """``"conv"`` or ``"linear"`` (what composites assign rules by)."""
        return "linear" if self.geometry is None else "conv"

    @cached_property
    def _values(self) -> dict[str, Any]:
        if self.derived is None:
            return {}
        if self.norm is None:
            return self.derived.values((self.weight, self.bias))
        mean, var, weight, bias, eps = self.norm
        return self.derived.values((self.weight, self.bias, mean, var, weight, bias), (eps,))

    def _get(self, key: str, make: Callable[[], Any]) -> Any:
        values = self._values
        value = values.get(key)
        if value is None:
            with torch.no_grad():
                value = make()
            values[key] = value
        return value

    @property
    def scale(self) -> Tensor | None:
        """The folded BatchNorm's per-channel scale ``weight / sqrt(var + eps)``."""
        norm = self.norm
        if norm is None:
            return None
        _, var, weight, _, eps = norm

        def make() -> Tensor:
            s = torch.rsqrt(var + eps)
            return s if weight is None else s * weight

        scale: Tensor = self._get("scale", make)
        return scale

    def _folded(self) -> tuple[Tensor, Tensor | None]:
        s, norm = self.scale, self.norm
        assert s is not None and norm is not None
        mean, _, _, shift, _ = norm
        w = self.weight.detach()
        weight = w * s.view(-1, *([1] * (w.dim() - 1)))
        bias = -mean * s if self.bias is None else (self.bias.detach() - mean) * s
        return weight, bias if shift is None else bias + shift

    def unfolded(self) -> Affine:
        """The layer without the BatchNorm folded in."""
        return self if self.norm is None else replace(self, norm=None)

    def weight_part(self, which: str = "w", factor: float = 1.0) -> Tensor:
        """``which`` part of the (folded) weight, times ``factor``; for ``"boosted"`` the
        weight plus ``factor`` times its positive part (the gamma rule's ``W + g W+``)."""
        if which == "boosted":
            boosted: Tensor = self._get(
                f"boosted:{factor!r}",
                lambda: torch.add(self.weight_part().detach(), self.weight_part("+"), alpha=factor),
            )
            return boosted
        if factor != 1.0:
            part: Tensor = self._get(
                f"{which}*{factor!r}", lambda: self.weight_part(which) * factor
            )
            return part
        if which == "w":
            if self.norm is None:
                return self.weight
            weight: Tensor = self._get("w", lambda: self._folded()[0])
            return weight
        part = self._get(which, lambda: _PARTS[which](self.weight_part().detach()))
        return part

    def bias_part(self, which: str = "w") -> Tensor | None:
        """The (folded) bias (``"w"``) or its ``"+"``, ``"-"`` or ``"abs"`` part."""
        bias = self.bias if self.norm is None else self._get("b", lambda: self._folded()[1])
        if bias is None or which == "w":
            return bias
        part: Tensor = self._get("b" + which, lambda: _PARTS[which](bias.detach()))
        return part

    def bias_vector(self, which: str, factor: float = 1.0, add: float = 0.0) -> Tensor | None:
        """``factor * bias_part(which) + add`` per output channel (``None`` for no bias
        and nothing added)."""
        b = self.bias_part(which)
        if b is None and add == 0.0:
            return None
        if b is not None and factor == 1.0 and add == 0.0:
            return b

        def make() -> Tensor:
            if b is None:
                w = self.weight
                return torch.full((w.shape[0],), add, dtype=w.dtype, device=w.device)
            return b * factor + add

        vector: Tensor = self._get(f"bias:{which}*{factor!r}+{add!r}", make)
        return vector

    def per_channel(self, values: Tensor, like: Tensor) -> Tensor:
        """Per-output-channel ``values`` shaped to broadcast against an output like
        ``like``."""
        return values.view(1, -1, *([1] * (like.dim() - 2)))

    def folded_output(
        self, plus: Tensor, minus: Tensor, which: str, factor: float, add: float
    ) -> Tensor:
        """``factor * (y + b) + add`` for ``y`` the output of ``which`` (``"+"`` or
        ``"-"``) part of the folded weight and ``b`` that part of the folded bias, from
        the bias-free outputs ``plus`` and ``minus`` of the unfolded weight's parts:
        ``(sW)+ = s+ W+ + s- W-`` and ``(sW)- = s+ W- + s- W+``. One pass when the scale
        has one sign. A new tensor."""
        same, other = (plus, minus) if which == "+" else (minus, plus)
        terms: list[tuple[Tensor, Tensor | float]]
        s = self.scale
        if s is None:
            terms = [(same, factor)]
        else:
            has_pos, has_neg = self._get(
                "signs", lambda: (bool((s > 0).any()), bool((s < 0).any()))
            )
            terms = []
            if has_pos:
                positive = self._get(f"s+*{factor!r}", lambda: s.clamp(min=0) * factor)
                terms.append((same, self.per_channel(positive, same)))
            if has_neg:
                negative = self._get(f"s-*{factor!r}", lambda: s.clamp(max=0) * factor)
                terms.append((other, self.per_channel(negative, same)))
        bias = self.bias_vector(which, factor, add)
        out = torch.zeros_like(same) if bias is None else None
        for t, f in terms:
            if out is None:
                assert bias is not None
                b = self.per_channel(bias, t)
                out = torch.add(b, t, alpha=f) if isinstance(f, float) else torch.addcmul(b, t, f)
            elif isinstance(f, float):
                out.add_(t, alpha=f)
            else:
                out.addcmul_(t, f)
        if out is None:  # every channel scaled by zero: the bias alone
            assert bias is not None
            out = self.per_channel(bias, same).expand_as(same).clone()
        return out

    def conv(
        self, x: Tensor, which: str = "w", bias: Tensor | None = None, factor: float = 1.0
    ) -> Tensor:
        """``x`` through ``which`` part of the (folded) weight times ``factor``, with the
        per-channel ``bias`` when given. A new tensor."""
        return self.forward(x, self.weight_part(which, factor), bias)

    def transpose(self, grad: Tensor, which: str, like: Tensor, factor: float = 1.0) -> Tensor:
        """``which`` part of the (folded) layer times ``factor``, transposed:
        ``d/dx <grad, conv(x, which)>`` for an input ``x`` shaped like ``like`` (whose
        values are not read). A new tensor."""
        return self._transpose(grad, self.weight_part(which, factor), like)

    def transposes(self, grad: Tensor, parts: Sequence[str], like: Tensor) -> list[Tensor]:
        """:meth:`transpose` of ``grad`` through each of ``parts``, in one call when the
        layer has one group: the parts stacked along the input channels make one wider
        layer. For a first layer on three input channels that costs what one part does
        (its transposed convolution is mostly fixed cost: 24 ms for ResNet-50's 7x7 stem
        at batch 2, 25 ms for three parts). Views into one tensor."""
        g = self.geometry
        if len(parts) == 1 or (g is not None and g.groups != 1):
            return [self.transpose(grad, part, like) for part in parts]
        stacked: Tensor = self._get(
            "stack:" + ",".join(parts),
            lambda: torch.cat([self.weight_part(part) for part in parts], dim=1),
        )
        channels = like.shape[1]
        wide = like.new_empty((like.shape[0], channels * len(parts), *like.shape[2:]))
        out = self._transpose(grad, stacked, wide)
        return [out.narrow(1, i * channels, channels) for i in range(len(parts))]

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's operation applied to ``x`` with the given parameters."""
        g = self.geometry
        if g is None:
            return F.linear(x, weight, bias)
        if g.pre_pad is not None:
            x = F.pad(x, g.pre_pad)
        return F.conv2d(x, weight, bias, g.stride, g.padding, g.dilation, g.groups)

    def _transpose(self, grad: Tensor, weight: Tensor, like: Tensor) -> Tensor:
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


def conv2d_call(
    bound: Mapping[str, Any], name: str, derived: Derived | None = None
) -> tuple[Tensor, Affine] | None:
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
    return x, Affine(
        weight, bias if isinstance(bias, Tensor) else None, name, geometry, derived=derived
    )


def linear_call(
    bound: Mapping[str, Any], name: str, derived: Derived | None = None
) -> tuple[Tensor, Affine] | None:
    """The input and the :class:`Affine` of an ``F.linear`` call given its arguments by
    name."""
    x, weight = bound["input"], bound["weight"]
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor) or weight.dim() != 2:
        return None
    bias = bound.get("bias")
    return x, Affine(weight, bias if isinstance(bias, Tensor) else None, name, derived=derived)
