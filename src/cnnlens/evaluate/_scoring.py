"""Scoring modified copies of the inputs: the target, the score kind, batched evaluation."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .._guard import guard
from ..attribution.api import Explanation
from ..errors import InputError
from ..targets import Target, TargetSpec, resolve_target

__all__ = ["Score", "check_score", "copy_scores", "evaluation_target"]

Score = Literal["probability", "logit"]


def check_score(score: str) -> Score:
    if score not in ("probability", "logit"):
        raise InputError(f"score must be 'probability' or 'logit', got {score!r}")
    return score  # type: ignore[return-value]


def evaluation_target(
    module: nn.Module, inputs: Tensor, target: TargetSpec, explanation: object = None
) -> Target:
    """The target to score: ``target``, else the explanation's targets, else each item's top
    class on the unmodified inputs (fixed here, so every copy scores the same class)."""
    if target is None and isinstance(explanation, Explanation) and explanation.targets is not None:
        target = explanation.targets
    resolved = resolve_target(target, inputs.shape[0])
    if resolved.classes is None and not resolved.is_callable:
        with torch.inference_mode(), guard(module):
            resolved.resolve(module(inputs))
    return resolved


def copy_scores(
    module: nn.Module,
    target: Target,
    copies: Tensor,
    items: Tensor,
    score: Score,
    batch_size: int,
) -> Tensor:
    """Scores (N,) of ``copies`` (N, C, H, W); copy n is scored for item ``items[n]``."""
    out = []
    with torch.inference_mode(), guard(module):
        for first in range(0, copies.shape[0], batch_size):
            chunk = slice(first, first + batch_size)
            output = module(copies[chunk])
            if score == "probability" and not target.is_callable:
                output = output.softmax(dim=1)
            out.append(target.score(output, items[chunk]).float())
    return torch.cat(out)
