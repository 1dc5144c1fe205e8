"""The one hook engine: every feature that needs activations, gradients or modified
rectifier backward passes goes through here.

Two parts, each a context manager that undoes everything it did in ``finally``:

* :class:`Recorder` records the output of chosen modules at every call (a module called
  several times, like the shared ``relu`` of torchvision's ResNet blocks, gives several
  records). The recorded tensor is the module's own output; downstream layers receive a
  clone, so a later in-place op (``ReLU(inplace=True)``) cannot overwrite what was recorded
  and the gradient with respect to the record is the gradient with respect to the layer
  output.
* :class:`RectifierMode` routes every rectifier call made during the forward pass —
  ``nn.ReLU`` (in place or not, shared or not), ``F.relu``, ``torch.relu``, ``Tensor.relu_``,
  ``nn.ReLU6``/``F.relu6``, ``F.hardtanh`` and ``clamp`` with a lower bound of 0 — through
  an autograd function whose backward is given by a :class:`RectifierRule`. It is the
  interception engine (:mod:`cnnlens._engine`) with one rule: nothing is attached to the
  user's model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._engine import Engine, Rule, RuleSet, gradient_rules
from ._ops import Call, Kind

__all__ = [
    "Recorder",
    "RectifierCallRule",
    "RectifierMode",
    "RectifierRule",
    "count_hooks",
]


class Recorder:
    """Record outputs of ``modules`` on every call while the context is open.

    ``records[module]`` is a list with one tensor per call, in call order. With
    ``detach=True`` (activations only, no gradients needed) the records are detached clones.
    With ``leaf=True`` each record is a new autograd leaf that requires grad and the rest of
    the forward pass is computed from it: gradients with respect to the record are exact and
    the backward pass stops there (nothing is propagated to the input or to earlier layers).
    """

    def __init__(
        self, modules: Iterable[nn.Module], *, detach: bool = False, leaf: bool = False
    ) -> None:
        self.modules: list[nn.Module] = list(modules)
        self.detach = detach
        self.leaf = leaf
        self.records: dict[nn.Module, list[Tensor]] = {m: [] for m in self.modules}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"cannot record {type(module).__name__}: its output is "
                f"{type(output).__name__}, not a tensor"
            )
        if self.detach:
            self.records[module].append(output.detach().clone())
            return None
        if self.leaf:
            output = output.detach().requires_grad_(True)
        self.records[module].append(output)
        # Downstream code gets a copy so in-place ops cannot alter the record.
        return output.clone()

    def __enter__(self) -> Recorder:
        try:
            for module in self.modules:
                self._handles.append(module.register_forward_hook(self._hook))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last(self, module: nn.Module) -> Tensor:
        """The record of the module's most recent call."""
        calls = self.records[module]
        if not calls:
            raise RuntimeError(f"{type(module).__name__} was not called during the forward pass")
        return calls[-1]

    def clear(self) -> None:
        for calls in self.records.values():
            calls.clear()


class RectifierRule:
    """How gradients pass backwards through a rectifier y = clip(x, 0, upper).

    ``backward(x, grad_out)`` returns the gradient for ``x``; ``x`` is the rectifier's input.
    The default is the true gradient. ``upper`` is the upper clip (ReLU6) or ``None``; the
    rule sees the gradient already multiplied by the upper clip's mask, which autograd
    would apply for a plain ReLU6 (the upper bound is not treated as a rectifier).

    A rule that only looks at where its first argument is positive sets ``output_only``:
    it is then given the rectifier's output y instead of x (y > 0 exactly where x > 0), so
    in-place rectifier calls stay in place and no extra tensor is kept for the backward pass.
    """

    output_only: bool = False

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        return grad_out * (x > 0).to(grad_out.dtype)

    def clipped(self, x: Tensor, grad_out: Tensor, upper: float) -> Tensor:
        """The gradient at y = clip(x, 0, ``upper``): the upper clip's mask (as autograd
        applies it), then :meth:`backward`. Rules override it to fuse the two."""
        return self.backward(x, grad_out.masked_fill(x >= upper, 0.0))


class _Rectify(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, upper: float | None, rule: RectifierRule, inplace: bool
    ) -> Tensor:
        ctx.upper = upper
        ctx.rule = rule
        if not rule.output_only:
            ctx.save_for_backward(x)
            return x.clamp(min=0.0) if upper is None else x.clamp(0.0, upper)
        if inplace:
            y = x.clamp_(min=0.0) if upper is None else x.clamp_(0.0, upper)
            ctx.mark_dirty(y)
        else:
            y = x.clamp(min=0.0) if upper is None else x.clamp(0.0, upper)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        # the saved tensor is x, or y for output-only rules: y < upper exactly where x < upper
        (saved,) = ctx.saved_tensors
        rule: RectifierRule = ctx.rule
        if ctx.upper is None:
            return rule.backward(saved, grad_out), None, None, None
        return rule.clipped(saved, grad_out, ctx.upper), None, None, None


class RectifierCallRule(Rule):
    """The engine rule that routes a rectifier call through ``rule``'s backward pass.

    In-place rectifiers (``inplace=True``, ``relu_``) stay in place for rules with
    ``output_only``; for other rules they are computed out of place (the returned tensor is
    a new one: library code uses the returned value, torchvision does), since an in-place
    write would break the saved input the rule needs.
    """

    def __init__(self, rule: RectifierRule, name: str = "rectifier rule") -> None:
        self.rule = rule
        self.name = name

    def __call__(self, call: Call) -> Any:
        return _Rectify.apply(call.x, call.options["upper"], self.rule, call.inplace)


class RectifierMode(Engine):
    """Route every rectifier call inside the context through ``rule``'s backward pass;
    every other operation keeps its gradient. ``calls`` counts the rectifier calls."""

    def __init__(self, rule: RectifierRule) -> None:
        rules = gradient_rules(rectifier=RectifierCallRule(rule))
        super().__init__(RuleSet("rectifier", rules), warn=False)
        self.rule = rule

    @property
    def calls(self) -> int:
        return self.counts[Kind.RECTIFIER]


def count_hooks(module: nn.Module) -> int:
    """Total number of hooks registered on ``module`` and its submodules (for leak checks)."""
    total = 0
    for m in module.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            total += len(getattr(m, attr, {}))
    for p in module.parameters():
        total += len(p._backward_hooks or {})
    return total
