"""What score an explanation explains.

A target is resolved once per ``explain`` call into a :class:`Target`: either class
indices (one per item, possibly chosen lazily as each item's top class from the first
forward pass) or a user callable ``output -> Tensor (B,)``. Ready-made callables for other
tasks live here too: :class:`SegmentationTarget` and :class:`DetectionTarget`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "ClassTarget",
    "DetectionTarget",
    "SegmentationTarget",
    "Target",
    "TargetSpec",
    "resolve_target",
]

ScoreFn = Callable[[Any], Tensor]
TargetSpec = None | int | Sequence[int] | Tensor | ScoreFn


class Target:
    """A resolved target: ``score(output)`` gives one score per row of ``output``.

    ``items`` maps rows of ``output`` to items of the explained batch when a method
    evaluates several copies per item (occlusion, SmoothGrad): row r scores item
    ``items[r]``'s class. Class targets left as ``None`` are fixed from the first output
    passed to :meth:`resolve`.
    """

    def __init__(self, batch_size: int, classes: Tensor | None, fn: ScoreFn | None) -> None:
        self.batch_size = batch_size
        self.classes = classes
        self.fn = fn

    @property
    def is_callable(self) -> bool:
        return self.fn is not None

    def resolve(self, output: Any) -> None:
        """Fix top-class targets from the output of the unmodified inputs."""
        if self.fn is None and self.classes is None:
            logits = _logits(output)
            self.classes = logits.detach().argmax(dim=1)

    def score(self, output: Any, items: Tensor | None = None) -> Tensor:
        if self.fn is not None:
            scores = self.fn(output)
            if not isinstance(scores, Tensor) or scores.dim() != 1:
                raise InputError(
                    "a callable target must return a 1-D tensor with one score per item"
                )
            return scores
        logits = _logits(output)
        if self.classes is None:
            self.resolve(logits)
        assert self.classes is not None
        classes = self.classes.to(logits.device)
        if items is not None:
            classes = classes[items.to(logits.device)]
        if classes.shape[0] != logits.shape[0]:
            raise RuntimeError(
                f"target has {classes.shape[0]} entries for {logits.shape[0]} output rows"
            )
        if int(classes.max()) >= logits.shape[1]:
            raise InputError(
                f"target class {int(classes.max())} is out of range for {logits.shape[1]} outputs"
            )
        return logits.gather(1, classes.view(-1, 1)).squeeze(1)

    def __call__(self, output: Any) -> Tensor:
        return self.score(output)


def _logits(output: Any) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InputError(
            f"class targets need a (batch, classes) output, got {shape}; pass a callable target"
        )
    return output


def resolve_target(target: TargetSpec, batch_size: int) -> Target:
    """Check the user's ``target`` against the batch size and make a :class:`Target`."""
    if target is None:
        return Target(batch_size, None, None)
    if callable(target) and not isinstance(target, Tensor):
        return Target(batch_size, None, target)
    if isinstance(target, bool):
        raise InputError("target must be a class index, a sequence of indices or a callable")
    if isinstance(target, int):
        if target < 0:
            raise InputError(f"target class must be non-negative, got {target}")
        return Target(batch_size, torch.full((batch_size,), target, dtype=torch.long), None)
    if isinstance(target, Tensor):
        classes = target.detach().to(torch.long).flatten().cpu()
        if target.dim() == 0:
            classes = classes.expand(batch_size).clone()
    elif isinstance(target, Sequence) and not isinstance(target, str):
        try:
            classes = torch.tensor([int(t) for t in target], dtype=torch.long)
        except (TypeError, ValueError) as exc:
            raise InputError(f"target entries must be class indices: {exc}") from None
    else:
        raise InputError(
            f"target must be None, an int, a sequence of ints or a callable, got {type(target).__name__}"
        )
    if classes.numel() != batch_size:
        raise InputError(
            f"target has {classes.numel()} entries but the batch has {batch_size} items"
        )
    if classes.numel() and int(classes.min()) < 0:
        raise InputError("target classes must be non-negative")
    return Target(batch_size, classes, None)


class ClassTarget:
    """Callable target: the logit of ``index`` (same for every item)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        return output[:, self.index]


class SegmentationTarget:
    """Callable target for segmentation models: the sum of class ``category``'s logits inside
    ``mask`` (H, W) or (B, H, W). Accepts torchvision's dict output (key ``"out"``)."""

    def __init__(self, category: int, mask: Tensor) -> None:
        self.category = category
        self.mask = mask

    def __call__(self, output: Any) -> Tensor:
        if isinstance(output, dict):
            output = output["out"]
        logits = output[:, self.category]
        mask = self.mask.to(device=logits.device, dtype=logits.dtype)
        if mask.shape[-2:] != logits.shape[-2:]:
            raise InputError(
                f"mask is {tuple(mask.shape[-2:])} but the output is {tuple(logits.shape[-2:])}"
            )
        return (logits * mask).flatten(1).sum(dim=1)


class DetectionTarget:
    """Callable target for torchvision detection models: the score of the detected box that
    best overlaps ``box`` (x1, y1, x2, y2) among those of ``label`` (any label if None).

    Works with the list-of-dicts output of torchvision's detectors; an item with no matching
    box scores 0 (connected to the graph so gradients are zero rather than missing)."""

    def __init__(
        self, box: Sequence[float] | Tensor, label: int | None = None, min_iou: float = 0.0
    ) -> None:
        self.box = torch.as_tensor(box, dtype=torch.float32).view(1, 4)
        self.label = label
        self.min_iou = min_iou

    def __call__(self, output: Any) -> Tensor:
        from torchvision.ops import box_iou

        if not isinstance(output, (list, tuple)) or not all(isinstance(o, dict) for o in output):
            raise InputError(
                "DetectionTarget needs a detector's list of {'boxes','labels','scores'}"
            )
        scores = []
        for det in output:
            boxes, labels, item_scores = det["boxes"], det["labels"], det["scores"]
            keep = torch.ones_like(item_scores, dtype=torch.bool)
            if self.label is not None:
                keep = labels == self.label
            if boxes.numel() == 0 or not bool(keep.any()):
                scores.append(item_scores.sum() * 0.0)
                continue
            ious = box_iou(boxes, self.box.to(boxes.device)).squeeze(1)
            ious = torch.where(keep, ious, torch.full_like(ious, -1.0))
            best = int(ious.argmax())
            if float(ious[best]) < self.min_iou:
                scores.append(item_scores.sum() * 0.0)
            else:
                scores.append(item_scores[best])
        return torch.stack(scores)
