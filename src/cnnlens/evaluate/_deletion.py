"""Deletion and insertion (Petsiuk et al. 2018, "RISE")."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from .._guard import unwrap
from .._progress import track
from ..attribution.api import Explanation, check_inputs
from ..errors import InputError
from ..targets import TargetSpec
from ._maps import Rank, method_name, ranking_map
from ._scoring import check_score, copy_scores, evaluation_target

__all__ = ["DeletionInsertion", "deletion_insertion", "pixel_order", "trapezoid_auc"]


@dataclass(frozen=True)
class DeletionInsertion:
    """Per item: the area under the deletion curve (lower is better: the score falls fast
    when the most important pixels go first) and under the insertion curve (higher is
    better). ``deletion_curve`` / ``insertion_curve`` (B, steps + 1) are the target's scores
    at ``fractions`` (steps + 1,) of the pixels removed / inserted.

    ``ranking`` says how pixels were ordered (``"signed"``: most positive first; ``"abs"``:
    largest magnitude first), ``baseline`` what deleted pixels became, ``blur_sigma`` the
    blur of the image insertion starts from, ``score`` whether curves are probabilities or
    logits. Unpacks as ``deletion_auc, insertion_auc``.
    """

    deletion_auc: Tensor
    insertion_auc: Tensor
    deletion_curve: Tensor
    insertion_curve: Tensor
    fractions: Tensor
    method: str
    ranking: Rank
    baseline: float
    blur_sigma: float
    score: str

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.deletion_auc, self.insertion_auc))


def trapezoid_auc(curve: Tensor, fractions: Tensor) -> Tensor:
    """Trapezoid area of curves (B, n) sampled at ``fractions`` (n,) of [0, 1]."""
    return torch.trapezoid(curve, x=fractions.to(curve), dim=1)


def pixel_order(maps: Tensor) -> Tensor:
    """rank (B, H*W): position of each pixel in its item's order, most important first
    (ties broken by pixel index, so the order is reproducible)."""
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=maps.device).expand_as(order)
    return rank.scatter_(1, order, positions)


# Deletion/insertion steps, the default of every view (:func:`deletion_insertion`,
# :func:`cnnlens.evaluate.trust_table`, ``cnnlens evaluate``, the report and the explorer), so
# one image's AUCs are the same numbers wherever they are read.
CURVE_STEPS = 32


def deletion_insertion(
    model: Any,
    inputs: Tensor,
    explanation: Explanation | Tensor,
    *,
    steps: int = CURVE_STEPS,
    target: TargetSpec = None,
    rank: Rank | None = None,
    baseline: float = 0.0,
    blur_sigma: float = 5.0,
    batch_size: int = 32,
    score: str = "probability",
    progress: bool | None = None,
) -> DeletionInsertion:
    """Delete pixels (set them to ``baseline``) or insert them (into a blurred copy) in order
    of the explanation, most important first, in ``steps`` equal steps, and record the
    target's score after each step. Copies are evaluated in batches under inference mode.

    ``rank``: ``"signed"`` (most positive evidence first) or ``"abs"`` (largest magnitude
    first); by default signed for methods whose attribution is signed evidence (input ×
    gradient, integrated gradients, DeepLIFT, LRP, occlusion, CAM) and for plain maps, abs
    for gradient-type maps (see :mod:`cnnlens.evaluate._maps`). ``target`` defaults to the
    explanation's targets, else each item's top class.
    """
    module = unwrap(model)
    inputs = check_inputs(inputs).detach()
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    kind = check_score(score)
    batch, _, height, width = inputs.shape
    maps, ranking = ranking_map(explanation, (height, width), rank)
    if maps.shape[0] != batch:
        raise InputError(f"the explanation has {maps.shape[0]} maps for {batch} inputs")
    resolved = evaluation_target(module, inputs, target, explanation)
    order = pixel_order(maps.to(inputs.device))
    counts = torch.linspace(0, height * width, steps + 1, device=inputs.device).round().long()
    blurred = gaussian_blur(inputs, kernel_size=[11, 11], sigma=[blur_sigma, blur_sigma])
    base = torch.full_like(inputs, baseline)
    jobs = [(b, s) for b in range(batch) for s in range(steps + 1)]

    def curves(start: Tensor, end: Tensor, desc: str) -> Tensor:
        """(B, steps + 1): the first ``counts[s]`` pixels of item b from ``end``, the rest
        from ``start``."""
        values = []
        for first in track(range(0, len(jobs), batch_size), desc, enabled=progress, unit="batch"):
            chunk = jobs[first : first + batch_size]
            items = torch.tensor([b for b, _ in chunk], device=inputs.device)
            taken = torch.stack([order[b] < counts[s] for b, s in chunk])
            copies = torch.where(taken.view(-1, 1, height, width), end[items], start[items])
            values.append(copy_scores(module, resolved, copies, items, kind, batch_size))
        return torch.cat(values).view(batch, steps + 1)

    deletion = curves(inputs, base, "deletion")
    insertion = curves(blurred, inputs, "insertion")
    fractions = counts.float() / (height * width)
    return DeletionInsertion(
        deletion_auc=trapezoid_auc(deletion, fractions),
        insertion_auc=trapezoid_auc(insertion, fractions),
        deletion_curve=deletion,
        insertion_curve=insertion,
        fractions=fractions,
        method=method_name(explanation),
        ranking=ranking,
        baseline=float(baseline),
        blur_sigma=float(blur_sigma),
        score=kind,
    )
