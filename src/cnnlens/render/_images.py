"""Colormaps, overlays, diverging maps and labelled grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    "PICTURE_FORMATS",
    "add_caption",
    "caption_band",
    "colorbar_image",
    "colormap",
    "diverging",
    "fit_text",
    "grey_copy",
    "grid",
    "overlay",
    "save_picture",
    "signed_limit",
    "stack",
    "tensor_to_image",
    "upsample",
]


def _as_2d(values: Tensor) -> np.ndarray:
    array = values.detach().float().cpu()
    while array.dim() > 2:
        if array.shape[0] != 1:
            raise ValueError(f"expected a single map (H, W), got shape {tuple(values.shape)}")
        array = array[0]
    return array.numpy()


def upsample(values: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of a map (H, W) or maps (B, H, W) to ``size``."""
    squeeze = values.dim() == 2
    maps = values.unsqueeze(0) if squeeze else values
    out = F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]
    return out[0] if squeeze else out


def colormap(
    values: Tensor, cmap: str = "inferno", *, vmin: float | None = None, vmax: float | None = None
) -> Image.Image:
    """A map (H, W) to an RGB picture; scaled to [vmin, vmax] (default: the map's range)."""
    array = _as_2d(values)
    lo = float(array.min()) if vmin is None else vmin
    hi = float(array.max()) if vmax is None else vmax
    scaled = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    rgba = colormaps[cmap](np.clip(scaled, 0.0, 1.0))
    return Image.fromarray((rgba[..., :3] * 255).astype(np.uint8), "RGB")


def signed_limit(values: Tensor) -> float:
    """The symmetric colour range of a signed map: the 99.5th percentile of |values|, so
    single outliers don't wash out the map (the largest |value| where that is 0; 1 for an
    all-zero map)."""
    magnitude = np.abs(_as_2d(values))
    return float(np.percentile(magnitude, 99.5)) or float(magnitude.max()) or 1.0


def diverging(values: Tensor, cmap: str = "bwr", *, limit: float | None = None) -> Image.Image:
    """A signed map (H, W) with zero in the middle of the colormap (white), symmetric range
    ± ``limit`` (default: :func:`signed_limit`)."""
    array = _as_2d(values)
    if limit is None:
        limit = signed_limit(values)
    return colormap(torch.from_numpy(array), cmap, vmin=-limit, vmax=limit)


def overlay(
    image: Image.Image, heat: Tensor, *, cmap: str = "jet", alpha: float = 0.5
) -> Image.Image:
    """A heatmap (h, w) in [0, 1] upsampled onto ``image``; more opaque where it is high."""
    base = image.convert("RGB")
    values = torch.as_tensor(_as_2d(heat))
    if tuple(values.shape) != (base.height, base.width):
        values = upsample(values, (base.height, base.width))
    values = values.clamp(0, 1)
    colors = np.asarray(colormap(values, cmap, vmin=0.0, vmax=1.0), dtype=np.float32)
    weight = (alpha * values.numpy())[..., None]
    pixels = np.asarray(base, dtype=np.float32)
    mixed = pixels * (1 - weight) + colors * weight
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8), "RGB")


def grey_copy(image: Image.Image) -> Image.Image:
    """A dimmed grey copy of ``image`` (RGB) to draw colours over, so the colours read as
    the scale and not the scene (the report's maps and the factorization lens use it)."""
    grey = image.convert("L").point(lambda v: int(40 + 0.6 * v))
    return grey.convert("RGB")


def tensor_to_image(pixels: Tensor) -> Image.Image:
    """(3, H, W) or (1, H, W) or (H, W) values in [0, 1] to a picture."""
    array = pixels.detach().float().cpu().clamp(0, 1)
    if array.dim() == 2:
        array = array.unsqueeze(0)
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return Image.fromarray((array.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _text_width(text: str, font: Font) -> float:
    return float(font.getlength(text))


def _wrap(text: str, width: float, font: Font) -> list[str] | None:
    """``text`` broken at spaces into lines no wider than ``width``; None when a single
    word is wider."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if _text_width(candidate, font) <= width:
                line = candidate
                continue
            if _text_width(word, font) > width:
                return None
            lines.append(line)
            line = word
        lines.append(line)
    return lines


def _break_words(text: str, width: float, font: Font) -> list[str]:
    """Lines no wider than ``width``, breaking inside words where one does not fit."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for char in paragraph:
            if line and _text_width(line + char, font) > width:
                lines.append(line)
                line = "" if char == " " else char
            else:
                line += char
        lines.append(line)
    return lines


def fit_text(
    text: str, width: int, *, size: int = 14, min_size: int = 9
) -> tuple[list[str], Font, int]:
    """Lines of ``text`` that fit ``width`` pixels: wrapped at spaces, the font shrunk (down
    to ``min_size``) only when a single word is too wide, words broken as a last resort.
    Returns (lines, font, line height)."""
    for points in range(size, min_size - 1, -1):
        font = _font(points)
        lines = _wrap(text, width, font)
        if lines is not None:
            return lines, font, points + 4
    font = _font(min_size)
    return _break_words(text, width, font), font, min_size + 4


def caption_band(text: str, width: int, *, size: int = 14) -> int:
    """The height of the white band :func:`add_caption` draws ``text`` in."""
    lines, _, line_height = fit_text(text, max(1, width - 6), size=size)
    return line_height * len(lines) + 4


def add_caption(
    image: Image.Image, text: str, *, size: int = 14, band: int | None = None
) -> Image.Image:
    """The picture with ``text`` in a white band above it, wrapped (and shrunk where a word
    is too long) to the picture's width so nothing is cut off. ``band``: at least this tall
    (to align the pictures of a grid)."""
    lines, font, line_height = fit_text(text, max(1, image.width - 6), size=size)
    height = max(line_height * len(lines) + 4, band or 0)
    out = Image.new("RGB", (image.width, image.height + height), "white")
    out.paste(image.convert("RGB"), (0, height))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * line_height), line, fill="black", font=font)
    return out


