"""The atlas as a static site from templates (``atlas_index.html``, ``atlas_layer.html``):
an index page and one page per layer, every picture embedded (nothing fetched when opened),
every label in HTML (wrapped, never clipped)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from .._atlas import FLAT_STD
from ._behaviour import filter_tiles, rgb_filter_tiles
from ._dataset import thumbnail_map
from ._images import tensor_to_image
from ._pages import ColorBar, color_bar, data_uri, render_page

if TYPE_CHECKING:
    from .._atlas import Atlas, ChannelView, LayerView

__all__ = ["atlas_pages", "layer_filename"]


def layer_filename(name: str) -> str:
    return "layer_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".html"


def _enlarge(image: Image.Image, side: int) -> Image.Image:
    resample = (
        Image.Resampling.NEAREST if max(image.size) < side // 2 else Image.Resampling.BILINEAR
    )
    return image.resize((side, side), resample)


@dataclass(frozen=True)
class Tile:
    uri: str
    label: str
    alt: str


@dataclass(frozen=True)
class ChannelCard:
    channel: int
    visualization: str | None  # data URI, None when flat
    reason: str | None  # why there is no visualization
    filter: str | None
    filter_caption: str
    filter_bar: ColorBar | None  # for single-channel kernels drawn red/blue
    patches: tuple[Tile, ...]
    patch_note: str
    reached: str


def _channel(layer: LayerView, view: ChannelView, sample: int) -> ChannelCard:
    reason = None
    reached = "" if view.reached is None else f"mean activation reached {view.reached:.3g}, "
    if view.flat:
        reason = (
            "No feature visualization: gradient ascent could not drive this unit — the picture "
            f"stayed flat ({reached}pixel standard deviation {view.pixel_std:.3f}; flat: the unit "
            f"stays silent on the picture, or the picture has no more contrast than the starting "
            f"noise, a standard deviation under {FLAT_STD}, and reaches under a tenth of the "
            "strongest dataset activation). Its top dataset patches below show what does excite it."
        )
    if view.low_contrast:
        reason = (
            f"Low contrast: a nearly uniform picture (pixel standard deviation "
            f"{view.pixel_std:.3f}) already drives this unit ({reached.rstrip(', ')}); its top "
            "dataset patches show the patterns that drive it most."
        )
    if view.silent:
        reason = (reason + " " if reason else "") + (
            f"The unit did not fire on any of the {sample} sampled items (every activation ≤ 0), "
            "so the patches below are arbitrary."
        )
    picture = (
        None
        if view.flat or view.visualization is None
        else data_uri(_enlarge(tensor_to_image(view.visualization), 224))
    )
    filt, filter_caption, filter_bar = _filter(view)
    pictures = layer.patch_pictures.get(view.channel, [])
    side = 160 if view.flat else 112
    tiles = tuple(
        Tile(
            data_uri(_enlarge(p, side)),
            f"#{patch.index} · {patch.activation:.2f}",
            f"item {patch.index}",
        )
        for p, patch in zip(pictures, view.patches, strict=False)
    )
    return ChannelCard(
        view.channel,
        picture,
        reason,
        filt,
        filter_caption,
        filter_bar,
        tiles,
        "Top dataset patches, strongest first: the receptive field of the most active position, "
        "labelled with the dataset item and the activation.",
        "" if view.reached is None else f"mean activation reached: {view.reached:.3g}",
    )


def _filter(view: ChannelView) -> tuple[str | None, str, ColorBar | None]:
    """The channel's first-layer filter: RGB kernels as colours (grey = 0), any other as
    the first input channel's kernel in red/blue with its colour bar."""
    if view.weights is None:
        return None, "", None
    if view.weights.shape[0] == 3:
        tile = rgb_filter_tiles(view.weights[None])[0]
        return (
            data_uri(_enlarge(tile, 112)),
            "RGB weights as colours, mid-grey = 0, scaled to the filter's largest |weight|.",
            None,
        )
    kernel = view.weights[:1]
    limit = float(kernel.abs().max()) or 1.0
    caption = "weights: red positive, blue negative, white zero" + (
        f" (input channel 0 of {view.weights.shape[0]})" if view.weights.shape[0] > 1 else ""
    )
    return (
        data_uri(_enlarge(filter_tiles(kernel)[0], 112)),
        caption + ".",
        color_bar("bwr", -limit, limit, "weight"),
    )


def _layer_page(atlas: Atlas, layer: LayerView) -> str:
    rf = (
        f"receptive field {layer.receptive_field[0]}×{layer.receptive_field[1]} px"
        if layer.receptive_field
        else "receptive field: the whole image"
    )
    return render_page(
        "atlas_layer.html",
        title=f"{atlas.model} · {layer.name}",
        subtitle=f"cnnlens atlas · dataset {atlas.dataset}",
        layer=layer.name,
        rf=rf,
        has_filters=any(c.weights is not None for c in layer.channels),
        channels=[_channel(layer, v, len(atlas.pictures)) for v in layer.channels],
    )


def _tile(atlas: Atlas, index: int, side: int = 96) -> Tile:
    label = atlas.labels[index]
    return Tile(
        data_uri(
            atlas.pictures[index].convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
        ),
        f"#{index}" + (f" {label}" if label else ""),
        f"item {index}",
    )


def atlas_pages(atlas: Atlas) -> dict[str, str]:
    """File name → HTML for the whole site (``index.html`` first)."""
    tmap = None
    if len(atlas.pictures):
        side = 32 if len(atlas.pictures) <= 900 else 24
        tmap = data_uri(thumbnail_map(atlas.points, atlas.pictures, tile=side))
    queries = [
        {
            "query": _tile(atlas, q.query, 128),
            "feature": [_tile(atlas, i) for i in q.feature],
            "pixel": [_tile(atlas, i) for i in q.pixel],
        }
        for q in atlas.queries
    ]
    pages = {
        "index.html": render_page(
            "atlas_index.html",
            title=f"cnnlens atlas — {atlas.model}",
            subtitle=f"dataset {atlas.dataset}",
            layers=[
                {
                    "name": v.name,
                    "file": layer_filename(v.name),
                    "channels": len(v.channels),
                    "flat": sum(c.flat for c in v.channels),
                }
                for v in atlas.layers
            ],
            map_layer=atlas.map_layer,
            items=len(atlas.pictures),
            tmap=tmap,
            queries=queries,
        )
    }
    for view in atlas.layers:
        pages[layer_filename(view.name)] = _layer_page(atlas, view)
    return pages
