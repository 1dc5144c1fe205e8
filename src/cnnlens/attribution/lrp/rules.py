"""LRP rules for affine layers (convolutions and dense layers), zennit style.

A rule is a small set of settings: a list of *branches*, each a modified copy of the
layer — which input it sees (``x``, its positive or negative part, ones, the box bounds)
and how the parameters are modified (clamped, gamma-boosted, set to ones, bias dropped) —
plus a *gradient mapper* that turns the output relevance and the branch outputs into one
output-shaped tensor per branch. The input relevance is then

    R_in = sum_i  coef_i * x_i * W_i^T g_i

with ``x_i`` the branch input, ``W_i^T`` the transposed modified layer and ``g_i`` the
mapped tensor. The equations, for an input ``x_i`` and an output ``j`` with relevance
``R_j`` (``stab(z) = z + eps * sign(z)``, sign(0) = +1; ``w+``/``w-`` the positive and
negative parts):

* epsilon   R_i = sum_j x_i w_ij / stab(z_j) R_j                       (Bach et al. 2015)
* z+        R_i = sum_j (x+ w+ + x- w-)_ij / stab(sum_i (x+ w+ + x- w-)_ij + b+_j) R_j
* alpha-beta  alpha * (z+ share) - beta * (share of the negative contributions
            x+ w- + x- w+ with b-), alpha - beta = 1
* gamma     positive outputs: (x+ (w + g w+) + x- (w + g w-)) / stab(... + b + g b+);
            negative outputs: (x+ (w + g w-) + x- (w + g w+)) / stab(... + b + g b-)
            (the generalized gamma rule of zennit; Montavon et al. 2019 for x >= 0)
* z^B (box) R_i = sum_j (x w - l w+ - h w-)_ij / stab(sum_i (...)) R_j, l <= x <= h
* flat      R_i = sum_j 1 / (number of inputs of j) R_j              (Lapuschkin et al. 2019)
* w^2       R_i = sum_j w_ij^2 / sum_i w_ij^2 R_j                     (Montavon et al. 2017)
* pass      R_in = R_out (elementwise layers only)

Nothing here depends on the call being a convolution or a dense layer: the layer is an
:class:`~._affine.Affine` that knows how to run itself and its transpose.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ...errors import InputError
from ._affine import Affine

__all__ = [
    "PASS",
    "AffineRule",
    "Branch",
    "Params",
    "PassRule",
    "Rule",
    "Source",
    "alpha_beta",
    "epsilon",
    "flat",
    "gamma",
    "stabilize",
    "w_square",
    "z_box",
    "z_plus",
]

Bound = float | Tensor


def stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with sign(0) = +1 (-0.0 counts as negative): moves every entry
    away from zero. A new tensor."""
    return torch.copysign(torch.full((), eps, dtype=z.dtype, device=z.device), z).add_(z)


def divide(relevance: Tensor, denominator: Tensor, eps: float) -> Tensor:
    """``relevance / stabilize(denominator, eps)``, written into the temporary when nothing
    needs its gradient (as in the backward pass)."""
    stable = stabilize(denominator, eps)
    if stable.shape != relevance.shape or (
        torch.is_grad_enabled() and (stable.requires_grad or relevance.requires_grad)
    ):
        return relevance / stable
    return torch.div(relevance, stable, out=stable)


def _plus(*terms: Tensor | None) -> Tensor:
    """The sum of the terms that are present (a branch with an all-zero input and no bias
    has no output)."""
    present = [t for t in terms if t is not None]
    total = present[0]
    for t in present[1:]:
        total = total + t
    return total


class Source(enum.Enum):
    """What a branch feeds the layer."""

    INPUT = "x"
    POSITIVE = "x+"
    NEGATIVE = "x-"
    ONES = "1"
    LOW = "low"
    HIGH = "high"


@dataclass(frozen=True)
class Params:
    """How a branch modifies the parameters: ``fn`` applied to the weight (and to the bias
    when ``bias`` is true; otherwise the bias is dropped). ``fn=None`` keeps them."""

    fn: Callable[[Tensor], Tensor] | None = None
    bias: bool = True

    def weight(self, w: Tensor) -> Tensor:
        return w if self.fn is None else self.fn(w)

    def bias_of(self, b: Tensor | None) -> Tensor | None:
        if b is None or not self.bias:
            return None
        return b if self.fn is None else self.fn(b)


KEEP = Params()


