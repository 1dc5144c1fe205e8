"""Lower bounds: the arithmetic a method cannot avoid, timed as bare torch calls.

A line that misses its goal raises the question whether the goal can be met at all. Each
bound here runs only what any implementation of the method has to compute, with nothing
around it (no rule bookkeeping, no elementwise work, no autograd graph where none is
needed), in the same run as the floor:

* LRP, per composite: the model's forward pass without gradients, then for every
  convolution and dense layer the extra convolutions and transposed convolutions its rule
  needs (:func:`_rule_work`, counted as in ``cnnlens.attribution.lrp.rules``), on the
  layer's real input and shapes, parts stacked as the rules stack them (gamma needs one
  transpose where a rectifier follows the layer and two elsewhere);
* DeepLIFT: the baseline's forward pass (one item, without gradients) and F;
* deconvnet and guided backpropagation (which intercept every call of the forward pass
  with one ``TorchFunctionMode``): F under a mode that passes every call through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from cnnlens.attribution.lrp import make_composite
from cnnlens.attribution.lrp.rules import AffineRule, AlphaBeta, Epsilon, Gamma, Spread, ZBox, ZPlus
from harness import Entry
from peer_entries import Setup

__all__ = ["deeplift_bound", "interception_bound", "lrp_bound"]


# ---- LRP ----------------------------------------------------------------------------------


@dataclass
class _Layer:
    """One convolution or dense call of the forward pass: its module, its input, a
    gradient shaped like its output, whether the input has negative entries, and whether
    its output (after a BatchNorm, if one follows) goes into a rectifier, so that only its
    positive outputs can carry relevance."""

    module: nn.Conv2d | nn.Linear
    x: Tensor
    grad: Tensor
    signed: bool
    rectified: bool = False
    stacked: dict[int, Tensor] = field(default_factory=dict)

    def _stacked(self, parts: int) -> Tensor:
        """The weight repeated ``parts`` times along the input channels, made once (the
        rules keep their stacked parts too)."""
        if parts not in self.stacked:
            w = self.module.weight
            self.stacked[parts] = torch.cat([w] * parts, dim=1) if parts > 1 else w
        return self.stacked[parts]

    def conv(self, x: Tensor) -> None:
        if isinstance(self.module, nn.Linear):
            torch.nn.functional.linear(x, self.module.weight)
        else:
            self.module._conv_forward(x, self.module.weight, None)

    def transpose(self, parts: int) -> None:
        """The transposed layer on ``parts`` weight parts stacked along the input channels
        (as the rules stack them: one call), or one call per part for a grouped layer."""
        w = self.module.weight
        if isinstance(self.module, nn.Linear):
            torch.mm(self.grad.flatten(0, -2), self._stacked(parts))
            return
        m = self.module
        if m.groups != 1 and parts > 1:
            for _ in range(parts):
                self._conv_transpose(w, self.x)
            return
        wide = self._stacked(parts)
        like = (
            self.x
            if parts == 1
            else self.x.new_empty((self.x.shape[0], w.shape[1] * parts, *self.x.shape[2:]))
        )
        self._conv_transpose(wide, like)

    def _conv_transpose(self, weight: Tensor, like: Tensor) -> None:
        m = self.module
        assert isinstance(m, nn.Conv2d) and isinstance(m.padding, tuple)
        torch.ops.aten.convolution_backward(
            self.grad,
            like,
            weight,
            None,
            list(m.stride),
            list(m.padding),
            list(m.dilation),
            False,
            [0, 0],
            m.groups,
            (True, False, False),
        )


def _rule_work(rule: AffineRule, signed: bool, rectified: bool) -> tuple[int, tuple[int, ...]]:
    """(convolutions beyond the model's own, transposes as parts stacked per call) of
    ``rule`` on one layer, as ``cnnlens.attribution.lrp.rules`` computes it."""
    if isinstance(rule, Epsilon):
        return 0, (1,)
    if isinstance(rule, ZPlus):
        return (2, (2,)) if signed else (1, (1,))
    if isinstance(rule, AlphaBeta):  # its convolutions replace the model's
        return (3, (2, 2)) if signed else (1, (1, 1))
    if isinstance(rule, Gamma):  # one transpose when relevance sits on z > 0 only
        return (1, (1,)) if rectified and not signed else (1, (1, 1))
    if isinstance(rule, ZBox):
        return 2, (3,)
    if isinstance(rule, Spread):  # its convolution runs on one item of ones
        return 0, (1,)
    raise TypeError(f"no bound for the rule {rule.name}")


_LAYERS: dict[int, tuple[Setup, list[_Layer]]] = {}


def _layers(s: Setup) -> list[_Layer]:
    """The convolution and dense calls of ``s``'s forward pass, in execution order (made
    once per setup and kept: every layer's input, shared by the LRP lines)."""
    if id(s) not in _LAYERS:
        found: list[_Layer] = []
        # The outputs of each layer (and of a BatchNorm on it), kept alive for the pass so
        # that their ids stay theirs; one changed in place since (a residual ``+=``) is no
        # longer the layer's output.
        outputs: dict[int, tuple[Tensor, _Layer]] = {}

        def source(t: Tensor) -> _Layer | None:
            kept = outputs.get(id(t))
            return kept[1] if kept is not None and kept[0]._version == 0 else None

        def hook(module: nn.Module, inputs: tuple[Any, ...], out: Tensor) -> None:
            assert isinstance(module, (nn.Conv2d, nn.Linear))
            x = inputs[0].detach()
            found.append(_Layer(module, x, torch.randn_like(out), bool((x < 0).any())))
            outputs[id(out)] = (out, found[-1])

        def norm_hook(module: nn.Module, inputs: tuple[Any, ...], out: Tensor) -> None:
            layer = source(inputs[0])
            if layer is not None:
                outputs[id(out)] = (out, layer)

        def rectifier_hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            layer = source(inputs[0])
            if layer is not None:
                layer.rectified = True

        handles = [
            m.register_forward_hook(hook)
            for m in s.module.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        handles += [
            m.register_forward_hook(norm_hook)
            for m in s.module.modules()
            if isinstance(m, nn.BatchNorm2d)
        ]
        handles += [
            m.register_forward_pre_hook(rectifier_hook)
            for m in s.module.modules()
            if isinstance(m, (nn.ReLU, nn.ReLU6))
        ]
        try:
            with torch.no_grad():
                s.module(s.x)
        finally:
            for handle in handles:
                handle.remove()
        if any(
            isinstance(f.module, nn.Conv2d) and isinstance(f.module.padding, str) for f in found
        ):
            raise ValueError("the LRP bound needs numeric convolution padding")
        _LAYERS[id(s)] = (s, found)
    return _LAYERS[id(s)][1]


def _plan(s: Setup, composite: str) -> list[tuple[_Layer, int, tuple[int, ...], bool]]:
    """Per layer: the layer, its extra convolutions, its transposes (parts per call) and
    whether its rule's convolution runs on one item (flat, w²)."""
    rules = make_composite(composite)
    plan = []
    first_open = rules.first is not None
    for layer in _layers(s):
        kind = "linear" if isinstance(layer.module, nn.Linear) else "conv"
        rule = rules.first_rule(kind) if first_open else None
        if rule is not None:
            first_open = False
        else:
            rule = rules.rule_for(kind)
        convs, parts = _rule_work(rule, layer.signed, layer.rectified)
        plan.append((layer, convs, parts, isinstance(rule, Spread)))
    return plan


def lrp_bound(s: Setup, composite: str) -> Entry:
    """The model's forward pass and the convolution work of ``composite``'s rules (the
    plan is made at the first call: the warm-up round)."""
    plans: list[list[tuple[_Layer, int, tuple[int, ...], bool]]] = []

    def run() -> None:
        if not plans:
            plans.append(_plan(s, composite))
        with torch.no_grad():
            s.module(s.x)
            for layer, convs, parts, one_item in plans[0]:
                if one_item:
                    layer.conv(layer.x[:1])
                for _ in range(convs):
                    layer.conv(layer.x)
                for count in parts:
                    layer.transpose(count)

    return Entry("forward + the rules' convolutions", run)


# ---- DeepLIFT and the interception engine -------------------------------------------------


def deeplift_bound(s: Setup, floor: Callable[[], object]) -> Entry:
    """The (shared, one-item) zero baseline's forward pass, then ``floor`` (F)."""
    reference = torch.zeros_like(s.x[:1])

    def run() -> object:
        with torch.no_grad():
            s.module(reference)
        return floor()

    return Entry("baseline forward + F", run)


class _PassThrough(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return func(*args, **(kwargs or {}))


def interception_bound(s: Setup) -> Entry:
    """F with every torch call of the forward pass intercepted and passed through."""

    def run() -> Tensor:
        with _PassThrough():
            x = s.x.detach().requires_grad_()
            out = s.module(x)
        (grad,) = torch.autograd.grad(out.gather(1, s.target.view(-1, 1)).sum(), x)
        return grad

    return Entry("F, every call intercepted", run)
