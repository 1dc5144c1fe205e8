"""The atlas as a static site: an index page and one page per layer, every picture
embedded (nothing fetched when opened)."""

from __future__ import annotations

import html
import re

from PIL import Image

from ._behaviour import filter_tiles, rgb_filter_tiles
from ._dataset import neighbours_figure, thumbnail_map
from ._html import figure, page
from ._images import grid, tensor_to_image

__all__ = ["atlas_pages", "layer_filename"]


def layer_filename(name: str) -> str:
    return "layer_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".html"


def _enlarge(image: Image.Image, side: int) -> Image.Image:
    resample = (
        Image.Resampling.NEAREST if max(image.size) < side // 2 else Image.Resampling.BILINEAR
    )
    return image.resize((side, side), resample)


def _layer_page(atlas: object, layer: object) -> str:
    from .._atlas import Atlas, LayerView

    assert isinstance(atlas, Atlas)
    assert isinstance(layer, LayerView)
    rf = (
        f"receptive field {layer.receptive_field[0]}×{layer.receptive_field[1]} px"
        if layer.receptive_field
        else "receptive field: whole image"
    )
    parts = [
        '<nav><a href="index.html">← atlas index</a></nav>',
        f'<p class="lead">Layer <b>{html.escape(layer.name)}</b> ({rf}). For each channel: what maximizes it '
        "(feature visualization by regularized gradient ascent), the dataset patches that excite it most "
        "(the receptive field of the strongest position, strongest first)"
        + (
            ", and its filter (RGB, grey = 0)"
            if any(c.weights is not None for c in layer.channels)
            else ""
        )
        + ".</p>",
    ]
    for view in layer.channels:
        parts.append(f'<h3>channel {view.channel}</h3><div class="panels">')
        if view.visualization is not None:
            parts.append(
                figure(
                    _enlarge(tensor_to_image(view.visualization), 160),
                    "<b>feature visualization</b>",
                    alt=f"visualization {view.channel}",
                )
            )
        if view.weights is not None:
            tile = (
                rgb_filter_tiles(view.weights[None])
                if view.weights.shape[0] == 3
                else filter_tiles(view.weights[:1])
            )[0]
            parts.append(figure(_enlarge(tile, 96), "<b>filter</b>", alt=f"filter {view.channel}"))
        pictures = layer.patch_pictures.get(view.channel, [])
        if pictures:
            captions = [f"#{p.index} {p.activation:.2f}" for p in view.patches]
            strip = grid(
                [_enlarge(p, 72) for p in pictures], columns=len(pictures), captions=captions, pad=3
            )
            parts.append(
                figure(
                    strip,
                    "<b>top dataset patches</b> (item, activation)",
                    wide=True,
                    alt=f"patches {view.channel}",
                )
            )
        parts.append("</div>")
    return page(
        f"{atlas.model} · {layer.name}", f"cnnlens atlas · dataset {atlas.dataset}", "".join(parts)
    )


def atlas_pages(atlas: object) -> dict[str, str]:
    """File name → HTML for the whole site (``index.html`` first)."""
    from .._atlas import Atlas

    assert isinstance(atlas, Atlas)
    items = "".join(
        f'<li><a href="{layer_filename(v.name)}">{html.escape(v.name)}</a> — {len(v.channels)} channels</li>'
        for v in atlas.layers
    )
    parts = [
        '<p class="lead">An atlas of what the network has learned: one page per layer with each channel\'s feature '
        "visualization and top dataset patches; below, the dataset as the network sees it.</p>",
        f"<h2>Layers</h2><ul>{items}</ul>",
        "<h2>The dataset as the network sees it</h2>",
        f'<p class="lead">t-SNE of the globally pooled <b>{html.escape(atlas.map_layer)}</b> features of '
        f"{len(atlas.pictures)} items, each thumbnail in a grid cell near its point: similar images end up together.</p>",
    ]
    if len(atlas.pictures):
        side = 32 if len(atlas.pictures) <= 900 else 24
        tmap = thumbnail_map(atlas.points, atlas.pictures, tile=side)
        parts.append(
            '<div class="panels">'
            + figure(tmap, "<b>t-SNE image map</b>", wide=True, alt="t-SNE map")
            + "</div>"
        )
    if atlas.queries:
        parts.append(
            '<h2>Nearest neighbours: feature space vs pixel space</h2><p class="lead">For a query image, its nearest '
            "neighbours by the network's features (top row) and by raw pixels (bottom row). Feature neighbours share "
            'the concept even when pose or position differ; pixel neighbours share layout and colour.</p><div class="panels">'
        )
        for q in atlas.queries:
            fig = neighbours_figure(
                atlas.pictures[q.query],
                f"query #{q.query} {atlas.labels[q.query]}",
                [(atlas.pictures[i], atlas.labels[i]) for i in q.feature],
                [(atlas.pictures[i], atlas.labels[i]) for i in q.pixel],
                tile=72,
            )
            parts.append(
                figure(
                    fig,
                    f"<b>query #{q.query}</b> {html.escape(atlas.labels[q.query])}",
                    wide=True,
                    alt=f"query {q.query}",
                )
            )
        parts.append("</div>")
    pages = {
        "index.html": page(
            f"cnnlens atlas — {atlas.model}", f"dataset {atlas.dataset}", "".join(parts)
        )
    }
    for view in atlas.layers:
        pages[layer_filename(view.name)] = _layer_page(atlas, view)
    return pages