def _positive(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _negative(t: Tensor) -> Tensor:
    return t.clamp(max=0)


def _ones(t: Tensor) -> Tensor:
    return torch.ones_like(t)


def _square(t: Tensor) -> Tensor:
    return t * t


def _gamma_mod(gamma_value: float, part: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def modify(t: Tensor) -> Tensor:
        return t + gamma_value * part(t)

    return modify


@dataclass(frozen=True)
class Branch:
    source: Source
    params: Params = KEEP
    coef: float = 1.0


Mapper = Callable[[Tensor, Sequence[Tensor | None], Tensor | None], Sequence[Tensor]]
"""(output relevance, branch outputs, true output) -> one output-shaped tensor per branch.
A branch output is ``None`` when its input is all zero and it has no bias; the true output
is ``None`` unless the rule sets ``uses_output``."""


class AffineRule(Protocol):
    """What the driver needs from a rule for an affine layer."""

    @property
    def name(self) -> str: ...

    def check(self, x: Tensor) -> None:
        """Raise :class:`InputError` if the rule cannot apply to this input (forward time)."""

    @property
    def uses_output(self) -> bool:
        """Whether :meth:`relevance` needs the layer's true output ``z``."""
        ...

    def relevance(self, layer: Affine, x: Tensor, z: Tensor | None, relevance: Tensor) -> Tensor:
        """Input relevance from output relevance; ``z`` is the layer's true output (given
        when :attr:`uses_output`)."""
        ...


@dataclass(frozen=True)
class Rule:
    """A rule as settings (see the module docstring). ``low``/``high`` are the box bounds
    for :attr:`Source.LOW`/:attr:`Source.HIGH` branches (``None``: each item's per-channel
    minimum/maximum of the layer input)."""

    name: str
    branches: tuple[Branch, ...]
    mapper: Mapper = field(repr=False)
    uses_output: bool = False
    low: Bound | None = None
    high: Bound | None = None

    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Box bounds broadcastable to ``x``."""
        dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)

        def resolve(value: Bound | None, fallback: Callable[[], Tensor], which: str) -> Tensor:
            if value is None:
                return fallback()
            bound = torch.as_tensor(value, dtype=x.dtype, device=x.device)
            try:
                bound.expand(x.shape)
            except RuntimeError:
                raise InputError(
                    f"lrp: {which} of shape {tuple(bound.shape)} does not broadcast to the "
                    f"first layer's input {tuple(x.shape)}"
                ) from None
            return bound

        low = resolve(self.low, lambda: x.detach().amin(dim=dims, keepdim=True), "low")
        high = resolve(self.high, lambda: x.detach().amax(dim=dims, keepdim=True), "high")
        return low, high

    def check(self, x: Tensor) -> None:
        if any(b.source in (Source.LOW, Source.HIGH) for b in self.branches):
            low, high = self.bounds(x)
            if bool((low > high).any()):
                raise InputError("lrp: low must not exceed high")

    def relevance(self, layer: Affine, x: Tensor, z: Tensor | None, relevance: Tensor) -> Tensor:
        if self.uses_output and z is None:
            z = layer.forward(x, layer.weight, layer.bias)
        signs = {b.source for b in self.branches} & {Source.POSITIVE, Source.NEGATIVE}
        nonneg = bool(signs) and bool(x.min() >= 0)
        bounds = (
            self.bounds(x)
            if any(b.source in (Source.LOW, Source.HIGH) for b in self.branches)
            else None
        )
        inputs: list[Tensor | None] = []
        outputs: list[Tensor | None] = []
        weights: list[Tensor] = []
        for branch in self.branches:
            xi = _source(branch.source, x, nonneg, bounds)
            w = branch.params.weight(layer.weight)
            b = branch.params.bias_of(layer.bias)
            out: Tensor | None
            if xi is x and branch.params is KEEP and z is not None:
                out = z  # the true output: no need to run the layer again
            elif xi is None:  # an all-zero input: only the bias is left
                out = None if b is None else layer.bias_term(b, relevance)
            else:
                out = layer.forward(xi, w, b)
            inputs.append(xi)
            outputs.append(out)
            weights.append(w)
        grads = self.mapper(relevance, outputs, z)
        del outputs
        total: Tensor | None = None
        for branch, xi, w, g in zip(self.branches, inputs, weights, grads, strict=True):
            if xi is None or branch.coef == 0:
                continue
            term = layer.transpose(g, w, x)
            if branch.source is not Source.ONES:
                term = term.mul_(xi)
            if branch.coef != 1.0:
                term = term.mul_(branch.coef)
            total = term if total is None else total.add_(term)
        return torch.zeros_like(x) if total is None else total


def _source(
    source: Source, x: Tensor, nonneg: bool, bounds: tuple[Tensor, Tensor] | None
) -> Tensor | None:
    if source is Source.INPUT:
        return x
    if source is Source.POSITIVE:
        return x if nonneg else x.clamp(min=0)
    if source is Source.NEGATIVE:
        return None if nonneg else x.clamp(max=0)
    if source is Source.ONES:
        return torch.ones_like(x)
    assert bounds is not None
    return bounds[0 if source is Source.LOW else 1].expand_as(x)


@dataclass(frozen=True)
class PassRule:
    """Relevance passes unchanged (elementwise layers: rectifiers, a BatchNorm that follows
    no affine layer). On a layer that changes the shape it raises."""

    name: str = "pass"
    uses_output: bool = False

    def check(self, x: Tensor) -> None:
        return None

    def relevance(self, layer: Affine, x: Tensor, z: Tensor | None, relevance: Tensor) -> Tensor:
        if relevance.shape != x.shape:
            raise InputError(
                f"lrp: the pass rule needs a layer that keeps the shape; {layer.name} maps "
                f"{tuple(x.shape)} to {tuple(relevance.shape)}"
            )
        return relevance


PASS = PassRule()


def epsilon(eps: float = 1e-6) -> Rule:
    """LRP-epsilon (LRP-0 as ``eps`` -> 0)."""

    def mapper(r: Tensor, outs: Sequence[Tensor | None], z: Tensor | None) -> list[Tensor]:
        return [divide(r, _plus(outs[0]), eps)]

    return Rule(f"epsilon({eps:g})", (Branch(Source.INPUT),), mapper, uses_output=True)


def z_plus(stabilizer: float = 1e-6) -> Rule:
    """z+ (alpha=1, beta=0), generalized to negative inputs as in zennit."""

    def mapper(r: Tensor, outs: Sequence[Tensor | None], z: Tensor | None) -> list[Tensor]:
        g = divide(r, _plus(outs[0], outs[1]), stabilizer)
        return [g, g]

    return Rule(
        "z+",
        (
            Branch(Source.POSITIVE, Params(_positive)),
            Branch(Source.NEGATIVE, Params(_negative, bias=False)),
        ),
        mapper,
    )


def alpha_beta(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> Rule:
    """alpha-beta: positive contributions weighted by alpha, negative ones by beta."""
    if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
        raise InputError("lrp: alpha-beta needs alpha, beta >= 0 and alpha - beta = 1")

    def mapper(r: Tensor, outs: Sequence[Tensor | None], z: Tensor | None) -> list[Tensor]:
        pos = divide(r, _plus(outs[0], outs[1]), stabilizer)
        neg = divide(r, _plus(outs[2], outs[3]), stabilizer)
        return [pos, pos, neg, neg]

    return Rule(
        f"alpha{alpha:g}-beta{beta:g}",
        (
            Branch(Source.POSITIVE, Params(_positive), alpha),
            Branch(Source.NEGATIVE, Params(_negative, bias=False), alpha),
            Branch(Source.POSITIVE, Params(_negative), -beta),
            Branch(Source.NEGATIVE, Params(_positive, bias=False), -beta),
        ),
        mapper,
    )


def gamma(gamma_value: float = 0.25, stabilizer: float = 1e-6) -> Rule:
    """Generalized gamma rule (positive weights boosted by ``gamma``)."""
    if gamma_value < 0:
        raise InputError(f"lrp: gamma must be non-negative, got {gamma_value}")
    boost_pos = _gamma_mod(gamma_value, _positive)
    boost_neg = _gamma_mod(gamma_value, _negative)

    def mapper(r: Tensor, outs: Sequence[Tensor | None], z: Tensor | None) -> list[Tensor]:
        assert z is not None
        zero = r.new_zeros(())
        pos = divide(torch.where(z > 0, r, zero), _plus(outs[0], outs[1]), stabilizer)
        neg = divide(torch.where(z < 0, r, zero), _plus(outs[2], outs[3]), stabilizer)
        return [pos, pos, neg, neg]

    return Rule(
        f"gamma({gamma_value:g})",
        (
            Branch(Source.POSITIVE, Params(boost_pos)),
            Branch(Source.NEGATIVE, Params(boost_neg, bias=False)),
            Branch(Source.POSITIVE, Params(boost_neg)),
            Branch(Source.NEGATIVE, Params(boost_pos, bias=False)),
        ),
        mapper,
        uses_output=True,
    )


def z_box(low: Bound | None = None, high: Bound | None = None, stabilizer: float = 1e-6) -> Rule:
    """z^B for an input bounded by ``low <= x <= high`` (defaults: each item's per-channel
    minimum and maximum). The bias cancels out of the denominator, as in zennit."""

    def mapper(r: Tensor, outs: Sequence[Tensor | None], z: Tensor | None) -> list[Tensor]:
        o0, o1, o2 = (o if o is not None else r.new_zeros(()) for o in outs)
        g = divide(r, o0 - o1 - o2, stabilizer)
        return [g, g, g]

    return Rule(
        "z^B",
        (
            Branch(Source.INPUT, Params(bias=False)),
            Branch(Source.LOW, Params(_positive, bias=False), -1.0),
            Branch(Source.HIGH, Params(_negative, bias=False), -1.0),
        ),
        mapper,
        low=low,
        high=high,
    )


def flat(stabilizer: float = 1e-6) -> Rule:
    """Flat: each output's relevance spread evenly over the inputs it sees."""

    def mapper(r: Tensor, outs: Sequence[Tensor | None], z: Tensor | None) -> list[Tensor]:
        return [divide(r, _plus(outs[0]), stabilizer)]

    return Rule("flat", (Branch(Source.ONES, Params(_ones, bias=False)),), mapper)


def w_square(stabilizer: float = 1e-6) -> Rule:
    """w^2: each output's relevance spread in proportion to the squared weights."""

    def mapper(r: Tensor, outs: Sequence[Tensor | None], z: Tensor | None) -> list[Tensor]:
        return [divide(r, _plus(outs[0]), stabilizer)]

    return Rule("w^2", (Branch(Source.ONES, Params(_square, bias=False)),), mapper)
