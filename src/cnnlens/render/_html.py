"""The report page: turns a :class:`cnnlens._report.Report` into the views the
``report.html`` template lays out (pictures as data URIs, colour bars, captions written
from the options used). Nothing here computes an attribution."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image
from torch import Tensor

from ._captions import MethodText, baseline_words, count, layer_words, method_text
from ._images import colormap, diverging, grey_copy, grid, overlay, signed_limit, upsample
from ._pages import ColorBar, color_bar, data_uri, render_page

if TYPE_CHECKING:
    from .._report import Coincidence, ImageReport, LayerNote, MethodResult, Report

__all__ = ["MapView", "data_uri", "method_maps", "report_html"]

MAP_SIDE = 224  # every map is drawn at least this large (the model's usual input side)


@dataclass(frozen=True)
class MapView:
    uri: str
    alt: str
    bar: ColorBar
    caption: str
    pixelated: bool = False


@dataclass(frozen=True)
class CurvesView:
    deletion: str  # SVG polyline points
    insertion: str
    top: str
    deletion_auc: float
    insertion_auc: float
    short_target: str
    caption: str


@dataclass(frozen=True)
class PanelView:
    id: str
    method: str
    text: MethodText
    seconds: float
    maps: tuple[MapView, ...]
    curves: CurvesView | None
    notes: tuple[str, ...]
    error: str | None
    options: dict[str, str]


def _side(picture: Image.Image) -> tuple[int, int]:
    scale = max(1.0, MAP_SIDE / min(picture.size))
    return round(picture.width * scale), round(picture.height * scale)


def method_maps(
    result: MethodResult, picture: Image.Image, text: MethodText
) -> tuple[MapView, ...]:
    """The two maps of a panel: importance over the photo, and the signed (or, for
    Grad-CAM, one-sided) map, each with its colour bar in the method's own units."""
    explanation = result.explanation
    assert explanation is not None
    size = _side(picture)
    # Drawn over a dimmed grey copy of the photo, so the colours read as the scale and not
    # the scene.
    base = grey_copy(picture.resize(size, Image.Resampling.BILINEAR))
    a = explanation.attribution[0].detach().float().cpu()
    kind = explanation.kind
    if kind == "input":
        importance = a.abs().amax(dim=0)
        limit = signed_limit(importance)
        signed: Tensor = a.sum(dim=0)
        unit, coarse = "|attribution|, max over channels", False
    elif kind == "occlusion":
        signed = a.mean(dim=0)
        importance = signed.clamp(min=0)
        limit = float(importance.max()) or 1.0
        unit, coarse = "score drop", False
    else:  # cam / gradcam: (h, w) at the layer
        signed = a
        importance = a - a.min() if kind == "cam" else a
        limit = float(importance.max()) or 1.0
        unit, coarse = ("CAM − min(CAM)" if kind == "cam" else text.title), True
    heat = (upsample(importance, (size[1], size[0])) / limit).clamp(0, 1)
    left = MapView(
        data_uri(overlay(base, heat, alpha=0.85)),
        f"{result.method}: importance over the photo",
        color_bar("jet", 0.0, limit, f"{unit} (opacity follows the value)"),
        text.overlay,
    )
    if kind == "gradcam":
        top = float(signed.max()) or 1.0
        picture_right = colormap(signed, "Reds", vmin=0.0, vmax=top)
        bar = color_bar("Reds", 0.0, top, f"{text.title} (≥ 0)")
    else:
        bound = (
            float(signed.abs().max()) or 1.0
            if coarse or kind == "occlusion"
            else signed_limit(signed)
        )
        picture_right = diverging(signed, limit=bound)
        label = {"occlusion": "score drop when hidden", "cam": "Σ_k w_k A^k"}.get(
            kind, "sum over channels"
        )
        bar = color_bar("bwr", -bound, bound, label)
    resample = Image.Resampling.NEAREST if coarse else Image.Resampling.BILINEAR
    right = MapView(
        data_uri(picture_right.resize(size, resample)),
        f"{result.method}: signed map",
        bar,
        text.signed + (f" Shown at {signed.shape[-2]}×{signed.shape[-1]}." if coarse else ""),
        pixelated=coarse,
    )
    return left, right


def _polyline(curve: Sequence[float], top: float) -> str:
    n = len(curve) - 1
    return " ".join(
        f"{270 * i / n:.1f},{110 - 110 * min(v, top) / top:.1f}" for i, v in enumerate(curve)
    )


