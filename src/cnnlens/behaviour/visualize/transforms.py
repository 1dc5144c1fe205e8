"""Random transformations applied to the images before each forward pass (transformation
robustness, Olah et al. 2017): jitter, scale and rotation, with a constant grey surround.

Lucid applies pad, jitter, scale, rotate and jitter again as separate ops; here they are
composed into one affine map per image and applied with a single batched
``affine_grid``/``grid_sample`` — one resampling per step, and the view keeps the model's
input size, so the forward pass costs the same as on the untransformed image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RandomAffine", "affine_matrices"]


def affine_matrices(
    zoom: Tensor, angle: Tensor, shift_x: Tensor, shift_y: Tensor, size: tuple[int, int]
) -> Tensor:
    """``affine_grid`` matrices (n, 2, 3) for views of an image of ``size`` (H, W): the view
    pixel at p (relative to the centre, in pixels) shows the image at
    R(angle) p / zoom + (shift_x, shift_y) — the image appears zoomed by ``zoom``, rotated by
    −``angle`` (radians, y pointing down) and moved by minus the shift."""
    h, w = size
    cos = torch.cos(angle) / zoom
    sin = torch.sin(angle) / zoom
    # Normalized coordinates are pixels divided by the half-sizes (w/2, h/2).
    theta = torch.empty(zoom.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (h / w)
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = shift_x * 2.0 / w
    theta[:, 1, 2] = shift_y * 2.0 / h
    return theta.float()


@dataclass(frozen=True)
class RandomAffine:
    """Per image: shift by up to ``jitter`` pixels in x and y, zoom by a factor in
    [1 - ``scale``, 1 + ``scale``], rotate by up to ``rotate`` degrees; areas that come from
    outside the image are ``fill`` grey. All draws come from the caller's generator."""

    jitter: float = 16.0
    scale: float = 0.15
    rotate: float = 15.0
    fill: float = 0.5

    @property
    def identity(self) -> bool:
        return self.jitter == 0 and self.scale == 0 and self.rotate == 0

    def matrices(self, n: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
        """The (n, 2, 3) ``affine_grid`` matrices (output → input, normalized coordinates)."""
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2.0 - 1.0
        return affine_matrices(
            1.0 + self.scale * u[:, 0],
            math.radians(self.rotate) * u[:, 1],
            self.jitter * u[:, 2],
            self.jitter * u[:, 3],
            size,
        )

    def __call__(
        self, images: Tensor, generator: torch.Generator, size: tuple[int, int] | None = None
    ) -> Tensor:
        """The transformed views; with ``size`` (H, W) the whole view is resampled to that
        size (a coarse view of the same picture, for cheaper forward passes)."""
        n, c, h, w = images.shape
        view = (h, w) if size is None else size
        if self.identity:
            if view == (h, w):
                return images
            return F.interpolate(images, size=view, mode="bilinear", antialias=True)
        theta = self.matrices(n, (h, w), generator).to(images.device, images.dtype)
        grid = F.affine_grid(theta, [n, c, *view], align_corners=False)
        centred = images - self.fill
        out = F.grid_sample(
            centred, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out + self.fill
