"""ROAD: remove and debias (Rong et al. 2022, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods").

Removed pixels are not set to a constant (whose sharp edges tell the model where the
removed pixels were, so the mask itself leaks class information); they are filled by
*noisy linear imputation*: each removed pixel equals the weighted mean of its eight
neighbours (weights 1/6 for the four edge neighbours, 1/12 for the diagonal ones), a sparse
linear system solved per channel, plus Gaussian noise. The score is then measured with the
most relevant pixels removed first (MoRF, lower is better) and the least relevant first
(LeRF, higher is better); the summary is the mean of (LeRF − MoRF) / 2 over the fractions,
pytorch-grad-cam's ``ROADCombined``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._guard import unwrap
from ..attribution.api import Explanation, check_inputs
from ..errors import InputError
from ..targets import TargetSpec
from ._deletion import pixel_order
from ._maps import Rank, method_name, ranking_map
from ._scoring import check_score, copy_scores, evaluation_target

__all__ = ["Road", "linear_imputation", "road"]

# (row offset, column offset, weight) of the neighbours in the imputation's mean.
_NEIGHBOURS = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Road:
    """``morf`` / ``lerf`` (B, F): the target's score with ``fractions`` (F,) of the pixels
    removed, most / least relevant first; ``original`` (B,) the unmodified score.
    ``values`` (B,): mean over fractions of (LeRF − MoRF) / 2, higher is better."""

    values: Tensor
    morf: Tensor
    lerf: Tensor
    original: Tensor
    fractions: Tensor
    method: str
    ranking: Rank
    noise: float
    seed: int
    score: str


def linear_imputation(image: Tensor, removed: Tensor) -> Tensor:
    """``image`` (C, H, W) with the pixels of ``removed`` (H, W, bool) replaced by the
    solution of the neighbour-mean system (no noise). Pixels at the border average over
    the neighbours that exist."""
    height, width = removed.shape
    lost = removed.detach().cpu().numpy().reshape(-1)
    unknown = np.flatnonzero(lost)
    if unknown.size == 0:
        return image.clone()
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    values = image.detach().cpu().double().numpy().reshape(image.shape[0], -1)
    index = np.full(lost.size, -1)
    index[unknown] = np.arange(unknown.size)
    rows, cols = np.divmod(unknown, width)
    diagonal = np.zeros(unknown.size)
    right = np.zeros((unknown.size, values.shape[0]))
    a_rows, a_cols, a_vals = [], [], []
    for dy, dx, weight in _NEIGHBOURS:
        ny, nx = rows + dy, cols + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        which = np.flatnonzero(inside)
        neighbour = ny[which] * width + nx[which]
        diagonal[which] += weight
        missing = lost[neighbour]
        a_rows.append(which[missing])
        a_cols.append(index[neighbour[missing]])
        a_vals.append(np.full(int(missing.sum()), -weight))
        known = ~missing
        right[which[known]] += weight * values[:, neighbour[known]].T
    size = unknown.size
    matrix = coo_matrix(
        (
            np.concatenate([diagonal, *a_vals]),
            (
                np.concatenate([np.arange(size), *a_rows]),
                np.concatenate([np.arange(size), *a_cols]),
            ),
        ),
        shape=(size, size),
    ).tocsc()
    solution = np.asarray(spsolve(matrix, right)).reshape(size, -1)
    out = values.copy()
    out[:, unknown] = solution.T
    return torch.from_numpy(out).view(image.shape).to(image.device, image.dtype)


def road(
    model: Any,
    inputs: Tensor,
    explanation: Explanation | Tensor,
    *,
    fractions: Sequence[float] = FRACTIONS,
    target: TargetSpec = None,
    rank: Rank | None = None,
    noise: float = 0.01,
    seed: int = 0,
    score: str = "probability",
    batch_size: int = 32,
) -> Road:
    """ROAD scores of an explanation: for each fraction, remove that share of the pixels
    (most relevant first, then least relevant first) by noisy linear imputation and score
    the copy. ``noise``: σ of the Gaussian noise added to imputed values, in input units
    (pytorch-grad-cam's 0.01); ``rank`` as in :func:`deletion_insertion`."""
    module = unwrap(model)
    inputs = check_inputs(inputs).detach()
    kind = check_score(score)
    levels = torch.tensor([float(f) for f in fractions], dtype=torch.float64)
    if levels.numel() == 0 or bool(((levels <= 0) | (levels >= 1)).any()):
        raise InputError(f"fractions must lie strictly between 0 and 1, got {list(fractions)}")
    batch, _, height, width = inputs.shape
    maps, ranking = ranking_map(explanation, (height, width), rank)
    if maps.shape[0] != batch:
        raise InputError(f"the explanation has {maps.shape[0]} maps for {batch} inputs")
    resolved = evaluation_target(module, inputs, target, explanation)
    order = pixel_order(maps).cpu()
    pixels = height * width
    generator = torch.Generator().manual_seed(seed)
    copies, items = [], []
    for most_first in (True, False):
        for b in range(batch):
            position = order[b] if most_first else pixels - 1 - order[b]
            for fraction in levels.tolist():
                removed = (position < round(fraction * pixels)).view(height, width)
                filled = linear_imputation(inputs[b].cpu(), removed)
                jitter = torch.randn(filled.shape, generator=generator, dtype=filled.dtype)
                filled = torch.where(removed, filled + noise * jitter, filled)
                copies.append(filled)
                items.append(b)
    scores = copy_scores(
        module,
        resolved,
        torch.stack(copies).to(inputs.device),
        torch.tensor(items, device=inputs.device),
        kind,
        batch_size,
    ).view(2, batch, -1)
    original = copy_scores(
        module, resolved, inputs, torch.arange(batch, device=inputs.device), kind, batch_size
    )
    morf, lerf = scores[0], scores[1]
    return Road(
        values=((lerf - morf) / 2).mean(dim=1),
        morf=morf,
        lerf=lerf,
        original=original,
        fractions=levels.float(),
        method=method_name(explanation),
        ranking=ranking,
        noise=float(noise),
        seed=seed,
        score=kind,
    )
