"""Pictures the explorer sends: maps coloured on a stated scale, colour bars, tiles. Each
comes as a PNG data URI inside the JSON answer, so one request gives everything a panel
shows and a script gets the same pictures as the page."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from ..render import colormap, upsample

__all__ = [
    "ColorScale",
    "colorbar_png",
    "data_uri",
    "map_picture",
    "png_bytes",
    "scale_for",
    "tile_picture",
]

SEQUENTIAL = "inferno"
DIVERGING = "bwr"


@dataclass(frozen=True)
class ColorScale:
    """How values became colours: ``cmap`` from ``vmin`` (first colour) to ``vmax``."""

    cmap: str
    vmin: float
    vmax: float

    def as_json(self) -> dict[str, Any]:
        return {
            "cmap": self.cmap,
            "min": self.vmin,
            "max": self.vmax,
            "png": data_uri(colorbar_png(self.cmap)),
        }


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@lru_cache(maxsize=8)
def colorbar_png(cmap: str) -> bytes:
    """A 256×1 gradient of ``cmap``, stretched by the page into a bar."""
    ramp = torch.linspace(0.0, 1.0, 256).view(1, 256)
    return png_bytes(colormap(ramp, cmap, vmin=0.0, vmax=1.0))


def scale_for(values: Tensor, *, signed: bool, clip: float | None = None) -> ColorScale:
    """A colour scale for a map: symmetric around zero on a diverging colormap when signed,
    else from zero (or the map's minimum when negative) on a sequential one. ``clip``: a
    quantile of |values| taken as the limit, so a few extreme pixels do not wash out the map
    (pixel-level attributions are sparse)."""
    flat = values.detach().float().flatten()
    if signed:
        magnitude = flat.abs()
        limit = float(magnitude.quantile(clip)) if clip is not None else float(magnitude.max())
        limit = limit or float(magnitude.max()) or 1.0
        return ColorScale(DIVERGING, -limit, limit)
    low = min(0.0, float(flat.min()))
    high = float(flat.quantile(clip)) if clip is not None else float(flat.max())
    if high <= low:
        high = float(flat.max()) if float(flat.max()) > low else low + 1.0
    return ColorScale(SEQUENTIAL, low, high)


def map_picture(values: Tensor, scale: ColorScale, size: tuple[int, int]) -> bytes:
    """A map (h, w) resized to ``size`` (H, W) and coloured on ``scale``, as PNG."""
    array = values.detach().float().cpu()
    if tuple(array.shape) != size:
        array = upsample(array, size)
    return png_bytes(colormap(array, scale.cmap, vmin=scale.vmin, vmax=scale.vmax))


def tile_picture(values: Tensor, scale: ColorScale) -> bytes:
    """A small map (h, w) at its own resolution (the page scales it up pixelated)."""
    return png_bytes(colormap(values, scale.cmap, vmin=scale.vmin, vmax=scale.vmax))
