"""Self-contained HTML pages: every picture embedded as a PNG data URI, no external files,
scripts or fonts, so a page opens the same offline and anywhere."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

from PIL import Image

from ._images import colormap, diverging, grid, overlay

__all__ = ["PAGE_STYLE", "data_uri", "figure", "page", "report_html"]

PAGE_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d232b;background:#f6f7f9}
header{background:#1d2733;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c4d2;font-size:13px}
main{padding:12px 28px 40px;max-width:1500px}
h2{border-bottom:2px solid #d8dde4;padding-bottom:4px;margin-top:30px}
h3{margin:18px 0 6px}
.lead{color:#4a5563;font-size:13px;margin:2px 0 12px;max-width:980px}
.panels{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:8px;width:236px}
figure.wide{width:auto;max-width:100%}
figure img{display:block;max-width:100%;image-rendering:auto;border-radius:3px}
figcaption{font-size:12px;color:#39424e;margin-top:6px;line-height:1.35}
figcaption b{font-size:13px;color:#111}
.metric{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;color:#566}
.why{font-size:12px;color:#8a4b00;background:#fff6e8;border:1px solid #f0d7b0;border-radius:4px;padding:6px}
table{border-collapse:collapse;font-size:13px;background:#fff}td,th{border:1px solid #dde2e8;padding:3px 8px;text-align:left}
nav a{margin-right:12px}
"""


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def figure(image: Image.Image, caption_html: str, *, wide: bool = False, alt: str = "") -> str:
    cls = ' class="wide"' if wide else ""
    return (
        f'<figure{cls}><img src="{data_uri(image)}" alt="{html.escape(alt)}" '
        f'width="{image.width}" height="{image.height}"><figcaption>{caption_html}</figcaption></figure>'
    )


def page(title: str, subtitle: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header><main>{body}</main></body></html>\n"
    )


def _method_panel(result: object, picture: Image.Image) -> str:
    from .._report import MethodResult

    assert isinstance(result, MethodResult)
    title = f"<b>{html.escape(result.method)}</b>"
    if result.explanation is None:
        return (
            f'<figure><div class="why">{title}<br>not shown: {html.escape(result.error or "")}</div>'
            f"<figcaption>{html.escape(result.note)}</figcaption></figure>"
        )
    explanation = result.explanation
    heat = explanation.heatmap()[0]
    if explanation.kind == "input":
        # Pixel-level maps are sparse: show them directly, clipped at a high percentile.
        limit = float(heat.flatten().quantile(0.995)) or 1.0
        tiles = [colormap((heat / limit).clamp(0, 1), "inferno", vmin=0.0, vmax=1.0)]
    else:
        tiles = [overlay(picture, heat)]
    if explanation.signed and explanation.attribution.dim() == 4:
        signed = explanation.attribution[0].sum(dim=0)
        tiles.append(diverging(signed).resize(picture.size))
    shown = (
        tiles[0]
        if len(tiles) == 1
        else grid([t.resize((110, 110)) for t in tiles], columns=2, pad=2)
    )
    metric = (
        f'<span class="metric">{result.seconds:.2f} s · deletion AUC {result.deletion_auc:.3f} ↓ · '
        f"insertion AUC {result.insertion_auc:.3f} ↑</span>"
    )
    note = html.escape(result.note) + (
        " Right: signed sum over channels (red +, blue −)." if len(tiles) > 1 else ""
    )
    return figure(
        shown.resize((220, int(220 * shown.height / shown.width))),
        f"{title}<br>{metric}<br>{note}",
        alt=result.method,
    )


def _top_table(top: Sequence[tuple[int, str, float]]) -> str:
    rows = "".join(
        f"<tr><td>{i + 1}</td><td>{html.escape(label)}</td><td>{c}</td><td>{p:.3f}</td></tr>"
        for i, (c, label, p) in enumerate(top)
    )
    return (
        f"<table><tr><th>#</th><th>class</th><th>index</th><th>probability</th></tr>{rows}</table>"
    )


def report_html(report: object) -> str:
    """The report page for a :class:`cnnlens._report.Report`."""
    from .._report import Report
    from ._behaviour import activation_grid, factor_legend, factor_overlay, rgb_filter_tiles

    assert isinstance(report, Report)
    parts = [
        "<h2>Decision explanation</h2>",
        '<p class="lead">Why did the model decide what it did? Each panel explains the same class with one method. '
        "Heatmaps are scaled per panel (bright = more important). Deletion AUC: how fast the class probability falls when "
        "the pixels the map ranks highest are removed first (lower = more faithful); insertion AUC: how fast it rises when they "
        "are added to a blurred copy (higher = more faithful).</p>",
    ]
    for image_report in report.images:
        parts.append(f"<h3>{html.escape(image_report.name)}</h3>")
        parts.append('<div class="panels">')
        parts.append(
            figure(
                image_report.picture.resize((220, 220)),
                "<b>input</b><br>the crop the model saw",
                alt="input",
            )
        )
        parts.append(
            f'<figure class="wide">{_top_table(image_report.top)}<figcaption><b>top-5 predictions</b></figcaption></figure>'
        )
        parts.append("</div>")
        for target, results in image_report.explained.items():
            label = next((lb for c, lb, _ in image_report.top if c == target), str(target))
            parts.append(
                f'<p class="lead">Explaining class <b>{html.escape(label)}</b> ({target}).</p><div class="panels">'
            )
            parts.extend(_method_panel(r, image_report.picture) for r in results)
            parts.append("</div>")
    look = report.behaviour
    if look is not None:
        parts.append("<h2>Model behaviour</h2>")
        parts.append(
            '<p class="lead">What has the network learned? Its first-layer filters, the most active channels at three depths '
            "for the first image, and the factorization lens.</p>"
        )
        tiles = (
            rgb_filter_tiles(look.first_filters[:64]) if look.first_filters.shape[1] == 3 else []
        )
        if tiles:
            parts.append(
                '<div class="panels">'
                + figure(
                    grid(tiles, columns=8, pad=2),
                    f"<b>first-layer filters</b> ({html.escape(look.first_layer)}): each filter's RGB weights, grey = 0, scaled per filter.",
                    wide=True,
                    alt="filters",
                )
                + "</div>"
            )
        parts.append('<div class="panels">')
        for name, maps, values, ids in look.depths:
            picture = activation_grid(maps, ids.tolist(), values.tolist(), size=72)
            parts.append(
                figure(
                    picture,
                    f"<b>{html.escape(name)}</b> — the 8 channels with the highest mean activation ({maps.shape[-2]}×{maps.shape[-1]} maps, shared colour scale).",
                    wide=True,
                    alt=name,
                )
            )
        parts.append("</div>")
        picture = report.images[0].picture
        overlay_picture = factor_overlay(picture, look.factorization.maps[0])
        legend = factor_legend(look.factorization.strongest_channels(5))
        note = (
            "the positive part of the activations"
            if look.factorization.clipped_negative
            else "the activations"
        )
        parts.append(
            '<div class="panels">'
            + figure(
                overlay_picture.resize((300, 300)),
                f"<b>factorization lens</b> ({html.escape(look.factor_layer)}): NMF of {note} into {look.factorization.maps.shape[1]} factors; each position is coloured by its strongest factor.",
                alt="factors",
            )
            + figure(
                legend, "<b>legend</b>: each factor's strongest channels", wide=True, alt="legend"
            )
            + "</div>"
        )
    subtitle = f"model {report.model} · {len(report.images)} image(s) · made by cnnlens"
    return page(f"cnnlens report — {report.model}", subtitle, "".join(parts))
