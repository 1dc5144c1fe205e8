"""The LRP driver: one forward pass under a ``TorchFunctionMode`` and one backward pass.

The forward pass computes exactly what the model computes, but routes each call that LRP
treats specially through an autograd function whose *backward* redistributes relevance
instead of differentiating: the tensor flowing backwards is the relevance itself, and the
"gradient" arriving at the input is the input relevance. Nothing is attached to the user's
model; the mode is left in ``finally``.

Intercepted calls:

* ``F.conv2d`` / ``F.linear`` on an activation: the composite's rule for that layer. The rule's
  modified forward passes run lazily in backward, so the forward pass costs what the model's
  does.
* ``F.batch_norm`` (eval) on the output of the conv/linear call just made: the pair becomes one
  node with folded parameters (:mod:`.canonizers`), whose forward value is the BatchNorm's own
  output. Any other batch norm passes relevance through, as zennit's composites do.
* rectifiers (``ReLU``, ``ReLU6``, ``F.relu``, ``relu_``, ``hardtanh(0, x)``, shared or
  functional): relevance passes unchanged. In-place calls are computed out of place.
* sums of two activations (``a + b``, ``a += b``, ``torch.add``, ``a - b``): relevance split in
  proportion to each term, ``R_a = a / stab(a + b) R``. In-place additions are computed out of
  place; the model must use the returned value (``+=`` does).
* average pooling (``avg_pool1/2/3d``, ``adaptive_avg_pool1/2/3d``, ``mean``): in proportion to
  each input's contribution.

Everything else (max pooling, concatenation, padding, reshaping, dropout in eval mode) keeps
its gradient, which redistributes relevance exactly (winner takes all, split by position).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..._hooks import _relu_args, eval_mode, frozen_parameters
from ...errors import InputError
from ...targets import Target
from ._affine import Affine, conv2d_call, linear_call
from .canonizers import batch_norm_call, fold_batch_norm
from .composites import Composite
from .rules import AffineRule, divide

__all__ = ["Flow", "LRPMode", "LRPResult", "relevance"]


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
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        layer: Affine,
        rule: AffineRule,
        run: _Run,
        compute: Callable[[], Tensor] | None,
    ) -> Tensor:
        z = layer.forward(x, layer.weight, layer.bias) if compute is None else compute()
        # The output is kept only for rules that need it: a later in-place op on it (an
        # in-place ReLU) would otherwise invalidate it.
        ctx.uses_output = rule.uses_output
        if rule.uses_output:
            ctx.save_for_backward(x, z)
        else:
            ctx.save_for_backward(x)
        ctx.layer, ctx.rule, ctx.run = layer, rule, run
        return z

    @staticmethod
    def backward(ctx: Any, upper: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        x, z = ctx.saved_tensors if ctx.uses_output else (*ctx.saved_tensors, None)
        lower = ctx.rule.relevance(ctx.layer, x, z, upper)
        ctx.run.log(ctx.layer.name, ctx.rule.name, upper, lower)
        return lower, None, None, None, None


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
        lower = back.mul_(x)
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


_ADDS: dict[Callable[..., Any], float] = {
    Tensor.__add__: 1.0,
    Tensor.__radd__: 1.0,
    Tensor.__iadd__: 1.0,
    Tensor.add: 1.0,
    Tensor.add_: 1.0,
    torch.add: 1.0,
    Tensor.__sub__: -1.0,
    Tensor.__isub__: -1.0,
    Tensor.sub: -1.0,
    Tensor.sub_: -1.0,
    torch.sub: -1.0,
}
_POOLS: frozenset[Callable[..., Any]] = frozenset(
    {
        F.avg_pool1d,
        F.avg_pool2d,
        F.avg_pool3d,
        F.adaptive_avg_pool1d,
        F.adaptive_avg_pool2d,
        F.adaptive_avg_pool3d,
        torch.mean,
        Tensor.mean,
    }
)


def _activation(value: object) -> bool:
    return isinstance(value, Tensor) and value.requires_grad and value.is_floating_point()


class LRPMode(TorchFunctionMode):
    """Route the calls of one forward pass through LRP nodes (see the module docstring)."""

    def __init__(self, composite: Composite, names: dict[int, str], run: _Run) -> None:
        super().__init__()
        self.composite = composite
        self.names = names
        self.run = run
        self.first_open = composite.first is not None
        self.layers = 0
        self._last: tuple[Tensor, Tensor, Affine, AffineRule] | None = None
        # ids of the tensors LRP nodes keep for backward: in-place writes must spare them
        self._kept: set[int] = set()

    def _keep(self, *tensors: Tensor) -> None:
        self._kept.update(id(t) for t in tensors)

    def _name(self, tensor: Tensor, fallback: str) -> str:
        return self.names.get(id(tensor), f"{fallback}#{self.layers}")

    def _affine(self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        parse = conv2d_call if func is F.conv2d else linear_call
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        name = (
            self._name(weight, "conv2d" if func is F.conv2d else "linear")
            if isinstance(weight, Tensor)
            else "?"
        )
        parsed = parse(args, kwargs, name)
        if parsed is None or not _activation(parsed[0]):
            return func(*args, **kwargs)
        x, layer = parsed
        self.layers += 1
        rule: AffineRule | None = None
        if self.first_open:
            rule = self.composite.first_rule(layer.kind)
            if rule is not None:
                self.first_open = False
                rule.check(x)
        if rule is None:
            rule = self.composite.rule_for(layer.kind)
        out: Tensor = _AffineNode.apply(x, layer, rule, self.run, None)
        self._keep(x)
        if rule.uses_output:
            self._keep(out)
        self._last = (out, x, layer, rule)
        return out

    def _batch_norm(
        self, func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
    ) -> Any:
        if not args or not _activation(args[0]):
            return func(*args, **kwargs)
        x: Tensor = args[0]
        bn = batch_norm_call(args, kwargs)
        last = self._last
        if bn is not None and last is not None and last[0] is x:
            _, source, layer, rule = last
            if layer.kind == "conv" or x.dim() == 2:
                bn_weight = bn[3] if bn[3] is not None else bn[1]
                folded = fold_batch_norm(
                    layer, bn, f"{layer.name}+{self._name(bn_weight, 'batch_norm')}"
                )
                if folded is not None:
                    self._last = None
                    detached = x.detach()

                    def compute() -> Tensor:
                        return func(detached, *args[1:], **kwargs)

                    out: Tensor = _AffineNode.apply(source, folded, rule, self.run, compute)
                    if rule.uses_output:
                        self._keep(out)
                    return out

        def apply(t: Tensor) -> Tensor:
            return func(t, *args[1:], **kwargs)

        return _PassNode.apply(x, apply, False)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d or func is F.linear:
            return self._affine(func, args, kwargs)
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        alpha = _ADDS.get(func)
        if alpha is not None and len(args) >= 2:
            a, b = args[0], args[1]
            if _activation(a) and _activation(b):
                scale = float(kwargs.get("alpha", 1.0)) * alpha
                self._keep(a, b)
                return _SumNode.apply(a, b, scale, self.composite.stabilizer, self.run)
            return func(*args, **kwargs)
        if func in _POOLS and args and _activation(args[0]):
            rest, options = tuple(args[1:]), dict(kwargs)

            def pool(t: Tensor) -> Tensor:
                return func(t, *rest, **options)

            name = getattr(func, "__name__", "pool")
            self._keep(args[0])
            return _ProportionalNode.apply(args[0], pool, self.composite.stabilizer, self.run, name)
        matched = _relu_args(func, tuple(args), kwargs)
        if matched is not None and _activation(matched[0]):
            x, upper = matched[0], matched[1]
            # In place as asked, unless an LRP node keeps x (or x is the input leaf).
            inplace = bool(matched[2]) if len(matched) > 2 else False
            inplace = inplace and not x.is_leaf and id(x) not in self._kept

            def rectify(t: Tensor) -> Tensor:
                if inplace:
                    return t.clamp_(min=0.0) if upper is None else t.clamp_(0.0, upper)
                return t.clamp(min=0.0) if upper is None else t.clamp(0.0, upper)

            return _PassNode.apply(x, rectify, inplace)
        return func(*args, **kwargs)


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
) -> LRPResult:
    """Run LRP on ``module`` for ``inputs``: the relevance put in at the output is
    ``output * d score / d output`` (the target logit for class targets)."""
    run = _Run(record)
    x = inputs.detach().requires_grad_(True)
    with eval_mode(module), frozen_parameters(module), torch.enable_grad():
        with LRPMode(composite, _parameter_names(module), run):
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
