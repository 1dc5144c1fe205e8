"""The pointing game (Zhang et al. 2016, "Top-down neural attention by excitation
backprop"), with TorchRay's Euclidean tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._boxes import BoxSpec, boxes_mask, boxes_tensor
from ..attribution.api import Explanation
from ..errors import InputError
from ._maps import as_maps, method_name

__all__ = ["PointingGame", "pointing_game"]


@dataclass(frozen=True)
class PointingGame:
    """Per item: ``hits`` (B,) bool; ``points`` (B, 2) the map's maximum as (y, x);
    ``distances`` (B,) the Euclidean distance in pixels from that point to the nearest pixel
    of the object (0 inside it, ``inf`` for an empty mask). ``hit_rate`` is the mean."""

    hits: Tensor
    points: Tensor
    distances: Tensor
    tolerance: float
    method: str

    @property
    def hit_rate(self) -> float:
        return float(self.hits.float().mean())


def _masks(region: BoxSpec, batch: int, height: int, width: int) -> Tensor:
    if isinstance(region, Tensor) and region.dtype == torch.bool:
        masks = region.expand(batch, height, width) if region.dim() == 2 else region
        if tuple(masks.shape) != (batch, height, width):
            raise InputError(
                f"mask shape {tuple(region.shape)} does not match maps {(batch, height, width)}"
            )
        return masks.cpu()
    return boxes_mask(boxes_tensor(region, batch), height, width)


def pointing_game(
    explanation: Explanation | Tensor,
    region: BoxSpec,
    *,
    tolerance: float = 15,
) -> PointingGame:
    """A hit when the map's maximum lies within ``tolerance`` pixels (Euclidean distance,
    boundary included) of the object, as in TorchRay's reference implementation; a point 10
    pixels away along both axes is 14.1 pixels away.

    ``region``: the object as a boolean mask (H, W) or (B, H, W), or as boxes in the one box
    convention of cnnlens: a :class:`cnnlens.Box` or four numbers (x1, y1, x2, y2), x2 and y2
    exclusive (the same as :class:`cnnlens.DetectionTarget`), shared by every item or one
    per item. The map is the explanation's heatmap (or a plain map (B, H, W)).
    """
    if tolerance < 0:
        raise InputError(f"tolerance must be non-negative, got {tolerance}")
    if isinstance(explanation, Explanation):
        maps = explanation.heatmap()
    elif isinstance(explanation, Tensor):
        maps = as_maps(explanation, (int(explanation.shape[-2]), int(explanation.shape[-1])))
    else:
        raise InputError(
            f"expected an Explanation or a (B, H, W) tensor, got {type(explanation).__name__}"
        )
    maps = maps.detach().cpu()
    batch, height, width = maps.shape
    masks = _masks(region, batch, height, width)
    peak = maps.flatten(1).argmax(dim=1)
    points = torch.stack([peak // width, peak % width], dim=1)
    ys = torch.arange(height).view(1, -1, 1)
    xs = torch.arange(width).view(1, 1, -1)
    squared = (ys - points[:, 0].view(-1, 1, 1)) ** 2 + (xs - points[:, 1].view(-1, 1, 1)) ** 2
    squared = torch.where(masks, squared.double(), torch.full_like(squared.double(), torch.inf))
    distances = squared.flatten(1).amin(dim=1).sqrt()
    return PointingGame(
        hits=distances <= tolerance,
        points=points,
        distances=distances,
        tolerance=float(tolerance),
        method=method_name(explanation),
    )