def _curves(result: MethodResult, target: str, zero_colour: Sequence[int]) -> CurvesView | None:
    curves = result.curves
    if curves is None:
        return None
    deletion = curves.deletion_curve[0].tolist()
    insertion = curves.insertion_curve[0].tolist()
    top = max(0.1, math.ceil(10 * max(deletion + insertion)) / 10)
    order = (
        "ranked by the signed map (right), most positive first"
        if curves.ranking == "signed"
        else "ranked by magnitude (the left map), largest first"
    )
    steps = len(deletion) - 1
    return CurvesView(
        _polyline(deletion, top),
        _polyline(insertion, top),
        f"{top:.1f}",
        float(curves.deletion_auc[0]),
        float(curves.insertion_auc[0]),
        target if len(target) <= 14 else target[:13] + "…",
        f"The {curves.score} of {target} as pixels are deleted (set to "
        f"{baseline_words(curves.baseline, zero_colour)}) or inserted into a copy blurred with "
        f"σ = {curves.blur_sigma:g} px, {order}, in {steps} steps.",
    )


def _coincidence_notes(
    method: str, found: Sequence[Coincidence], titles: dict[str, str]
) -> list[str]:
    notes = []
    for c in found:
        if method != c.second:
            continue
        first, second = titles.get(c.first, c.first), titles.get(c.second, c.second)
        if c.exact:
            notes.append(
                f"{second} gives the same map as {first} here, up to the ReLU and a scale (largest "
                f"deviation {100 * c.difference:.2g}% of the peak). Why: this model ends in global "
                "average pooling and a linear layer, so the gradient of the score with respect to "
                "every position of feature map k is w_k/(h·w); Grad-CAM's channel weights are then "
                "CAM's class weights divided by h·w, and Grad-CAM is ReLU(CAM)/(h·w)."
            )
        else:
            notes.append(
                f"{second} gives nearly the same map as {first} here (correlation of the "
                f"heatmaps r = {c.correlation:.3f})."
            )
    return notes


def _options_shown(options: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in options.items() if k not in ("progress", "batch_size")}


def _panel(
    result: MethodResult,
    image: ImageReport,
    target: int,
    report: Report,
    found: Sequence[Coincidence],
) -> PanelView:
    label = next((lb for c, lb, _ in image.top if c == target), str(target))
    explanation = result.explanation
    layer = explanation.layer if explanation is not None else None
    total = None
    if explanation is not None and result.method in ("deeplift", "lrp"):
        total = float(explanation.attribution[0].sum())
    # LRP reports its score and what the biases absorbed, so the caption can account for both
    extras = {k: float(v[0]) for k, v in explanation.extras.items()} if explanation else {}
    text = method_text(
        result.method,
        result.options,
        target=label,
        zero_colour=report.zero_colour,
        layer=layer_words(report.layers.get(layer) if layer else None, layer),
        total=total,
        score=extras.get("score") if result.method == "lrp" else None,
        absorbed=extras.get("absorbed"),
    )
    titles = {
        r: method_text(r, {}, target=label, zero_colour=()).title
        for r in {c.first for c in found} | {c.second for c in found}
    }
    return PanelView(
        id=f"{_slug(image.name)}-{target}-{result.method}",
        method=result.method,
        text=text,
        seconds=result.seconds,
        maps=method_maps(result, image.picture, text) if explanation is not None else (),
        curves=_curves(result, label, report.zero_colour),
        notes=tuple(_coincidence_notes(result.method, found, titles)),
        error=result.error,
        options=_options_shown(result.options),
    )


@dataclass(frozen=True)
class TrustView:
    """The trust table of one class: a row per method with a value per metric; ``best``
    marks the best value of each column."""

    metrics: tuple[str, ...]
    labels: tuple[str, ...]
    rows: tuple[
        tuple[str, str, str, tuple[tuple[str, bool], ...]], ...
    ]  # id, title, ranking, cells
    caption: str


def _trust(results: Sequence[MethodResult], image: ImageReport, target: int) -> TrustView | None:
    from .._report import ROAD_FRACTIONS, TRUST_METRICS
    from ..evaluate._trust import BETTER, LABELS

    rows = [r for r in results if r.trust is not None]
    if not rows:
        return None
    values = {
        m: [float(r.trust.values[m][0]) for r in rows if r.trust is not None] for m in TRUST_METRICS
    }
    best = {m: (min(v) if BETTER[m] == "lower" else max(v)) for m, v in values.items() if v}
    label = next((lb for c, lb, _ in image.top if c == target), str(target))
    table_rows = []
    for i, r in enumerate(rows):
        assert r.trust is not None
        cells = tuple((f"{values[m][i]:.3f}", values[m][i] == best[m]) for m in TRUST_METRICS)
        title = method_text(r.method, {}, target=label, zero_colour=()).title
        table_rows.append(
            (f"{_slug(image.name)}-{target}-{r.method}", title, r.trust.ranking, cells)
        )
    fractions = ", ".join(f"{f:g}" for f in ROAD_FRACTIONS)
    caption = (
        "Which map to believe: the faithfulness of each map above, best value of each column in "
        "bold. Deletion and insertion are the areas under the curves drawn in the panels; ROAD "
        f"(Rong et al. 2022) removes the pixels ranked most and least important with noisy linear "
        f"imputation at {fractions} of the image and reports the mean of (least − most) / 2 "
        "of the class probability; infidelity (Yeh et al. 2019, normalized) compares the map "
        "with the score changes under small Gaussian perturbations. Ranking: how the pixels were "
        "ordered (signed evidence or absolute value). The checks that re-run the methods "
        "(max-sensitivity, model randomization) are not on this page: `cnnlens evaluate` runs "
        "them, and the cnnlens docs (docs/trust.md) describe every metric."
    )
    return TrustView(
        tuple(TRUST_METRICS), tuple(LABELS[m] for m in TRUST_METRICS), tuple(table_rows), caption
    )


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-") or "image"


