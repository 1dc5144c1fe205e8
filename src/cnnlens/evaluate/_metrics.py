"""Deletion/insertion (Petsiuk et al. 2018) and the pointing game (Zhang et al. 2016)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from .._hooks import eval_mode
from .._modules import as_module
from .._progress import track
from ..attribution.api import Explanation, check_inputs
from ..errors import InputError
from ..targets import TargetSpec, resolve_target

__all__ = ["DeletionInsertion", "as_maps", "deletion_insertion", "pointing_game"]


def as_maps(explanation: Explanation | Tensor, size: tuple[int, int]) -> Tensor:
    """An explanation or a plain map to (B, H, W) at ``size`` (maps are only ranked, so
    their scale does not matter)."""
    if isinstance(explanation, Explanation):
        maps = explanation.heatmap()
    elif isinstance(explanation, Tensor):
        maps = explanation.detach()
        if maps.dim() == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.dim() != 3:
            raise InputError(f"a plain map must be (B, H, W), got {tuple(maps.shape)}")
    else:
        raise InputError(
            f"expected an Explanation or a (B, H, W) tensor, got {type(explanation).__name__}"
        )
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(
            maps[:, None].float(), size=size, mode="bilinear", align_corners=False
        )[:, 0]
    return maps.float()


@dataclass(frozen=True)
class DeletionInsertion:
    """Per item: the area under the deletion curve (lower is better: the score falls fast
    when the most important pixels go first) and under the insertion curve (higher is
    better). ``curves`` are (B, steps + 1) target probabilities; x runs from 0 to 1.
    Unpacks as ``deletion_auc, insertion_auc``."""

    deletion_auc: Tensor
    insertion_auc: Tensor
    deletion_curve: Tensor
    insertion_curve: Tensor

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.deletion_auc, self.insertion_auc))


def _auc(curve: Tensor) -> Tensor:
    """Trapezoid area of curves (B, n) sampled evenly on [0, 1]."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


def deletion_insertion(
    model: Any,
    inputs: Tensor,
    explanation: Explanation | Tensor,
    *,
    steps: int = 32,
    target: TargetSpec = None,
    baseline: float = 0.0,
    blur_sigma: float = 5.0,
    batch_size: int = 32,
    score: str = "probability",
    progress: bool | None = None,
) -> DeletionInsertion:
    """Delete pixels (set them to ``baseline``) or insert them (into a blurred copy) in order
    of the explanation, most important first, in ``steps`` equal steps, and record the
    target's score after each step. Copies are evaluated in batches under inference mode.

    ``target`` defaults to the explanation's targets, else each item's top class.
    """
    module = as_module(model)
    inputs = check_inputs(inputs).detach()
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if score not in ("probability", "logit"):
        raise InputError(f"score must be 'probability' or 'logit', got {score!r}")
    batch, _, height, width = inputs.shape
    maps = as_maps(explanation, (height, width)).to(inputs.device)
    if maps.shape[0] != batch:
        raise InputError(f"the explanation has {maps.shape[0]} maps for {batch} inputs")
    if target is None and isinstance(explanation, Explanation) and explanation.targets is not None:
        target = explanation.targets
    resolved = resolve_target(target, batch)
    pixels = height * width
    order = maps.flatten(1).argsort(dim=1, descending=True)  # (B, H*W)
    # rank[b, p] = position of pixel p in item b's order
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pixels, device=inputs.device).expand(batch, -1))
    counts = torch.linspace(0, pixels, steps + 1, device=inputs.device).round().long()
    blurred = gaussian_blur(inputs, kernel_size=[11, 11], sigma=[blur_sigma, blur_sigma])
    base = torch.full_like(inputs, baseline)

    def scores_for(start: Tensor, end: Tensor, desc: str) -> Tensor:
        """Curves (B, steps+1): the first ``counts[s]`` pixels of each item taken from
        ``end``, the rest from ``start``."""
        jobs = [(b, s) for b in range(batch) for s in range(steps + 1)]
        out = torch.empty(batch, steps + 1, device=inputs.device)
        with torch.inference_mode(), eval_mode(module):
            if resolved.classes is None and not resolved.is_callable:
                resolved.resolve(module(inputs))
            for first in track(
                range(0, len(jobs), batch_size), desc, enabled=progress, unit="batch"
            ):
                chunk = jobs[first : first + batch_size]
                items = torch.tensor([b for b, _ in chunk], device=inputs.device)
                taken = torch.stack([rank[b] < counts[s] for b, s in chunk]).view(
                    -1, 1, height, width
                )
                copies = torch.where(taken, end[items], start[items])
                output = module(copies)
                if score == "probability" and not resolved.is_callable:
                    output = output.softmax(dim=1)
                values = resolved.score(output, items)
                for (b, s), v in zip(chunk, values.float(), strict=True):
                    out[b, s] = v
        return out

    deletion = scores_for(inputs, base, "deletion")
    insertion = scores_for(blurred, inputs, "insertion")
    return DeletionInsertion(_auc(deletion), _auc(insertion), deletion, insertion)


Box = Sequence[float] | Tensor


def pointing_game(
    explanation: Explanation | Tensor,
    region: Box | Sequence[Box] | Tensor,
    *,
    tolerance: int = 15,
) -> Tensor:
    """Per item, a hit (True) when the map's maximum falls inside the item's region or
    within ``tolerance`` pixels of it.

    ``region``: a box (top, left, bottom, right) with bottom/right exclusive (shared by
    every item), one box per item, or a boolean mask (H, W) or (B, H, W).
    """
    if isinstance(explanation, Explanation):
        maps = explanation.heatmap()
    else:
        maps = as_maps(explanation, tuple(explanation.shape[-2:]))  # type: ignore[arg-type]
    batch, height, width = maps.shape
    if isinstance(region, Tensor) and region.dtype == torch.bool:
        masks = region.expand(batch, height, width) if region.dim() == 2 else region
        if tuple(masks.shape) != (batch, height, width):
            raise InputError(
                f"mask shape {tuple(region.shape)} does not match maps {(batch, height, width)}"
            )
        masks = masks.to(maps.device)
    else:
        boxes = torch.as_tensor(region, dtype=torch.float32)
        if boxes.dim() == 1:
            boxes = boxes.expand(batch, 4)
        if tuple(boxes.shape) != (batch, 4):
            raise InputError(
                f"expected one box (4 numbers) or {batch} boxes, got shape {tuple(boxes.shape)}"
            )
        ys = torch.arange(height).view(1, -1, 1)
        xs = torch.arange(width).view(1, 1, -1)
        top, left, bottom, right = (boxes[:, i].view(-1, 1, 1) for i in range(4))
        masks = ((ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)).to(maps.device)
    if tolerance > 0:
        kernel = 2 * tolerance + 1
        masks = F.max_pool2d(masks[:, None].float(), kernel, stride=1, padding=tolerance)[:, 0] > 0
    peak = maps.flatten(1).argmax(dim=1)
    return masks.flatten(1).gather(1, peak[:, None]).squeeze(1)
