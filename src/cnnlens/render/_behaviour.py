"""Pictures of model behaviour: filter tiles, activation grids, factor overlays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import Tensor

from ._images import (
    _font,
    add_caption,
    colorbar_image,
    colormap,
    diverging,
    grey_copy,
    grid,
    overlay,
    stack,
    upsample,
)

if TYPE_CHECKING:
    from ..behaviour import Factorization

__all__ = [
    "FACTOR_COLOURS",
    "FACTOR_SIDE",
    "activation_grid",
    "factor_figure",
    "factor_legend",
    "factor_overlay",
    "filter_tiles",
    "rgb_filter_tiles",
    "unit_overlays",
]


def rgb_filter_tiles(weights: Tensor, *, scale: int | None = None) -> list[Image.Image]:
    """First-layer filters (out, 3, kh, kw) as RGB tiles, each scaled symmetrically so that
    grey is zero (the familiar AlexNet picture). ``scale`` defaults to about 32 px a tile."""
    tiles = []
    if scale is None:
        scale = max(1, 32 // max(weights.shape[-2:]))
    for w in weights.detach().float().cpu():
        limit = float(w.abs().max()) or 1.0
        pixels = 0.5 + 0.5 * w / limit
        array = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        tile = Image.fromarray(array, "RGB")
        tiles.append(
            tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
        )
    return tiles


def filter_tiles(slices: Tensor, *, scale: int = 8) -> list[Image.Image]:
    """Kernels (n, kh, kw) as diverging tiles (blue negative, white zero, red positive),
    sharing one symmetric scale so their strengths compare."""
    limit = float(slices.detach().abs().max()) or 1.0
    tiles = []
    for s in slices.detach().float().cpu():
        tile = diverging(s, limit=limit)
        tiles.append(
            tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)
        )
    return tiles


def activation_grid(
    maps: Tensor, channels: Sequence[int], values: Sequence[float] | None = None, *, size: int = 96
) -> Image.Image:
    """Feature maps (C, h, w) of the given channels as a labelled grid ("ch 142 · 5.85":
    channel · value), one shared scale drawn as a colour bar under the tiles."""
    chosen = maps[list(channels)].detach().float().cpu()
    vmax = float(chosen.max()) if chosen.numel() else 1.0
    vmin = min(0.0, float(chosen.min())) if chosen.numel() else 0.0
    tiles = [
        colormap(m, "viridis", vmin=vmin, vmax=vmax).resize((size, size), Image.Resampling.NEAREST)
        for m in chosen
    ]
    captions = [
        f"ch {c}" + (f" · {values[i]:.2f}" if values is not None else "")
        for i, c in enumerate(channels)
    ]
    tiles_grid = grid(tiles, captions=captions, columns=min(len(tiles), 6))
    bar = colorbar_image(
        "viridis",
        vmin,
        vmax,
        min(tiles_grid.width, 480),
        f"activation, one scale shared by the tiles ({chosen.shape[-2]}x{chosen.shape[-1]} maps)",
    )
    out = Image.new("RGB", (tiles_grid.width, tiles_grid.height + bar.height), "white")
    out.paste(tiles_grid, (0, 0))
    out.paste(bar, (0, tiles_grid.height))
    return out


_FACTOR_COLORS = colormaps["tab10"]
# The same colours as CSS hex strings (for legends drawn in HTML).
FACTOR_COLOURS: tuple[str, ...] = tuple(
    "#{:02x}{:02x}{:02x}".format(*(int(255 * v) for v in _FACTOR_COLORS(i)[:3])) for i in range(10)
)


FACTOR_SIDE = 320
"""The shorter side the factorization pictures are drawn at, at least (:func:`factor_figure`,
the report): factor maps are coarse, and a title the width of the picture fits on one line."""


def factor_overlay(
    image: Image.Image, maps: Tensor, *, alpha: float = 0.65, min_side: int | None = None
) -> Image.Image:
    """Each factor's spatial map (k, h, w) in its own colour over a grey copy of ``image``
    (:func:`grey_copy`, as every map of the report): each position takes the colour of its
    strongest factor, opacity from that factor's strength. Drawn at ``image``'s size, or
    enlarged to at least ``min_side`` pixels on the shorter side."""
    if min_side is not None and min(image.size) < min_side:
        scale = min_side / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.BILINEAR)
    base = np.asarray(grey_copy(image), dtype=np.float32)
    up = upsample(maps.detach().float().cpu(), (image.height, image.width))
    peak = up.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    strength, winner = (up / peak).max(dim=0)
    colors = torch.tensor([_FACTOR_COLORS(i % 10)[:3] for i in range(maps.shape[0])]) * 255
    painted = colors[winner].numpy()
    weight = (alpha * strength.clamp(0, 1)).numpy()[..., None]
    mixed = base * (1 - weight) + painted * weight
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8), "RGB")


def factor_legend(strongest: Tensor, *, width: int = 320) -> Image.Image:
    """A legend: each factor's colour and its strongest channels (as wide as its longest
    line needs, at least ``width``)."""
    rows = strongest.shape[0]
    font = _font(13)
    texts = [
        f"factor {i}: channels {', '.join(map(str, channels))}"
        for i, channels in enumerate(strongest.tolist())
    ]
    width = max([width] + [int(font.getlength(t)) + 38 for t in texts])
    out = Image.new("RGB", (width, 22 * rows + 8), "white")
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(texts):
        color = tuple(int(255 * v) for v in _FACTOR_COLORS(i % 10)[:3])
        draw.rectangle((6, 6 + 22 * i, 22, 22 + 22 * i), fill=color)
        draw.text((30, 7 + 22 * i), text, fill="black", font=font)
    return out


def factor_figure(
    images: Sequence[Image.Image], factorization: Factorization, title: str
) -> Image.Image:
    """The factorization lens as one picture sized to its content: ``title`` over the
    images' factor overlays (side by side, each at least :data:`FACTOR_SIDE` px so a layer
    name and the factor count fit on one line), the legend of each factor's strongest
    channels under them, no blank band anywhere."""
    if len(images) != factorization.maps.shape[0]:
        raise ValueError(f"{len(images)} images for {factorization.maps.shape[0]} factor maps")
    panels = [
        factor_overlay(image, factorization.maps[i], min_side=FACTOR_SIDE)
        for i, image in enumerate(images)
    ]
    overlays = add_caption(grid(panels, columns=len(panels)), title)
    return stack([overlays, factor_legend(factorization.strongest_channels(5))], pad=0)


def unit_overlays(image: Image.Image, maps: Tensor, channels: Sequence[int]) -> list[Image.Image]:
    """Each chosen unit's map (scaled to its own max) overlaid on a grey copy of the image
    at input size, as the report draws its maps."""
    base = grey_copy(image)
    out = []
    for c in channels:
        m = maps[c].detach().float().clamp(min=0)
        peak = float(m.max())
        heat = m / peak if peak > 0 else m
        out.append(add_caption(overlay(base, heat), f"unit {c} (max {peak:.2f})"))
    return out
