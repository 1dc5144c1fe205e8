"""DeepLIFT's multipliers as rules of the interception engine (:mod:`cnnlens._engine`);
nothing is attached to the model.

DeepLIFT (Shrikumar et al. 2017) propagates *multipliers* m = Δy/Δx instead of gradients,
where Δ is the difference between the input's and the reference's (baseline's) forward
values. Linear operations — convolutions, linear layers, eval-mode batch norm, average
pooling, sums, products with constants (layer scales), concatenations, reshapes — have the
weights as multipliers, which is what autograd already computes. The other kinds get exact
rules:

* rectifiers y = clip(x, 0, upper) and every other elementwise activation (sigmoid, tanh,
  SiLU, GELU, ELU, leaky ReLU, hardswish, softplus, exp, ...), in any call form: the
  Rescale rule, m = (y − y0)/(x − x0), the true derivative where x = x0 (for smooth
  activations: where |x − x0| is below the square root of the machine epsilon, where the
  quotient would lose its digits);
* products of two tensors that both depend on the input (squeeze-and-excitation gates,
  ``x * torch.sigmoid(x)``): the exact two-term split
  Δ(ab) = ½(a + a0)·Δb + ½(b + b0)·Δa, i.e. multipliers ½(b + b0) for a and ½(a + a0) for b;
* quotients a / b with b depending on the input: a · r with r = 1/b under Rescale, then the
  product split;
* normalizations with input statistics (layer norm, group norm, instance norm, RMS norm),
  decomposed into exact steps: centring c = x − mean(x) (linear), c² (a product),
  v = mean(c²) (linear), s = (v + eps)^(-1/2) (Rescale), c·s (a product), then the affine
  weight and bias (linear). The forward value is the normalization's own output;
* max pooling (1-, 2- and 3-D, fixed or adaptive windows): the output difference of each
  window, y − y0, is split as (max(y, y0) − y0) + (y − max(y, y0)); the first part goes to
  the input's winner, the second to the reference's winner, and each input position's
  multiplier is what it received divided by its own Δx (the true gradient where Δx = 0).
  Whatever a window sends out it sends to positions whose Δx has the same sign and at
  least the same size, so multipliers stay in [0, 1] and Σ m·Δx over the inputs is exactly
  Σ Δy over the windows. (The paper's gradient-style rule, all of Δy routed to the input's
  winner, does not keep that sum; captum uses the same split as here, but through
  ``max_unpool``, which drops contributions when windows overlap.)

Every rule is exact, so by the chain rule Σ_i m_i·Δx_i = score(input) − score(reference)
for any composition of these operations. Operations with no exact rule (softmax, max over
a dimension, batch statistics, ...) keep their gradient and are reported with a
:class:`~cnnlens._engine.RuleWarning` naming them (an error with ``strict=True``).

The computation is two forward passes under the engine: the reference pass runs the
reference without gradients and records, for every nonlinear call in call order, what the
rule needs (its inputs; for max pooling the output and the winners); the input pass then
runs the input with gradients and gives call k the multiplier built from record k. Both
passes count every tensor but a parameter as input-dependent
(:func:`~cnnlens._ops.all_dependent`), so they classify calls the same way; a product with
a constant then gets the product split, which is exact for it as well (Δc = 0). A reference shared by all items is run as a single item and
broadcast. In-place calls are computed out of place; library code uses the returned tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._engine import GRADIENT, Rule, RuleSet
from .._ops import Call, Kind

__all__ = ["DeepLift", "Record"]

_WITH_INDICES: dict[str, Callable[..., Any]] = {
    f"{prefix}{d}": getattr(F, f"{prefix}{d}_with_indices")
    for prefix in ("max_pool", "adaptive_max_pool")
    for d in ("1d", "2d", "3d")
}


@dataclass
class Record:
    """What the reference pass keeps of one nonlinear call."""

    kind: Kind
    x0: Tensor
    y0: Tensor | None = None
    other0: Tensor | None = None
    winners: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.x0, self.y0, self.other0, self.winners) if t is not None]

    def copied(self) -> Record:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.clone()

        return Record(
            self.kind, self.x0.clone(), copy(self.y0), copy(self.other0), copy(self.winners)
        )


@dataclass
class DeepLift:
    """The two rule sets of one DeepLIFT run and the records they share.

    The reference pass keeps the tensors it met, not copies of them (a copy of every
    activation costs as much as the rectifiers themselves), with their version counters:
    :meth:`overwritten` tells whether the model then wrote over one of them in place, and
    the reference pass is then run again with ``copy=True``.
    """

    copy: bool = False
    records: list[Record] = field(default_factory=list)
    versions: list[list[int]] = field(default_factory=list)
    used: int = 0

    def keep(self, record: Record) -> None:
        if self.copy:
            record = record.copied()
        else:
            self.versions.append([t._version for t in record.tensors()])
        self.records.append(record)

    def overwritten(self) -> bool:
        """Whether a kept tensor was changed in place after the call that made it."""
        return any(
            [t._version for t in record.tensors()] != versions
            for record, versions in zip(self.records, self.versions, strict=True)
        )

    def reference_rules(self) -> RuleSet:
        return RuleSet("deeplift", _rules(_Keep(self)), lost="")

    def input_rules(self) -> RuleSet:
        return RuleSet(
            "deeplift",
            _rules(_Use(self)),
            lost="the attributions no longer sum to score(input) − score(baseline)",
        )

    def next(self, kind: Kind, x: Tensor) -> Record:
        k = self.used
        self.used += 1
        if k >= len(self.records):
            raise RuntimeError(
                "the model made more nonlinear calls on the input than on the baseline; "
                "DeepLIFT needs the same sequence of operations for both"
            )
        record = self.records[k]
        x0 = record.x0
        fits = x0.shape == x.shape or (
            x0.dim() == x.dim() and x0.shape[0] == 1 and x0.shape[1:] == x.shape[1:]
        )
        if record.kind is not kind or not fits:
            raise RuntimeError(
                f"nonlinear call {k} differs between input ({kind.value}, {tuple(x.shape)}) "
                f"and baseline ({record.kind.value}, {tuple(x0.shape)}); DeepLIFT needs the "
                "same sequence of operations for both"
            )
        return record


_NAMES = {
    Kind.RECTIFIER: "rescale",
    Kind.ACTIVATION: "rescale",
    Kind.PRODUCT: "product split ½(a+a0)Δb + ½(b+b0)Δa",
    Kind.QUOTIENT: "quotient: rescale 1/b, product split",
    Kind.NORMALIZATION: "decomposed: centring, product, rescale",
    Kind.MAX_POOL: "max pool: winners' split",
}


def _rules(rule: Rule) -> dict[Kind, Rule]:
    rules: dict[Kind, Rule] = dict.fromkeys(
        (Kind.AFFINE, Kind.BATCH_NORM, Kind.SCALE, Kind.SUM, Kind.AVG_POOL, Kind.DROPOUT), GRADIENT
    )
    rules.update(dict.fromkeys(_NAMES, rule))
    return rules


def _pool_call(call: Call) -> tuple[Tensor, Tensor, bool]:
    """Run a max pooling call with indices: (output, winners, indices requested)."""
    bound = dict(call.bound)
    with_indices = _WITH_INDICES[call.op]
    wanted = bool(bound.get("return_indices", False)) or call.func is with_indices
    bound["return_indices"] = True
    y, winners = with_indices(**bound)
    return y, winners, wanted


class _Keep(Rule):
    """Reference pass: compute each call and record what its rule will need."""

    def __init__(self, run: DeepLift) -> None:
        self.run = run

    def describe(self, call: Call) -> str | None:
        return _NAMES[call.kind]

    def __call__(self, call: Call) -> Any:
        keep = self.run.keep
        x0 = call.x.detach()
        if call.kind is Kind.MAX_POOL:
            y, winners, wanted = _pool_call(call)
            keep(Record(call.kind, x0, y.detach(), winners=winners))
            return (y, winners) if wanted else y
        other0 = None if call.other is None else call.other.detach()
        y = call.apply(call.x)  # out of place: x0 stays as it was
        y0 = y.detach() if call.kind in (Kind.RECTIFIER, Kind.ACTIVATION) else None
        keep(Record(call.kind, x0, y0, other0))
        return y


class _Use(Rule):
    """Input pass: give each call its multiplier from its record."""

    def __init__(self, run: DeepLift) -> None:
        self.run = run

    def describe(self, call: Call) -> str | None:
        return _NAMES[call.kind]

    def __call__(self, call: Call) -> Any:
        record = self.run.next(call.kind, call.x)
        if call.kind is Kind.RECTIFIER:
            return _rectifier(call, record)
        if call.kind is Kind.ACTIVATION:
            assert record.y0 is not None
            return rescale(call.x, record.x0, record.y0, call.apply)
        if call.kind is Kind.MAX_POOL:
            return _max_pool(call, record)
        if call.kind is Kind.PRODUCT:
            assert call.other is not None and record.other0 is not None
            return product(call.x, call.other, record.x0, record.other0)
        if call.kind is Kind.QUOTIENT:
            assert call.other is not None and record.other0 is not None
            b, b0 = call.other, record.other0
            r = rescale(b, b0, torch.reciprocal(b0), torch.reciprocal)
            return product(call.x, r, record.x0, torch.reciprocal(b0))
        return _normalization(call, record)


# --------------------------------------------------------------------------- rules


class _Multiplier(torch.autograd.Function):
    """Forward: the precomputed output ``value[0]``; backward: the incoming gradient times
    ``m``. (The output is passed boxed: a tensor argument returned as it is would be a view,
    which a model may not add into in place.)"""

    @staticmethod
    def forward(ctx: Any, x: Tensor, value: tuple[Tensor], m: Tensor) -> Tensor:
        del x
        ctx.save_for_backward(m)
        return value[0]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (m,) = ctx.saved_tensors
        return grad * m, None, None


class _Product(torch.autograd.Function):
    """a · b with multipliers ``ma`` for a and ``mb`` for b."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, ma: Tensor, mb: Tensor) -> Tensor:
        ctx.save_for_backward(ma, mb)
        ctx.shapes = (a.shape, b.shape)
        return torch.mul(a, b)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        ma, mb = ctx.saved_tensors
        sa, sb = ctx.shapes
        return (grad * ma).sum_to_size(sa), (grad * mb).sum_to_size(sb), None, None


