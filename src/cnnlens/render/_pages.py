"""HTML pages from Jinja2 templates (``render/templates``): one base layout with blocks,
one stylesheet, autoescaping on. The report, the atlas and the explorer all extend
``base.html``; a static page gets the stylesheet inline, so it is one self-contained file.

Pictures travel as PNG data URIs (:func:`data_uri`), colour scales as CSS gradients with
tick labels (:class:`ColorBar`), so nothing is fetched when a page is opened.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jinja2
import markupsafe
import numpy as np
from matplotlib import colormaps
from PIL import Image

__all__ = [
    "ColorBar",
    "color_bar",
    "data_uri",
    "environment",
    "prose",
    "render_page",
    "stylesheet",
    "ticks",
]


def data_uri(image: Image.Image) -> str:
    """A picture as a PNG ``data:`` URI (embedded, nothing fetched)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@cache
def environment() -> jinja2.Environment:
    """The template environment (templates shipped as package data, autoescape on,
    undefined variables are errors so a typo in a template cannot pass silently)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cnnlens.render", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data_uri"] = data_uri
    env.filters["number"] = format_number
    env.filters["prose"] = prose
    return env


_CODE = re.compile(r"`([^`\n]+)`")


def prose(text: object) -> markupsafe.Markup:
    """Caption or message text for a page: HTML-escaped, with `backticked` spans (commands,
    names, as written in messages and docstrings) set as ``<code>``. Every caption, note and
    error a template shows goes through this one filter."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(_CODE.sub(r"<code>\1</code>", escaped))


@cache
def stylesheet() -> str:
    """The one stylesheet every page uses."""
    return (resources.files("cnnlens.render") / "templates" / "cnnlens.css").read_text("utf-8")


def render_page(template: str, **context: Any) -> str:
    """Render ``template`` with ``context``; the stylesheet is passed as ``stylesheet``."""
    return environment().get_template(template).render(stylesheet=stylesheet(), **context)


def format_number(value: float) -> str:
    """A scale value, short: 3 significant digits, scientific outside [1e-3, 1e4)."""
    v = float(value)
    if v == 0 or not np.isfinite(v):
        return "0" if v == 0 else str(v)
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{float(mantissa):.3g}e{int(exponent)}"


@dataclass(frozen=True)
class ColorBar:
    """A colour scale drawn in HTML: ``gradient`` is a CSS ``linear-gradient`` of the
    colormap, ``ticks`` (fraction along the bar, label) its scale, ``label`` what it
    measures."""

    gradient: str
    ticks: tuple[tuple[float, str], ...]
    label: str


def _css_gradient(cmap: str, stops: int = 11) -> str:
    colors = colormaps[cmap](np.linspace(0.0, 1.0, stops))
    parts = [
        f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x} {100 * i / (stops - 1):.0f}%"
        for i, (r, g, b, _) in enumerate(colors)
    ]
    return "linear-gradient(to right, " + ", ".join(parts) + ")"


def ticks(vmin: float, vmax: float, count: int = 3) -> tuple[tuple[float, str], ...]:
    """``count`` evenly spaced labelled ticks from ``vmin`` to ``vmax``."""
    values = np.linspace(vmin, vmax, count)
    return tuple((i / (count - 1), format_number(float(v))) for i, v in enumerate(values.tolist()))


def color_bar(cmap: str, vmin: float, vmax: float, label: str, *, count: int = 3) -> ColorBar:
    """The colour bar of ``cmap`` scaled from ``vmin`` to ``vmax``."""
    return ColorBar(_css_gradient(cmap), ticks(vmin, vmax, count), label)
