"""One box convention for every call that takes a region: torchvision's (x1, y1, x2, y2).

``cnnlens.pointing_game`` and :class:`cnnlens.DetectionTarget` both read four plain numbers
as (x1, y1, x2, y2) in input pixels, the order torchvision's detectors return. A
:class:`Box` names its corners, so a box built from the other common order
(:meth:`Box.from_tlbr`, e.g. ``ReceptiveField.box``'s (top, left, bottom, right)) cannot be
passed the wrong way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InputError

__all__ = ["Box", "BoxSpec", "boxes_mask", "boxes_tensor"]


@dataclass(frozen=True)
class Box:
    """A rectangle in input pixels: columns ``x1 <= x < x2``, rows ``y1 <= y < y2``."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise InputError(
                f"box must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1, got {self.xyxy}"
            )

    @classmethod
    def from_tlbr(cls, top: float, left: float, bottom: float, right: float) -> Box:
        """From (top, left, bottom, right), the order of ``ReceptiveField.box``."""
        return cls(x1=left, y1=top, x2=right, y2=bottom)

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def tlbr(self) -> tuple[float, float, float, float]:
        return (self.y1, self.x1, self.y2, self.x2)

    def mask(self, height: int, width: int) -> Tensor:
        """(height, width) boolean mask of the pixels inside the box."""
        return boxes_mask(torch.tensor([self.xyxy]), height, width)[0]


BoxSpec = Box | Sequence[float] | Sequence[Box] | Sequence[Sequence[float]] | Tensor


def boxes_tensor(boxes: BoxSpec, batch: int | None = None) -> Tensor:
    """Boxes as a float tensor (N, 4) in (x1, y1, x2, y2) order.

    Accepts a :class:`Box`, four numbers, a sequence of either, or a tensor (4,) or (N, 4).
    With ``batch``: a single box is repeated ``batch`` times and any other count than
    ``batch`` is an error.
    """
    if isinstance(boxes, Box):
        out = torch.tensor([boxes.xyxy], dtype=torch.float32)
    elif isinstance(boxes, Sequence) and boxes and all(isinstance(b, Box) for b in boxes):
        out = torch.tensor([b.xyxy for b in boxes], dtype=torch.float32)  # type: ignore[union-attr]
    else:
        try:
            out = torch.as_tensor(boxes, dtype=torch.float32).detach()
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"boxes must be (x1, y1, x2, y2) numbers or Box objects: {exc}"
            ) from None
    if out.dim() == 1 and out.numel() == 4:
        out = out.view(1, 4)
    if out.dim() != 2 or out.shape[1] != 4:
        raise InputError(f"box must be (x1, y1, x2, y2) or (N, 4), got shape {tuple(out.shape)}")
    if bool((out[:, 2] < out[:, 0]).any() or (out[:, 3] < out[:, 1]).any()):
        raise InputError("box must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")
    if batch is not None:
        if out.shape[0] == 1:
            out = out.expand(batch, 4)
        elif out.shape[0] != batch:
            raise InputError(
                f"expected one box or one per item ({batch}), got {out.shape[0]} boxes"
            )
    return out


def boxes_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """(N, height, width) boolean masks of boxes (N, 4) in (x1, y1, x2, y2) order."""
    ys = torch.arange(height, device=boxes.device).view(1, -1, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, -1)
    x1, y1, x2, y2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)
