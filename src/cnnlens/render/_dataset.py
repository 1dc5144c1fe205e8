"""Pictures for the dataset tools: neighbour strips, embedding maps (scatter, thumbnail
grid, interactive HTML page) and rows of maximally activating patches."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ._images import fit_text, grid, stack
from ._pages import data_uri, render_page
from ._plots import fit_figure_text

__all__ = [
    "embedding_html",
    "embedding_scatter",
    "neighbours_figure",
    "patch_rows",
    "thumbnail_map",
]


def _row_title(image: Image.Image, title: str, width: int = 150) -> Image.Image:
    """``image`` with ``title`` written in a white column on its left, wrapped to fit."""
    lines, font, line_height = fit_text(title, width - 10)
    height = max(image.height, line_height * len(lines) + 4)
    out = Image.new("RGB", (image.width + width, height), "white")
    out.paste(image, (width, 0))
    draw = ImageDraw.Draw(out)
    top = max(2, (image.height - line_height * len(lines)) // 2)
    for i, line in enumerate(lines):
        draw.text((6, top + line_height * i), line, fill="black", font=font)
    return out


def neighbours_figure(
    query: Image.Image,
    query_caption: str,
    feature: Sequence[tuple[Image.Image, str]],
    pixel: Sequence[tuple[Image.Image, str]] | None = None,
    *,
    tile: int = 112,
    feature_title: str = "feature space",
    pixel_title: str = "pixel space",
) -> Image.Image:
    """Query | its feature-space neighbours, and below | its pixel-space neighbours."""
    size = (tile, tile)
    rows = []
    blank = Image.new("RGB", size, "white")
    for title, items, first in (
        (feature_title, feature, (query, query_caption)),
        (pixel_title, pixel or [], (blank, "")),
    ):
        if not items:
            continue
        images = [first[0], *(im for im, _ in items)]
        captions = [first[1], *(c for _, c in items)]
        rows.append(
            _row_title(grid(images, columns=len(images), captions=captions, tile=size), title)
        )
    return stack(rows)


def _palette(n: int) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return np.array([cmap(i % cmap.N) for i in range(max(n, 1))])


def embedding_scatter(
    points: np.ndarray,
    labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    *,
    title: str = "",
    size: tuple[float, float] = (8.0, 7.0),
    dpi: int = 110,
) -> Image.Image:
    """A 2-D scatter plot coloured by label (matplotlib, Agg canvas), with a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xy = np.asarray(points, dtype=np.float64)[:, :2]
    figure = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    marker = max(2.0, min(20.0, 16000.0 / max(len(xy), 1)))
    if labels is None or (np.asarray(labels) < 0).all():
        axes.scatter(xy[:, 0], xy[:, 1], s=marker, c="#3060a0", linewidths=0)
    else:
        labels = np.asarray(labels)
        present = sorted(int(v) for v in np.unique(labels))
        colours = _palette(max(present) + 1)
        for value in present:
            mask = labels == value
            name = (
                "unlabelled"
                if value < 0
                else (
                    classes[value] if classes is not None and value < len(classes) else str(value)
                )
            )
            colour = "#999999" if value < 0 else colours[value]
            axes.scatter(xy[mask, 0], xy[mask, 1], s=marker, color=colour, linewidths=0, label=name)
        axes.legend(loc="best", fontsize=8, markerscale=max(1.0, 24.0 / marker), frameon=True)
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title)
    fit_figure_text(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


def grid_assignment(points: np.ndarray, columns: int, rows: int) -> np.ndarray:
    """Each point's cell (row * columns + col) in a ``rows`` x ``columns`` grid over the
    points' bounding box: the assignment of points to distinct cells with the least total
    squared displacement (Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    xy = np.asarray(points, dtype=np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    unit = (xy - lo) / np.where(hi > lo, hi - lo, 1.0)
    cy, cx = np.meshgrid(
        (np.arange(rows) + 0.5) / rows, (np.arange(columns) + 0.5) / columns, indexing="ij"
    )
    centres = np.stack([cx.ravel(), 1.0 - cy.ravel()], axis=1)
    cost = ((unit[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    points_idx, cells = linear_sum_assignment(cost)
    out = np.empty(len(xy), dtype=np.int64)
    out[points_idx] = cells
    return out


def thumbnail_map(
    points: np.ndarray, images: Sequence[Image.Image], *, tile: int = 32, columns: int | None = None
) -> Image.Image:
    """The classic t-SNE image map: each picture in its own grid cell, cells assigned so
    nearby points stay nearby (see :func:`grid_assignment`)."""
    if len(images) != len(points):
        raise ValueError(f"{len(images)} images for {len(points)} points")
    n = len(images)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    cells = grid_assignment(points, columns, rows)
    out = Image.new("RGB", (columns * tile, rows * tile), "white")
    for image, cell in zip(images, cells, strict=True):
        r, c = divmod(int(cell), columns)
        out.paste(
            image.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR),
            (c * tile, r * tile),
        )
    return out


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    """At most ``side`` pixels on the long side (small pictures keep their size)."""
    image = image.convert("RGB")
    if max(image.size) > side:
        image = image.copy()
        image.thumbnail((side, side), Image.Resampling.BILINEAR)
    return image


def embedding_html(
    points: np.ndarray,
    images: Sequence[Image.Image],
    captions: Sequence[str],
    labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    *,
    title: str = "Embedding",
    thumbnail: int = 48,
) -> str:
    """A self-contained HTML page: the map drawn on a canvas, each point's picture (embedded
    as a PNG data URL) and caption shown while the mouse hovers near it."""
    if not len(images) == len(points) == len(captions):
        raise ValueError("points, images and captions differ in length")
    label_values = (
        np.full(len(points), -1, dtype=np.int64) if labels is None else np.asarray(labels)
    )
    colours = [
        "#{:02x}{:02x}{:02x}".format(*(int(255 * c) for c in rgba[:3]))
        for rgba in _palette(max(len(classes or []), int(label_values.max(initial=0)) + 1))
    ]
    payload = {
        "points": np.asarray(points, dtype=np.float64)[:, :2].round(4).tolist(),
        "labels": [int(v) for v in label_values],
        "classes": list(classes or []),
        "colours": colours,
        "captions": list(captions),
        "images": [data_uri(_thumbnail(im, thumbnail)) for im in images],
    }
    # tojson escapes <, >, & and quotes, so the data cannot end its script element early.
    return render_page("embedding.html", title=title, subtitle="", payload=payload)


def patch_rows(
    rows: Sequence[tuple[str, Sequence[Image.Image], Sequence[str]]], *, tile: int = 64
) -> Image.Image:
    """One row per channel: a title on the left, then its patches with captions."""
    width = max(len(images) for _, images, _ in rows)
    out_rows = []
    for title, images, captions in rows:
        cells = list(images)
        caps = list(captions)
        while len(cells) < width:  # a channel with fewer patches keeps the columns aligned
            cells.append(Image.new("RGB", (tile, tile), "white"))
            caps.append("")
        out_rows.append(
            _row_title(grid(cells, columns=width, captions=caps, tile=(tile, tile)), title, 90)
        )
    return stack(out_rows)
