"""The LRP driver: one forward pass under the interception engine and one backward pass.

The forward pass computes exactly what the model computes, but routes each call that LRP
treats specially through an autograd function whose *backward* redistributes relevance
instead of differentiating: the tensor flowing backwards is the relevance itself, and the
"gradient" arriving at the input is the input relevance. Nothing is attached to the user's
model; the engine (:mod:`cnnlens._engine`) is left in ``finally``. The rules, by kind of
operation (:func:`lrp_rules`):

* convolutions / dense layers (``conv2d``, ``linear``) on an activation: the composite's rule
  for that layer, run in two halves (:class:`~.rules.AffineRule`): its forward half gives
  the output (the model's, or for alpha-beta the sum of the two modified convolutions it
  needs anyway) and keeps what its backward half needs; modified convolutions that only
  the backward half needs run there.
* an eval-mode batch norm on the output of the conv/linear call just made: the pair becomes
  one node with folded parameters (:mod:`.canonizers`), whose forward value is the
  BatchNorm's own output; what the rule's forward half kept for the layer alone is handed
  on (alpha-beta's products are rescaled, not rerun). Any other batch norm passes
  relevance through, as zennit's composites do.
* rectifiers and every other elementwise activation (ReLU, ReLU6, SiLU, GELU, Hardswish,
  sigmoid, tanh, ...; any call form): relevance passes unchanged, as in zennit. In-place
  calls stay in place unless an LRP node keeps their input.
* products with a constant (layer scales, masks, numbers): pass (the epsilon rule on a
  diagonal map).
* products of two activations: a gate — the factor broadcast over the other (a
  squeeze-excitation scale) or the output of a sigmoid-type activation — is held constant
  and the signal gets all the relevance (Arras et al. 2017); a product of two signals
  splits it evenly. A quotient a / b holds the divisor constant.
* layer, group, instance and RMS norm: the normalizing scale σ is held constant (Ali et al.
  2022), so the map is linear (centring and weight) and gets the epsilon rule; the bias
  absorbs its share, which the flows record.
* sums of two activations (``a + b``, ``a += b``, ``torch.add``, ``a - b``): relevance split in
  proportion to each term, ``R_a = a / stab(a + b) R``.
* average pooling, ``mean`` and ``sum``: in proportion to each input's contribution.

Max pooling, max over a dimension, concatenation, padding, reshaping and dropout in eval
mode keep their gradient, which redistributes relevance exactly (winner takes all, split by
position). Operations with no rule (softmax, batch statistics, a weight computed from the
input) are named in a :class:`~cnnlens._engine.RuleWarning` (``strict=True``: an error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..._engine import GRADIENT, Engine, Rule, RuleSet
from ..._guard import guard
from ..._ops import Call, Kind
from ...errors import InputError
from ...targets import Target
from ._affine import Affine, conv2d_call, linear_call
from ._params import Derived, derived_for
from .canonizers import batch_norm_call, fold_batch_norm
from .composites import Composite
from .rules import AffineRule, Saved, divide

__all__ = ["Flow", "LRPResult", "lrp_rules", "relevance"]


@dataclass(frozen=True)
class Flow:
    """Relevance into and out of one node during the backward pass, summed per item: what a
    layer's bias and stabilizer absorbed is ``upper - lower``."""

    name: str
    rule: str
    upper: Tensor
    lower: Tensor


@dataclass
class _Run:
    """State shared by the nodes of one LRP run."""

    record: bool
    flows: list[Flow] = field(default_factory=list)

    def log(self, name: str, rule: str, upper: Tensor, lower: Tensor) -> None:
        if self.record:
            self.flows.append(Flow(name, rule, _per_item(upper), _per_item(lower)))


def _per_item(t: Tensor) -> Tensor:
    return t.detach().flatten(1).sum(dim=1) if t.dim() > 1 else t.detach().clone()


class _AffineNode(torch.autograd.Function):
    """An affine layer under its rule: the rule's forward half gives the output (and what
    it keeps, also written to ``kept`` for a BatchNorm folded in next), its backward half
    the input relevance."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        layer: Affine,
        rule: AffineRule,
        run: _Run,
        plain: Callable[[Tensor], Tensor],
        prior: Saved | None,
        kept: list[Saved],
    ) -> Tensor:
        z, saved = rule.forward(layer, x, plain, prior)
        # (A rule keeps its output only when it says so, and the driver then protects it
        # from in-place writes such as an in-place ReLU.)
        ctx.save_for_backward(*saved)
        ctx.layer, ctx.rule, ctx.run = layer, rule, run
        kept.append(saved)
        return z

    @staticmethod
    def backward(
        ctx: Any, upper: Tensor
    ) -> tuple[Tensor | None, None, None, None, None, None, None]:
        lower = ctx.rule.backward(ctx.layer, ctx.saved_tensors, upper)
        ctx.run.log(ctx.layer.name, ctx.rule.name, upper, lower)
        return lower, None, None, None, None, None, None


class _PassNode(torch.autograd.Function):
    """An elementwise layer ``fn``; with ``inplace`` it writes into ``x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
        return fn(x)

    @staticmethod
    def backward(ctx: Any, upper: Tensor) -> tuple[Tensor, None, None]:
        return upper, None, None


