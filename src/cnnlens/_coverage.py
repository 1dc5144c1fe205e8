"""``cnnlens.coverage``: which rule each operation of a model gets from a method."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._engine import GRADIENT, Engine, Met, Rule, RuleSet, RuleWarning, recording
from ._guard import guard
from ._ops import Kind
from .attribution.api import check_inputs, explain, method_spec
from .attribution.occlusion import incremental_note
from .targets import TargetSpec

__all__ = ["Coverage", "CoverageEntry", "coverage"]

CoverageEntry = Met
"""One operation call: ``module``, ``op``, ``kind`` and ``rule`` (``None``: no rule)."""


@dataclass(frozen=True)
class Coverage:
    """The operations ``method`` met in one forward pass of the model, in call order, and
    the rule each got. ``entries`` lists every call of a registered operation whose input
    depends on the model input (reshapes, concatenations and other operations whose
    gradient every method uses are not listed)."""

    method: str
    entries: tuple[CoverageEntry, ...]
    notes: tuple[str, ...] = ()
    """What else the method does on this model (occlusion: the incremental engine's plan)."""

    @property
    def unhandled(self) -> tuple[CoverageEntry, ...]:
        """The calls the method has no rule for (it warns about them)."""
        return tuple(e for e in self.entries if e.rule is None)

    @property
    def complete(self) -> bool:
        """Whether every operation met got a rule."""
        return not self.unhandled

    def summary(self) -> dict[tuple[str, str], int]:
        """Number of calls per (kind, rule); an unhandled rule reads ``"none"``."""
        counts: dict[tuple[str, str], int] = {}
        for e in self.entries:
            key = (e.kind, e.rule or "none")
            counts[key] = counts.get(key, 0) + 1
        return counts


class _Named(Rule):
    def __init__(self, name: str) -> None:
        self.name = name


def coverage(
    model: Any,
    method: str,
    inputs: Tensor,
    *,
    target: TargetSpec = None,
    layer: nn.Module | str | None = None,
    **options: Any,
) -> Coverage:
    """Run ``method`` on ``inputs`` (as :func:`cnnlens.explain` would, same options) and
    list the operations its forward pass met and the rule each got. Methods that do not
    change how the model is differentiated (saliency, integrated gradients, CAM methods,
    ...) give every operation the plain gradient (occlusion: the forward pass only)."""
    spec = method_spec(method)
    inputs = check_inputs(inputs)
    with guard(model, needs="coverage") as module:
        if "strict" in spec.options:
            with recording() as record, warnings.catch_warnings():
                warnings.simplefilter("ignore", RuleWarning)
                explain(model, inputs, method, target=target, layer=layer, **options)
            if record.engaged:
                return Coverage(method, tuple(record.met))
        name = "forward only" if spec.kind == "occlusion" else GRADIENT.name
        plain = RuleSet(method, dict.fromkeys(Kind, _Named(name)))
        engine = Engine(plain, model=module, record=True, warn=False)
        with torch.enable_grad(), engine:
            module(inputs.detach().requires_grad_(True))
        notes: tuple[str, ...] = ()
        if spec.kind == "occlusion":
            notes = (
                incremental_note(
                    module,
                    inputs,
                    options.get("window"),
                    options.get("incremental"),
                    options.get("stride"),
                ),
            )
    return Coverage(method, tuple(engine.met), notes)
