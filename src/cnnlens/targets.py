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

from ._boxes import BoxSpec, boxes_tensor
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
            rows = self.batch_size if items is None else items.numel()
            if scores.shape[0] != rows:
                raise InputError(
                    f"the callable target returned {scores.shape[0]} scores for {rows} items"
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
            raise InputError(
                f"the model gave {logits.shape[0]} output rows for {classes.shape[0]} items; "
                "class targets need one output row per input"
            )
        if int(classes.max()) >= logits.shape[1]:
            raise InputError(
                f"target class {int(classes.max())} is out of range for {logits.shape[1]} outputs"
            )
        return logits.gather(1, classes.view(-1, 1)).squeeze(1)

    def input_scores(self, output: Any, items: Tensor | None = None) -> Tensor:
        """:meth:`score`, which the gradient methods differentiate: it must depend on the
        input."""
        scores = self.score(output, items)
        if not scores.requires_grad:
            raise InputError("the target score does not depend on the input")
        return scores

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
    ``mask``.

    ``mask`` is (H, W) — the same region for every item — or (B, H, W), at the resolution of
    the model's output; boolean or real-valued (a soft mask weights each pixel). Accepts a
    tensor output (B, classes, H, W) or torchvision's dict output (key ``"out"``).
    """

    def __init__(self, category: int, mask: Tensor) -> None:
        if isinstance(category, bool) or not isinstance(category, int) or category < 0:
            raise InputError(f"category must be a non-negative class index, got {category!r}")
        if not isinstance(mask, Tensor) or mask.dim() not in (2, 3):
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise InputError(f"mask must be a tensor (H, W) or (B, H, W), got {shape}")
        self.category = category
        self.mask = mask.detach()

    def __call__(self, output: Any) -> Tensor:
        if isinstance(output, dict):
            if "out" not in output:
                raise InputError("SegmentationTarget needs a tensor output or a dict with 'out'")
            output = output["out"]
        if not isinstance(output, Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise InputError(f"SegmentationTarget needs an output (B, classes, H, W), got {shape}")
        if self.category >= output.shape[1]:
            raise InputError(
                f"category {self.category} is out of range for {output.shape[1]} classes"
            )
        logits = output[:, self.category]
        mask = self.mask.to(device=logits.device, dtype=logits.dtype)
        if mask.shape[-2:] != logits.shape[-2:]:
            raise InputError(
                f"mask is {tuple(mask.shape[-2:])} but the output is {tuple(logits.shape[-2:])}"
            )
        if mask.dim() == 3 and mask.shape[0] != logits.shape[0]:
            raise InputError(f"mask has {mask.shape[0]} items but the output has {logits.shape[0]}")
        return (logits * mask).flatten(1).sum(dim=1)


class DetectionTarget:
    """Callable target for torchvision detection models: the score of the detected box that
    best overlaps ``box`` among those of class ``label`` (any class if ``None``).

    ``box``: a :class:`cnnlens.Box` or four numbers (x1, y1, x2, y2) in input pixels — the
    same convention as :func:`cnnlens.pointing_game` and torchvision — for every item, or one
    per item (a sequence of boxes or a tensor (B, 4)). Works with the list of dicts
    (``"boxes"``, ``"labels"``, ``"scores"``) that torchvision's detectors return in eval
    mode. An item with no box of the label, or none overlapping at least ``min_iou``,
    scores 0 (still connected to the graph, so its gradients are zero rather than missing).
    """

    def __init__(self, box: BoxSpec, label: int | None = None, min_iou: float = 0.0) -> None:
        boxes = boxes_tensor(box)
        self.box = boxes
        self.label = label
        self.min_iou = min_iou

    def __call__(self, output: Any) -> Tensor:
        scores = []
        for det, best in zip(output, self.best_box(output), strict=True):
            item_scores = det["scores"]
            scores.append(item_scores.sum() * 0.0 if best is None else item_scores[best])
        return torch.stack(scores)

    def best_box(self, output: Any) -> list[int | None]:
        """Per item, the index of the detection this target scores (``None``: none)."""
        from torchvision.ops import box_iou

        if not isinstance(output, (list, tuple)) or not all(isinstance(o, dict) for o in output):
            raise InputError(
                "DetectionTarget needs a detector's list of {'boxes','labels','scores'}"
            )
        if self.box.shape[0] not in (1, len(output)):
            raise InputError(f"{self.box.shape[0]} boxes given for {len(output)} items")
        found: list[int | None] = []
        for index, det in enumerate(output):
            boxes, labels = det["boxes"], det["labels"]
            keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
            if self.label is not None:
                keep = labels == self.label
            if boxes.numel() == 0 or not bool(keep.any()):
                found.append(None)
                continue
            query = self.box[index if self.box.shape[0] > 1 else 0].view(1, 4)
            ious = box_iou(boxes.detach(), query.to(boxes.device, boxes.dtype)).squeeze(1)
            ious = torch.where(keep, ious, torch.full_like(ious, -1.0))
            best = int(ious.argmax())
            found.append(best if float(ious[best]) >= self.min_iou else None)
        return found
