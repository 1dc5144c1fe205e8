"""Rendering: pure functions from tensors to pictures. Nothing here computes attributions.

Maps are tensors (H, W) or (B, H, W); pictures are PIL images; nothing is shown or saved
except by :func:`save_picture`.
"""

from __future__ import annotations

from ._images import (
    PICTURE_FORMATS,
    add_caption,
    colormap,
    diverging,
    grid,
    overlay,
    save_picture,
    tensor_to_image,
    upsample,
)

__all__ = [
    "PICTURE_FORMATS",
    "add_caption",
    "colormap",
    "diverging",
    "grid",
    "overlay",
    "save_picture",
    "tensor_to_image",
    "upsample",
]
