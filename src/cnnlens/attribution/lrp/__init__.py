"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019): rules
(:mod:`.rules`), composites (:mod:`.composites`), BatchNorm folding (:mod:`.canonizers`) and
the driver (:mod:`.driver`) that runs them on an unmodified model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import InputError
from ...targets import Target
from ..api import MethodResult, MethodSpec
from .composites import COMPOSITES, Composite, make_composite
from .driver import Flow, LRPResult, relevance

__all__ = ["COMPOSITES", "METHODS", "Composite", "Flow", "LRPResult", "make_composite", "relevance"]

DEFAULT_COMPOSITE = "epsilon_plus_flat"


def _number(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"lrp: {key} must be a number, got {value!r}")
    return float(value)


def _bound(options: dict[str, Any], key: str) -> float | Tensor | None:
    value = options.get(key)
    if value is None or isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"lrp: {key} must be a number or a tensor, got {value!r}")
    return float(value)


def _lrp(
    module: nn.Module, inputs: Tensor, target: Target, layer: nn.Module | None, **options: Any
) -> MethodResult:
    rules = make_composite(
        str(options.get("composite", DEFAULT_COMPOSITE)),
        epsilon_value=_number(options, "epsilon", 1e-6),
        gamma_value=_number(options, "gamma", 0.25),
        stabilizer=_number(options, "stabilizer", 1e-6),
        low=_bound(options, "low"),
        high=_bound(options, "high"),
    )
    result = relevance(module, inputs, target, rules, strict=bool(options.get("strict", False)))
    # What the biases and stabilizers absorbed is reported (with BatchNorm folded in, a
    # trained net's map can hold a tiny share of the score). Every other node conserves
    # relevance, and an operation without a rule is warned about, so it is the score less
    # the map: the same as the per-node flows of ``relevance(record=True)`` (tested), which
    # cost two reductions a node.
    scores = result.scores
    kept = result.relevance.flatten(1).sum(dim=1, dtype=torch.float64)
    absorbed = (scores.to(torch.float64) - kept).to(scores.dtype)
    return MethodResult(result.relevance, {"score": scores, "absorbed": absorbed})


METHODS: dict[str, MethodSpec] = {
    "lrp": MethodSpec(
        fn=_lrp,
        kind="input",
        options=frozenset({"composite", "epsilon", "gamma", "stabilizer", "low", "high", "strict"}),
        summary="layer-wise relevance propagation (composites as in zennit)",
        if_zero=(
            "no relevance reached the input: the score is zero, or biases and stabilizers "
            "absorbed all of it (a logit that is its classifier's bias alone); check the "
            "target, or try another composite"
        ),
    )
}
