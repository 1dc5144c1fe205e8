"""A ground-truth benchmark that needs no download: images whose class is decided by one
small object at a known place on clutter, and a small CNN trained on them. Since only the
object decides the class, a faithful explanation should point at it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SHAPES", "SyntheticShapes", "make_shapes", "small_cnn", "train_classifier"]

SHAPES = ("square", "plus", "ring")


@dataclass(frozen=True)
class SyntheticShapes:
    """``images`` (N, 3, S, S) in [0, 1]; ``labels`` (N,); ``boxes`` (N, 4) the object's
    box (x1, y1, x2, y2), x2/y2 exclusive: cnnlens's one box convention (see
    :class:`cnnlens.Box`)."""

    images: Tensor
    labels: Tensor
    boxes: Tensor


def _stamp(kind: int, size: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = (size - 1) / 2
    if kind == 0:  # filled square
        return torch.ones(size, size)
    if kind == 1:
        band = size // 3
        lo, hi = (size - band) // 2, (size - band) // 2 + band
        return (((ys >= lo) & (ys < hi)) | ((xs >= lo) & (xs < hi))).float()
    r = ((ys - c) ** 2 + (xs - c) ** 2).sqrt()
    return ((r <= c) & (r >= c - max(2, size // 4))).float()


def make_shapes(n: int, *, size: int = 48, object_size: int = 12, seed: int = 0) -> SyntheticShapes:
    """``n`` images: coloured clutter (random strokes and blobs in every class alike) plus
    one object whose shape is the class, at a random place."""
    g = torch.Generator().manual_seed(seed)
    images = (
        torch.rand(n, 3, 1, 1, generator=g) * 0.3
        + 0.1
        + torch.rand(n, 3, size, size, generator=g) * 0.15
    )
    # clutter: short random bars in random colours, shared by all classes
    for i in range(n):
        for _ in range(6):
            y, x = torch.randint(0, size - 4, (2,), generator=g).tolist()
            h, w = (3, 10) if torch.rand(1, generator=g).item() < 0.5 else (10, 3)
            colour = torch.rand(3, 1, 1, generator=g)
            images[i, :, y : y + h, x : x + w] = colour
    labels = torch.randint(0, len(SHAPES), (n,), generator=g)
    boxes = torch.empty(n, 4, dtype=torch.long)
    stamps = [_stamp(k, object_size) for k in range(len(SHAPES))]
    for i in range(n):
        y, x = torch.randint(0, size - object_size + 1, (2,), generator=g).tolist()
        colour = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5
        mask = stamps[int(labels[i])]
        patch = images[i, :, y : y + object_size, x : x + object_size]
        images[i, :, y : y + object_size, x : x + object_size] = patch * (1 - mask) + colour * mask
        boxes[i] = torch.tensor([x, y, x + object_size, y + object_size])
    return SyntheticShapes(images.clamp(0, 1), labels, boxes)


def small_cnn(num_classes: int = len(SHAPES)) -> nn.Module:
    """conv-relu x3 with pooling, then global average pooling and a linear head (so CAM applies)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def train_classifier(
    model: nn.Module,
    data: SyntheticShapes,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` on ``data`` with Adam (seeded); returns it in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.labels), generator=g)
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return model.eval()
