"""LRP rules for affine layers (convolutions and dense layers), as in zennit.

For an input ``x_i`` and an output ``j`` with relevance ``R_j`` (``stab(z) = z + eps *
sign(z)``, sign(0) = +1; ``w+``/``w-`` the positive and negative parts, ``b`` the bias):

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

A rule runs in two halves: :meth:`~AffineRule.forward` gives the layer's output and the
tensors the backward half needs, :meth:`~AffineRule.backward` turns the output relevance
into the input relevance. Each rule does the least convolution work its equation allows,
counted in passes of the layer (``conv`` forward, ``T`` the transposed layer):

* epsilon: the model's forward, one ``T``.
* z+: one ``conv`` with ``W+`` and one ``T`` (``x >= 0``, as after a rectifier); for a
  signed input two of each (``x+`` with ``W+``, ``x-`` with ``W-``).
* alpha-beta: the denominators ``z+ = conv(x, W+)`` and ``z- = conv(x, W-)`` are computed
  in the forward pass, and the layer's output is their sum plus the bias, so the plain
  layer never runs; two ``T``. A signed input needs four ``conv`` and four ``T``
  (``x+``/``x-`` with ``W+``/``W-``). Shortcuts through ``|x|`` and ``|W|`` (``z+ = (z +
  conv(|x|, |W|)) / 2``, numerators ``x (A + B)/2 + |x| (A - B)/2``) would halve that but
  cancel catastrophically where one sign of contribution vanishes (a dark image region
  under a one-signed filter: ``z+ = 0``, and the numerator's exact zero becomes a
  difference of two large sums); every denominator and numerator here is a sum of terms
  of one sign or an exact zero.
* gamma: with ``a = conv(|x|, |W|) + |b|`` and the output ``z``, both denominators are
  ``sign(z) ((1 + g/2) |z| + g/2 a)`` — a sum of terms of one sign, no cancellation — and
  ``R = (1 + g/2) x T(q sign(z), W) + g/2 |x| T(q, |W|)`` with ``q = R / |stab(d)|``: one
  ``conv`` and two ``T`` besides the model's forward, for any sign of ``x``. Here the
  ``|x|`` form is safe: ``|d|`` is small only where every product ``|x_i w_ij|`` is zero,
  so the large quotient multiplies exact zeros. Where ``x >= 0`` and only outputs with
  ``z > 0`` carry relevance (a rectifier follows the layer: checked on the values, not
  assumed), ``sign(z) q = q`` and the two ``T`` are one, ``x T(q, W + g W+)``.
* z^B: three of each (first layer only); flat and w^2: one ``conv`` of a single item of
  ones and one ``T``.

Nothing here depends on the call being a convolution or a dense layer, nor on a folded
BatchNorm: the layer is an :class:`~._affine.Affine` that runs parts of its (folded) weight
and their transposes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...errors import InputError
from ._affine import Affine

__all__ = [
    "PASS",
    "AffineRule",
    "AlphaBeta",
    "Epsilon",
    "Gamma",
    "PassRule",
    "Saved",
    "Spread",
    "ZBox",
    "ZPlus",
    "alpha_beta",
    "epsilon",
    "flat",
    "gamma",
    "layer_relevance",
    "stabilize",
    "w_square",
    "z_box",
    "z_plus",
]

Bound = float | Tensor
Saved = tuple[Tensor, ...]
"""What a rule's forward half keeps for its backward half (the input first)."""


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


# The sign check reads all of x and waits for its answer, and alpha-beta asks it in both
# halves of a layer about the same input: the answer is kept per tensor, while the tensor
# lives and is unchanged (same version counter).
_SIGNS: dict[int, tuple[weakref.ref[Tensor], int, bool]] = {}


def _forget(key: int, ref: weakref.ref[Tensor]) -> None:
    kept = _SIGNS.get(key)
    if kept is not None and kept[0] is ref:
        del _SIGNS[key]


def _nonnegative(x: Tensor) -> bool:
    """Whether ``x`` has no negative entry (after a rectifier): the ``x-`` terms vanish."""
    key = id(x)
    kept = _SIGNS.get(key)
    try:
        version = x._version
    except RuntimeError:  # an inference tensor: no version counter, nothing kept
        return x.numel() == 0 or bool(x.min() >= 0)
    if kept is not None and kept[0]() is x and kept[1] == version:
        return kept[2]
    result = x.numel() == 0 or bool(x.min() >= 0)
    _SIGNS[key] = (weakref.ref(x, lambda ref: _forget(key, ref)), version, result)
    return result