def colorbar_image(
    cmap: str, vmin: float, vmax: float, width: int, label: str = "", *, ticks: int = 3
) -> Image.Image:
    """A horizontal colour bar ``width`` pixels wide: the colormap, ``ticks`` values under it
    (first and last aligned to the ends), and ``label`` wrapped below."""
    from ._pages import format_number

    strip = colormap(
        torch.linspace(0, 1, max(2, width - 12)).expand(12, -1), cmap, vmin=0.0, vmax=1.0
    )
    font = _font(12)
    lines, label_font, line_height = (
        fit_text(label, width - 12, size=12) if label else ([], font, 0)
    )
    out = Image.new("RGB", (width, 12 + 4 + 16 + line_height * len(lines) + 4), "white")
    out.paste(strip, (6, 2))
    draw = ImageDraw.Draw(out)
    inner = width - 12
    for i in range(ticks):
        text = format_number(vmin + (vmax - vmin) * i / (ticks - 1))
        length = font.getlength(text)
        x = 6 + inner * i / (ticks - 1) - length / 2
        x = min(max(x, 6), 6 + inner - length)
        draw.text((x, 16), text, fill="black", font=font)
    for i, line in enumerate(lines):
        draw.text((6, 33 + i * line_height), line, fill="#333333", font=label_font)
    return out


def grid(
    images: Sequence[Image.Image],
    *,
    columns: int | None = None,
    captions: Sequence[str] | None = None,
    pad: int = 4,
    tile: tuple[int, int] | None = None,
    background: str = "white",
) -> Image.Image:
    """Pictures in a grid, row by row, each optionally captioned and resized to ``tile`` (W, H).
    Columns are as wide as the widest picture; each row is as tall as its tallest picture
    (a short row, such as a legend under a large panel, leaves no band below it)."""
    if not images:
        raise ValueError("grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    cells = [
        im.convert("RGB")
        if tile is None
        else im.convert("RGB").resize(
            tile, Image.Resampling.NEAREST if min(im.size) < 64 else Image.Resampling.BILINEAR
        )
        for im in images
    ]
    if captions is not None:
        band = max(caption_band(t, c.width) for c, t in zip(cells, captions, strict=True))
        cells = [add_caption(c, t, band=band) for c, t in zip(cells, captions, strict=True)]
    columns = columns or min(len(cells), 8)
    rows = (len(cells) + columns - 1) // columns
    width = max(c.width for c in cells)
    heights = [max(c.height for c in cells[r * columns : (r + 1) * columns]) for r in range(rows)]
    tops = [pad + sum(heights[:r]) + r * pad for r in range(rows)]
    out = Image.new(
        "RGB", (columns * (width + pad) + pad, tops[-1] + heights[-1] + pad), background
    )
    for i, cell in enumerate(cells):
        r, c = divmod(i, columns)
        out.paste(cell, (pad + c * (width + pad), tops[r]))
    return out


def stack(rows: Sequence[Image.Image], pad: int = 4) -> Image.Image:
    """Pictures one under another, left-aligned, each at its own height."""
    width = max(r.width for r in rows)
    height = sum(r.height for r in rows) + pad * (len(rows) - 1)
    out = Image.new("RGB", (width, height), "white")
    y = 0
    for row in rows:
        out.paste(row.convert("RGB"), (0, y))
        y += row.height + pad
    return out


PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
"""The picture formats written, by file suffix (PNG for any other name)."""


def save_picture(image: Image.Image, path: str | Path) -> Path:
    """Write ``image`` in the format its suffix names (:data:`PICTURE_FORMATS`; PNG for
    another suffix), creating parent folders."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    form = PICTURE_FORMATS.get(target.suffix.lower(), "PNG")
    if form == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha channel
    image.save(target, format=form, **({"quality": 92} if form == "JPEG" else {}))
    return target
