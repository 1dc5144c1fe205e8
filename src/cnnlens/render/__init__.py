"""Rendering: pure functions from tensors to pictures. Nothing here computes attributions.

Maps are tensors (H, W) or (B, H, W); pictures are PIL images; nothing is shown or saved
except by :func:`save_png`.
"""

from __future__ import annotations

from ._images import (
    add_caption,
    colormap,
    diverging,
    grid,
    overlay,
    save_png,
    tensor_to_image,
    upsample,
)

__all__ = [
    "add_caption",
    "colormap",
    "diverging",
    "grid",
    "overlay",
    "save_png",
    "tensor_to_image",
    "upsample",
]