@dataclass(frozen=True)
class TileView:
    uri: str
    label: str


@dataclass(frozen=True)
class DepthView:
    layer: str
    description: str
    tiles: tuple[TileView, ...]
    bar: ColorBar
    caption: str


def _depth(
    name: str, maps: Tensor, values: Tensor, ids: Tensor, note: LayerNote | None
) -> DepthView:
    channels = ids.tolist()
    chosen = maps[channels].detach().float().cpu()
    vmax = float(chosen.max()) if chosen.numel() else 1.0
    vmin = min(0.0, float(chosen.min())) if chosen.numel() else 0.0
    side = max(MAP_SIDE // 2, chosen.shape[-1])
    tiles = tuple(
        TileView(
            data_uri(
                colormap(m, "viridis", vmin=vmin, vmax=vmax).resize(
                    (side, side), Image.Resampling.NEAREST
                )
            ),
            f"ch {c} · {v:.2f}",
        )
        for c, m, v in zip(channels, chosen, values.tolist(), strict=True)
    )
    h, w = maps.shape[-2:]
    return DepthView(
        name,
        layer_words(note, name, with_name=False),
        tiles,
        color_bar("viridis", vmin, vmax, "activation (one scale shared by these tiles)", count=5),
        f"The {len(channels)} channels with the highest mean activation on this image. Each tile is one "
        f"channel's {h}×{w} activation map over the whole image, labelled with the channel index "
        "and its mean activation.",
    )


def _behaviour_view(report: Report) -> dict[str, Any] | None:
    from ._behaviour import rgb_filter_tiles

    look = report.behaviour
    if look is None:
        return None
    filters = None
    if look.first_filters.shape[1] == 3:
        tiles = rgb_filter_tiles(look.first_filters[:64])
        filters = data_uri(grid(tiles, columns=min(len(tiles), 8), pad=2))
    picture = report.images[0].picture
    from ._behaviour import FACTOR_COLOURS, FACTOR_SIDE, factor_overlay

    size = _side(picture)
    factors = look.factorization
    legend = [
        (FACTOR_COLOURS[i % len(FACTOR_COLOURS)], ", ".join(map(str, chans)))
        for i, chans in enumerate(factors.strongest_channels(5).tolist())
    ]
    return {
        "first_layer": look.first_layer,
        "first_shape": tuple(look.first_filters.shape),
        "filters": filters,
        "depths": [_depth(n, m, v, i, report.layers.get(n)) for n, m, v, i in look.depths],
        "factor_layer": layer_words(report.layers.get(look.factor_layer), look.factor_layer),
        "factor_overlay": data_uri(
            factor_overlay(picture.resize(size), factors.maps[0], min_side=FACTOR_SIDE)
        ),
        "factor_count": factors.maps.shape[1],
        "factor_clipped": factors.clipped_negative,
        "factor_legend": legend,
    }


def report_html(report: Report) -> str:
    """The report page for a :class:`cnnlens._report.Report`: one self-contained file."""
    images = []
    for image in report.images:
        size = _side(image.picture)
        classes = []
        for target, results in image.explained.items():
            found = image.coincidences.get(target, [])
            label = next((lb for c, lb, _ in image.top if c == target), str(target))
            prob = next((p for c, _, p in image.top if c == target), None)
            classes.append(
                {
                    "target": target,
                    "label": label,
                    "probability": prob,
                    "panels": [_panel(r, image, target, report, found) for r in results],
                    "trust": _trust(results, image, target),
                }
            )
        images.append(
            {
                "name": image.name,
                "id": _slug(image.name),
                "picture": data_uri(image.picture.resize(size, Image.Resampling.BILINEAR)),
                "size": image.picture.size,
                "top": image.top,
                "classes": classes,
            }
        )
    return render_page(
        "report.html",
        title=f"cnnlens report — {report.model}",
        subtitle=f"model {report.model} · {count(len(report.images), 'image')} · every map computed by cnnlens",
        model=report.model,
        images=images,
        behaviour=_behaviour_view(report),
        zero=", ".join(map(str, report.zero_colour)),
        steps=report.curve_steps,
    )