class _ProportionalNode(torch.autograd.Function):
    """A parameter-free linear map ``fn``: R_in = x * fn^T(R / stab(fn(x)))."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor], eps: float, run: _Run, name: str
    ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.fn, ctx.eps, ctx.run, ctx.name = fn, eps, run, name
        return fn(x)

    @staticmethod
    def backward(ctx: Any, upper: Tensor) -> tuple[Tensor, None, None, None, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            z = ctx.fn(probe)
            (back,) = torch.autograd.grad(z, probe, divide(upper, z.detach(), ctx.eps))
        lower = back * x  # (a sum's backward is an expanded view: not in place)
        ctx.run.log(ctx.name, "proportional", upper, lower)
        return lower, None, None, None, None


class _SumNode(torch.autograd.Function):
    """``a + alpha * b`` of two activations: each term gets relevance in proportion to it."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, alpha: float, eps: float, run: _Run) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.alpha, ctx.eps, ctx.run = alpha, eps, run
        return torch.add(a, b, alpha=alpha)

    @staticmethod
    def backward(ctx: Any, upper: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        a, b = ctx.saved_tensors
        g = divide(upper, torch.add(a, b, alpha=ctx.alpha), ctx.eps)
        ra = (a * g).sum_to_size(a.shape)
        rb = g.mul_(b).sum_to_size(b.shape) if g.shape == b.shape else (b * g).sum_to_size(b.shape)
        if ctx.alpha != 1:
            rb = rb * ctx.alpha
        if ctx.run.record:
            ctx.run.log("sum", "proportional", upper, _per_item(ra) + _per_item(rb))
        return ra, rb, None, None, None


class _ShareNode(torch.autograd.Function):
    """``fn()`` of two operands ``a`` and ``b`` (``b`` may be a constant): relevance goes
    to each operand in a fixed share of the output relevance, summed to its shape."""

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, b: Tensor | None, fn: Callable[[], Tensor], shares: tuple[float, float]
    ) -> Tensor:
        ctx.shapes = (a.shape, None if b is None else b.shape)
        ctx.shares = shares
        return fn()

    @staticmethod
    def backward(ctx: Any, upper: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        (sa, sb), (share_a, share_b) = ctx.shapes, ctx.shares
        ra = None if share_a == 0 else (upper * share_a).sum_to_size(sa)
        rb = None if sb is None or share_b == 0 else (upper * share_b).sum_to_size(sb)
        return ra, rb, None, None


class _NormNode(torch.autograd.Function):
    """A normalization with its scale σ held constant (Ali et al. 2022): the centring and
    the affine weight are a linear map ``lin`` of x (the bias added after), and relevance
    follows the epsilon rule on it, R_in = x · lin^T(R / stab(y)) with y the output."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, call: Call, lin: Callable[[Tensor], Tensor], eps: float, run: _Run
    ) -> Tensor:
        y: Tensor = call.apply(x)
        ctx.save_for_backward(x, y)
        ctx.lin, ctx.eps, ctx.run, ctx.name = lin, eps, run, call.op
        return y

    @staticmethod
    def backward(ctx: Any, upper: Tensor) -> tuple[Tensor, None, None, None, None]:
        x, y = ctx.saved_tensors
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            (back,) = torch.autograd.grad(ctx.lin(probe), probe, divide(upper, y, ctx.eps))
        lower = back * x
        ctx.run.log(ctx.name, "sigma-detached epsilon", upper, lower)
        return lower, None, None, None, None


def _plain(layer: Affine) -> Callable[[Tensor], Tensor]:
    """The layer as the model runs it."""

    def run(x: Tensor) -> Tensor:
        return layer.forward(x, layer.weight, layer.bias)

    return run


def _activation(value: object) -> bool:
    return isinstance(value, Tensor) and value.requires_grad and value.is_floating_point()


@dataclass
class _State:
    """What the LRP rules of one forward pass share."""

    composite: Composite
    names: dict[int, str]
    run: _Run
    first_open: bool
    derived: Derived
    layers: int = 0
    # the last affine node: its output, input, layer, rule and what the rule kept
    last: tuple[Tensor, Tensor, Affine, AffineRule, Saved] | None = None
    # ids of the tensors LRP nodes keep for backward: in-place writes must spare them
    kept: set[int] = field(default_factory=set)

    def keep(self, *tensors: Tensor) -> None:
        self.kept.update(id(t) for t in tensors)

    def name(self, tensor: Tensor, fallback: str) -> str:
        return self.names.get(id(tensor), f"{fallback}#{self.layers}")


class _LRPRule(Rule):
    def __init__(self, state: _State) -> None:
        self.state = state


class _AffineRule(_LRPRule):
    """Convolutions and dense layers: the composite's rule for the layer."""

    name = "composite rule"

    def describe(self, call: Call) -> str | None:
        return None if call.op not in ("conv2d", "linear") else self.name

    def __call__(self, call: Call) -> Any:
        if call.op not in ("conv2d", "linear"):
            return NotImplemented
        state = self.state
        parse = conv2d_call if call.op == "conv2d" else linear_call
        weight = call.bound["weight"]
        parsed = parse(call.bound, state.name(weight, call.op), state.derived)
        if parsed is None:
            return NotImplemented
        x, layer = parsed
        state.layers += 1
        rule: AffineRule | None = None
        if state.first_open:
            rule = state.composite.first_rule(layer.kind)
            if rule is not None:
                state.first_open = False
                rule.check(x)
        if rule is None:
            rule = state.composite.rule_for(layer.kind)
        call.options["rule"] = rule.name
        kept: list[Saved] = []
        out: Tensor = _AffineNode.apply(x, layer, rule, state.run, _plain(layer), None, kept)
        state.keep(x)
        if rule.keeps_output:
            state.keep(out)
        state.last = (out, x, layer, rule, kept[0])
        return out


class _BatchNormRule(_LRPRule):
    """An eval-mode batch norm right after a conv/linear call is folded into it (one
    node, the composite's rule); any other passes relevance through (as zennit)."""

    name = "pass"

    def __call__(self, call: Call) -> Any:
        state = self.state
        x = call.x
        bn = batch_norm_call(call.bound)
        last = state.last
        if bn is not None and last is not None and last[0] is x:
            _, source, layer, rule, prior = last
            if layer.kind == "conv" or x.dim() == 2:
                bn_weight = bn[3] if bn[3] is not None else bn[1]
                folded = fold_batch_norm(
                    layer, bn, f"{layer.name}+{state.name(bn_weight, 'batch_norm')}"
                )
                if folded is not None:
                    state.last = None
                    detached = x.detach()

                    def compute(_source: Tensor) -> Tensor:
                        out: Tensor = call.apply(detached)
                        return out

                    call.options["rule"] = f"folded into the {layer.kind} before ({rule.name})"
                    out: Tensor = _AffineNode.apply(
                        source, folded, rule, state.run, compute, prior, []
                    )
                    if rule.keeps_output:
                        state.keep(out)
                    return out
        return _PassNode.apply(x, call.apply, False)


class _PassRule(_LRPRule):
    """Elementwise activations (rectifiers included): relevance passes unchanged. In
    place as the model asked, unless an LRP node keeps the input (or it is the input)."""

    name = "pass"

    def __call__(self, call: Call) -> Any:
        x = call.x
        inplace = call.inplace and not x.is_leaf and id(x) not in self.state.kept
        if inplace:
            return _PassNode.apply(x, lambda _t: call.run(), True)
        return _PassNode.apply(x, call.apply, False)


class _SumRule(_LRPRule):
    """Sums of two activations: each term in proportion to its contribution."""

    name = "proportional"

    def __call__(self, call: Call) -> Any:
        a, b = call.x, call.other
        assert b is not None
        self.state.keep(a, b)
        return _SumNode.apply(
            a, b, call.options["alpha"], self.state.composite.stabilizer, self.state.run
        )


class _PoolRule(_LRPRule):
    """Average pooling, means and sums: in proportion to each input's contribution."""

    name = "proportional"

    def __call__(self, call: Call) -> Any:
        self.state.keep(call.x)
        return _ProportionalNode.apply(
            call.x, call.apply, self.state.composite.stabilizer, self.state.run, call.op
        )


class _ScaleRule(_LRPRule):
    """A product with a constant (layer scale, a number): the epsilon rule on a diagonal
    map, which is the pass rule."""

    name = "pass"

    def __call__(self, call: Call) -> Any:
        return _ShareNode.apply(call.x, None, lambda: call.apply(call.x), (1.0, 0.0))


class _ProductRule(_LRPRule):
    """A product of two activations. A gate (a squeeze-excitation scale broadcast over the
    signal, or a sigmoid-type output) is held constant and the signal gets all the
    relevance (Arras et al. 2017); a product of two signals splits it evenly."""

    name = "gate held constant"

    def describe(self, call: Call) -> str | None:
        gate = call.options.get("gate")
        return "uniform (½ each)" if gate is None else "signal (gate held constant)"

    def __call__(self, call: Call) -> Any:
        gate = call.options.get("gate")
        shares = (0.5, 0.5) if gate is None else ((0.0, 1.0) if gate == 0 else (1.0, 0.0))
        b = call.other
        assert b is not None
        return _ShareNode.apply(call.x, b, lambda: torch.mul(call.x, b), shares)


class _QuotientRule(_LRPRule):
    """a / b with b depending on the input: the divisor is held constant."""

    name = "signal (divisor held constant)"

    def __call__(self, call: Call) -> Any:
        b = call.other
        assert b is not None
        return _ShareNode.apply(call.x, b, lambda: torch.div(call.x, b), (1.0, 0.0))


class _NormRule(_LRPRule):
    """Layer/group/instance/RMS norm with σ held constant (Ali et al. 2022)."""

    name = "sigma-detached epsilon"

    def __call__(self, call: Call) -> Any:
        parts = call.options
        view: Callable[[Tensor], Tensor] = parts["view"]
        eps_norm: float = parts["eps"]
        x = call.x
        with torch.no_grad():
            v = view(x)
            c = v - v.mean(-1, keepdim=True) if parts["center"] else v
            inv = torch.rsqrt((c * c).mean(-1, keepdim=True) + eps_norm)
        weight_only = parts["weight_only"]

        def lin(t: Tensor) -> Tensor:
            u = view(t)
            if parts["center"]:
                u = u - u.mean(-1, keepdim=True)
            out: Tensor = weight_only((u * inv).reshape(t.shape))
            return out

        self.state.keep(x)
        return _NormNode.apply(x, call, lin, self.state.composite.stabilizer, self.state.run)


def lrp_rules(state: _State) -> RuleSet:
    """LRP's rules by kind (see the module docstring)."""
    passing = _PassRule(state)
    rules: dict[Kind, Rule] = {
        Kind.AFFINE: _AffineRule(state),
        Kind.BATCH_NORM: _BatchNormRule(state),
        Kind.RECTIFIER: passing,
        Kind.ACTIVATION: passing,
        Kind.SUM: _SumRule(state),
        Kind.AVG_POOL: _PoolRule(state),
        Kind.SCALE: _ScaleRule(state),
        Kind.PRODUCT: _ProductRule(state),
        Kind.QUOTIENT: _QuotientRule(state),
        Kind.NORMALIZATION: _NormRule(state),
        Kind.MAX_POOL: GRADIENT,
        Kind.MAX_REDUCE: GRADIENT,
        Kind.DROPOUT: GRADIENT,
    }
    return RuleSet("lrp", rules, lost="relevance is not conserved there")


@dataclass(frozen=True)
class LRPResult:
    """``relevance`` (B, C, H, W) at the input; ``scores`` (B,) the explained scores, which
    is the relevance put in at the output; ``flows`` (with ``record=True``) the relevance
    into and out of every LRP node, in the order the backward pass ran them."""

    relevance: Tensor
    scores: Tensor
    flows: tuple[Flow, ...] = ()

    def absorbed(self) -> Tensor:
        """(B,) relevance absorbed by biases and stabilizers, from ``flows``."""
        total = torch.zeros_like(self.scores)
        for flow in self.flows:
            total = total + (flow.upper - flow.lower)
        return total


def _parameter_names(module: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, sub in module.named_modules():
        for attr in ("weight", "running_mean"):
            value = getattr(sub, attr, None)
            if isinstance(value, Tensor) and id(value) not in names:
                names[id(value)] = name or type(sub).__name__
    return names


def _tensor_leaves(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _tensor_leaves(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in _tensor_leaves(v)]
    return []


def relevance(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    composite: Composite,
    *,
    record: bool = False,
    strict: bool = False,
) -> LRPResult:
    """Run LRP on ``module`` for ``inputs``: the relevance put in at the output is
    ``output * d score / d output`` (the target logit for class targets)."""
    run = _Run(record)
    x = inputs.detach().requires_grad_(True)
    with guard(module, needs="lrp"), torch.enable_grad():
        state = _State(
            composite,
            _parameter_names(module),
            run,
            composite.first is not None,
            derived_for(module),
        )
        with Engine(lrp_rules(state), model=module, strict=strict):
            output = module(x)
        scores = target.score(output)
        leaves = [t for t in _tensor_leaves(output) if t.requires_grad]
        if not leaves:
            raise InputError("lrp: the model output does not depend on the input")
        grads = torch.autograd.grad(scores.sum(), leaves, retain_graph=True, allow_unused=True)
        seeds = [
            torch.zeros_like(t) if g is None else t.detach() * g
            for t, g in zip(leaves, grads, strict=True)
        ]
        (result,) = torch.autograd.grad(leaves, x, seeds, allow_unused=True)
    if result is None:
        result = torch.zeros_like(x)
    return LRPResult(result.detach(), scores.detach(), tuple(run.flows))