def _by_sign(x: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """``x+ positive + x- negative``, as ``x`` times whichever applies to its sign (where
    x = 0 both terms vanish): one product instead of two and their sum. A new tensor."""
    return torch.where(x > 0, positive, negative).mul_(x)


def layer_relevance(rule: AffineRule, layer: Affine, x: Tensor, relevance: Tensor) -> Tensor:
    """``rule`` on one layer: the input relevance for the output relevance ``relevance``."""
    with torch.no_grad():
        _, saved = rule.forward(layer, x, lambda t: layer.conv(t, "w", layer.bias_part()))
        return rule.backward(layer, saved, relevance)


class AffineRule:
    """A rule for affine layers. The default forward half gives the output as the model
    computes it and keeps the input, and the output too with :attr:`keeps_output` (the
    driver then spares it from in-place writes)."""

    keeps_output: ClassVar[bool] = False

    @property
    def name(self) -> str:
        raise NotImplementedError

    def check(self, x: Tensor) -> None:
        """Raise :class:`InputError` if the rule cannot apply to this input (forward time)."""
        return None

    def forward(
        self,
        layer: Affine,
        x: Tensor,
        plain: Callable[[Tensor], Tensor],
        prior: Saved | None = None,
    ) -> tuple[Tensor, Saved]:
        """The layer's output and what :meth:`backward` needs. ``plain(x)`` computes the
        output as the model does; ``prior`` is what this rule's forward kept for the layer
        before ``layer`` folded a BatchNorm in (so its products are rescaled, not rerun)."""
        z = plain(x)
        return z, ((x, z) if self.keeps_output else (x,))

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        """Input relevance from output relevance (a new tensor)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Epsilon(AffineRule):
    """LRP-epsilon (LRP-0 as ``eps`` -> 0)."""

    eps: float = 1e-6
    keeps_output: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return f"epsilon({self.eps:g})"

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        x, z = saved
        return layer.transpose(divide(relevance, z, self.eps), "w", x).mul_(x)


@dataclass(frozen=True)
class ZPlus(AffineRule):
    """z+ (alpha=1, beta=0), generalized to negative inputs as in zennit."""

    stabilizer: float = 1e-6

    @property
    def name(self) -> str:
        return "z+"

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        # The denominator is a sum of non-negative terms: stabilized by + eps, which goes
        # into the bias.
        (x,) = saved
        bias = layer.bias_vector("+", add=self.stabilizer)
        if _nonnegative(x):
            z = layer.conv(x, "+", bias)
            return layer.transpose(torch.div(relevance, z, out=z), "+", x).mul_(x)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z = layer.conv(xp, "+", bias).add_(layer.conv(xn, "-"))
        a, b = layer.transposes(torch.div(relevance, z, out=z), ("+", "-"), x)
        return _by_sign(x, a, b)


@dataclass(frozen=True)
class AlphaBeta(AffineRule):
    """alpha-beta: positive contributions weighted by alpha, negative ones by beta."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise InputError("lrp: alpha-beta needs alpha, beta >= 0 and alpha - beta = 1")

    @property
    def name(self) -> str:
        return f"alpha{self.alpha:g}-beta{self.beta:g}"

    def forward(
        self,
        layer: Affine,
        x: Tensor,
        plain: Callable[[Tensor], Tensor],
        prior: Saved | None = None,
    ) -> tuple[Tensor, Saved]:
        # Saved: x and the bias-free sums of the positive and negative contributions of
        # the layer without its folded BatchNorm (the backward pass rescales them).
        if prior is not None:  # computed when the layer ran, before the BatchNorm came
            return plain(x), prior
        raw = layer.unfolded()
        if _nonnegative(x):
            p, n = raw.conv(x, "+"), raw.conv(x, "-")
        else:
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            p = raw.conv(xp, "+").add_(raw.conv(xn, "-"))
            n = raw.conv(xp, "-").add_(raw.conv(xn, "+"))
        if layer.norm is not None:
            return plain(x), (x, p, n)
        z = p + n
        bias = layer.bias_part()
        return (z if bias is None else z.add_(layer.per_channel(bias, z))), (x, p, n)

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        # u = alpha R / (z+ + eps), v = beta R / (z- - eps), with 1/alpha and 1/beta folded
        # into the one pass that makes each denominator.
        x, p, n = saved
        eps = self.stabilizer
        d = layer.folded_output(p, n, "+", 1 / self.alpha, eps / self.alpha)
        u = torch.div(relevance, d, out=d)
        v: Tensor | None = None
        if self.beta != 0:
            d = layer.folded_output(p, n, "-", 1 / self.beta, -eps / self.beta)
            v = torch.div(relevance, d, out=d)
        if _nonnegative(x):
            total = layer.transpose(u, "+", x)
            if v is not None:
                total.sub_(layer.transpose(v, "-", x))
            return total.mul_(x)
        # x+ A + x- B with A = T(u, W+) - T(v, W-), B = T(u, W-) - T(v, W+), each
        # computed directly (see the module docstring).
        a, b = layer.transposes(u, ("+", "-"), x)
        if v is not None:
            c, d = layer.transposes(v, ("-", "+"), x)
            a.sub_(c)
            b.sub_(d)
        return _by_sign(x, a, b)


@dataclass(frozen=True)
class Gamma(AffineRule):
    """Generalized gamma rule (positive weights boosted by ``gamma``)."""

    gamma: float = 0.25
    stabilizer: float = 1e-6
    keeps_output: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise InputError(f"lrp: gamma must be non-negative, got {self.gamma}")

    @property
    def name(self) -> str:
        return f"gamma({self.gamma:g})"

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        # Module docstring: |d| = (1 + g/2) |z| + g/2 (conv(|x|, |W|) + |b|) for z != 0,
        # and outputs with z = 0 pass no relevance (they are neither positive nor negative).
        # The constants go into cached weight parts and the bias.
        x, z = saved
        half = self.gamma / 2
        nonneg = _nonnegative(x)
        magnitude = x if nonneg else x.abs()
        q = layer.conv(magnitude, "abs", layer.bias_vector("abs", half, self.stabilizer), half)
        sign = z.sign()
        q.addcmul_(z, sign, value=1 + half)  # |z| = z sign(z)
        g = torch.div(relevance, q, out=q)
        signed = g * sign  # R / stab(d): zero where z = 0
        if nonneg and torch.equal(signed, g):
            # Relevance only on positive outputs (a rectifier follows: the next layer's
            # rule multiplies by its input, zero where z <= 0), so both transposes below
            # are one, with the weight (1 + g/2) W + g/2 |W| = W + g W+: the gamma rule
            # of Montavon et al. 2019 for positive outputs.
            return layer.transpose(signed, "boosted", x, self.gamma).mul_(x)
        main = layer.transpose(signed, "w", x, 1 + half)
        boost = layer.transpose(signed.mul_(sign), "abs", x, half)
        if nonneg:
            return main.add_(boost).mul_(x)
        return main.mul_(x).add_(boost.mul_(magnitude))


@dataclass(frozen=True)
class ZBox(AffineRule):
    """z^B for an input bounded by ``low <= x <= high`` (defaults: each item's per-channel
    minimum and maximum). The bias cancels out of the denominator, as in zennit."""

    low: Bound | None = None
    high: Bound | None = None
    stabilizer: float = 1e-6

    @property
    def name(self) -> str:
        return "z^B"

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
        low, high = self.bounds(x)
        if bool((low > high).any()):
            raise InputError("lrp: low must not exceed high")

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        (x,) = saved
        low, high = (b.expand_as(x) for b in self.bounds(x))
        z = layer.conv(x, "w").sub_(layer.conv(low, "+")).sub_(layer.conv(high, "-"))
        g = divide(relevance, z, self.stabilizer)
        main, plus, minus = layer.transposes(g, ("w", "+", "-"), x)
        return torch.mul(main, x).sub_(plus.mul_(low)).sub_(minus.mul_(high))


@dataclass(frozen=True)
class Spread(AffineRule):
    """Relevance spread by a fixed weight part (``ones`` for flat, ``square`` for w^2),
    whatever the input: the denominator is the same for every item, so it is computed
    on one item of ones."""

    part: str
    label: str
    stabilizer: float = 1e-6

    @property
    def name(self) -> str:
        return self.label

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        (x,) = saved
        total = layer.conv(x.new_ones((1, *x.shape[1:])), self.part)
        g = divide(relevance, total.expand_as(relevance), self.stabilizer)
        return layer.transpose(g, self.part, x)


@dataclass(frozen=True)
class PassRule(AffineRule):
    """Relevance passes unchanged (elementwise layers: rectifiers, a BatchNorm that follows
    no affine layer). On a layer that changes the shape it raises."""

    @property
    def name(self) -> str:
        return "pass"

    def backward(self, layer: Affine, saved: Saved, relevance: Tensor) -> Tensor:
        (x,) = saved
        if relevance.shape != x.shape:
            raise InputError(
                f"lrp: the pass rule needs a layer that keeps the shape; {layer.name} maps "
                f"{tuple(x.shape)} to {tuple(relevance.shape)}"
            )
        return relevance


PASS = PassRule()


def epsilon(eps: float = 1e-6) -> Epsilon:
    """LRP-epsilon (LRP-0 as ``eps`` -> 0)."""
    return Epsilon(eps)


def z_plus(stabilizer: float = 1e-6) -> ZPlus:
    """z+ (alpha=1, beta=0), generalized to negative inputs as in zennit."""
    return ZPlus(stabilizer)


def alpha_beta(alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> AlphaBeta:
    """alpha-beta: positive contributions weighted by alpha, negative ones by beta."""
    return AlphaBeta(alpha, beta, stabilizer)


def gamma(gamma_value: float = 0.25, stabilizer: float = 1e-6) -> Gamma:
    """Generalized gamma rule (positive weights boosted by ``gamma``)."""
    return Gamma(gamma_value, stabilizer)


def z_box(low: Bound | None = None, high: Bound | None = None, stabilizer: float = 1e-6) -> ZBox:
    """z^B for an input bounded by ``low <= x <= high`` (defaults: each item's per-channel
    minimum and maximum)."""
    return ZBox(low, high, stabilizer)


def flat(stabilizer: float = 1e-6) -> Spread:
    """Flat: each output's relevance spread evenly over the inputs it sees."""
    return Spread("ones", "flat", stabilizer)


def w_square(stabilizer: float = 1e-6) -> Spread:
    """w^2: each output's relevance spread in proportion to the squared weights."""
    return Spread("square", "w^2", stabilizer)