def product(a: Tensor, b: Tensor, a0: Tensor, b0: Tensor) -> Tensor:
    """a · b whose backward uses the exact split Δ(ab) = ½(a + a0)·Δb + ½(b + b0)·Δa."""
    with torch.no_grad():
        ma = (b + b0).mul_(0.5)
        mb = (a + a0).mul_(0.5)
    out: Tensor = _Product.apply(a, b, ma, mb)
    return out


def rescale(x: Tensor, x0: Tensor, y0: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """y = fn(x) (elementwise) with the Rescale multiplier (y − y0)/(x − x0); the derivative
    where |x − x0| is below the square root of the machine epsilon."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = fn(leaf)
        (gradient,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
    with torch.no_grad():
        y = out.detach()
        dx = x - x0
        # Below sqrt(machine epsilon), Δy/Δx loses its digits to cancellation while
        # f'(x)·Δx is within O(Δx²) of Δy: use the derivative there.
        large = dx.abs() > torch.finfo(dx.dtype).eps ** 0.5
        ratio = (y - y0) / torch.where(large, dx, torch.ones_like(dx))
        m = torch.where(large, ratio, gradient)
    result: Tensor = _Multiplier.apply(x, (y,), m)
    return result


def _rectifier(call: Call, record: Record) -> Tensor:
    x, upper = call.x, call.options["upper"]
    assert record.y0 is not None
    with torch.no_grad():
        y = x.clamp(min=0.0) if upper is None else x.clamp(0.0, upper)
        # Δy/Δx lies in [0, 1] also in floating point (clipping is monotonic), so only
        # Δx = 0 (none, or up to a third of the units) needs the fallback to the gradient
        # [0 < x < upper]. Every full-size pass and temporary here costs about as much as
        # the rectifier itself: two buffers, written in place, and no fallback without ties.
        # A tie divides 0 by 0 (x = x0 gives y = y0), so a NaN-free sum (one read, where a
        # mask would be a write and a read) shows there is none.
        dx = torch.sub(x, record.x0)
        m = torch.sub(y, record.y0).div_(dx)
        if bool(m.sum().isnan()):  # ties, or a NaN or infinity in the input
            ties = dx == 0
            one = torch.ones((), dtype=m.dtype, device=m.device).expand_as(m)
            if upper is None:
                torch.ops.aten.threshold_backward.grad_input(one, x, 0.0, grad_input=dx)
            else:
                torch.ops.aten.hardtanh_backward.grad_input(one, x, 0.0, upper, grad_input=dx)
            torch.where(ties, dx, m, out=m)
    out: Tensor = _Multiplier.apply(x, (y,), m)
    return out


class _MaxPoolMultiplier(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        value: tuple[Tensor],
        shares: Tensor,
        winners: Tensor,
        ref_winners: Tensor,
        dx: Tensor,
    ) -> Tensor:
        del x
        ctx.save_for_backward(shares, winners, ref_winners, dx)
        return value[0]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        shares, winners, ref_winners, dx = ctx.saved_tensors
        flat = (grad.shape[0], grad.shape[1], -1)
        mine, theirs = shares  # (2, ...) → the parts for the input's/reference's winners
        received = torch.zeros(dx.shape, dtype=grad.dtype, device=grad.device).view(flat)
        received.scatter_add_(2, winners.reshape(flat), (grad * mine).reshape(flat))
        received.scatter_add_(2, ref_winners.reshape(flat), (grad * theirs).reshape(flat))
        gradient = torch.zeros_like(received)
        gradient.scatter_add_(2, winners.reshape(flat), grad.reshape(flat))
        received = received.view(dx.shape)
        gradient = gradient.view(dx.shape)
        # What a position receives is at most |Δx| in size: only Δx = 0 needs the gradient.
        zero = dx == 0
        result = torch.where(zero, gradient, received / torch.where(zero, 1.0, dx))
        return result, None, None, None, None, None


def _max_pool(call: Call, record: Record) -> Any:
    with torch.no_grad():
        y, winners, wanted = _pool_call(call)
    assert record.y0 is not None and record.winners is not None
    with torch.no_grad():
        y0 = record.y0
        top = torch.maximum(y, y0)
        shares = torch.stack([top - y0, y - top])
        ref_winners = record.winners.expand_as(winners)
        dx = call.x - record.x0
    out = _MaxPoolMultiplier.apply(call.x, (y,), shares, winners, ref_winners, dx)
    return (out, winners) if wanted else out


def _normalization(call: Call, record: Record) -> Tensor:
    """The normalization decomposed into exact steps (see the module docstring)."""
    parts = call.options
    view: Callable[[Tensor], Tensor] = parts["view"]
    eps: float = parts["eps"]
    x, x0 = call.x, record.x0
    v, v0 = view(x), view(x0)
    if parts["center"]:
        c = v - v.mean(-1, keepdim=True)
        c0 = v0 - v0.mean(-1, keepdim=True)
    else:
        c, c0 = v, v0
    square = product(c, c, c0, c0)
    var = square.mean(-1, keepdim=True)
    var0 = (c0 * c0).mean(-1, keepdim=True)

    def inverse_std(t: Tensor) -> Tensor:
        return torch.rsqrt(t + eps)

    s = rescale(var, var0, inverse_std(var0), inverse_std)
    normalized = product(c, s, c0, inverse_std(var0)).reshape(x.shape)
    y: Tensor = parts["affine"](normalized)
    with torch.no_grad():
        exact = call.apply(x.detach())
    # the model's own value, with the decomposition's multipliers
    return y + (exact - y.detach())
