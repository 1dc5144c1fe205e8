"""Line plots (matplotlib, Agg canvas) returned as pictures, every text fitted inside the
figure (wrapped, then shrunk) so no title or label is cut off."""

from __future__ import annotations

import io
import textwrap
import warnings
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

__all__ = ["fit_figure_text", "line_figure", "line_plot", "texts_outside"]


def _texts(figure: Figure) -> list[Text]:
    return [
        t
        for t in figure.findobj(Text)
        if isinstance(t, Text) and t.get_visible() and t.get_text().strip()
    ]


def texts_outside(figure: Figure) -> list[str]:
    """The texts of ``figure`` whose drawn extent leaves the figure (after a draw)."""
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
    box = figure.bbox
    out = []
    for text in _texts(figure):
        extent = text.get_window_extent(renderer)
        if (
            extent.x0 < box.x0 - 0.5
            or extent.x1 > box.x1 + 0.5
            or extent.y0 < box.y0 - 0.5
            or extent.y1 > box.y1 + 0.5
        ):
            out.append(text.get_text())
    return out


def _layout(figure: Figure) -> None:
    with warnings.catch_warnings():  # tight_layout warns when it cannot make room; we shrink then
        warnings.simplefilter("ignore", UserWarning)
        figure.tight_layout()
    figure.canvas.draw()


def fit_figure_text(figure: Figure, *, rounds: int = 10, floor: float = 5.0) -> None:
    """Lay ``figure`` out and shrink every text that still leaves it (by 15% a round, not
    below ``floor`` points) until all fit."""
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    _layout(figure)
    for _ in range(rounds):
        outside = set(texts_outside(figure))
        if not outside:
            return
        for text in _texts(figure):
            size = float(text.get_fontsize())
            if text.get_text() in outside and size > floor:
                text.set_fontsize(max(floor, size * 0.85))
        _layout(figure)


def _wrap(text: str, figure: Figure, fontsize: float, share: float = 1.0) -> str:
    """``text`` wrapped to about ``share`` of the figure's width at ``fontsize``."""
    chars = max(8, int(share * figure.get_figwidth() * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.wrap(text, chars)) if len(text) > chars else text


def line_figure(
    series: Mapping[str, Sequence[float]],
    *,
    x: Sequence[float] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    xticklabels: Sequence[str] | None = None,
    size: tuple[float, float] = (5.0, 3.4),
) -> Figure:
    """One line per entry of ``series``, texts wrapped and fitted (see :func:`fit_figure_text`)."""
    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    for name, values in series.items():
        xs = list(x) if x is not None else list(range(len(values)))
        ax.plot(xs, list(values), marker="o", markersize=3, label=name)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)))
        ax.set_xticklabels(
            [_wrap(t, figure, 7, 0.3) for t in xticklabels],
            rotation=45,
            ha="right",
            fontsize=7,
        )
    ax.set_title(_wrap(title, figure, 10), fontsize=10)
    ax.set_xlabel(_wrap(xlabel, figure, 10))
    ax.set_ylabel(_wrap(ylabel, figure, 10, 0.6))
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fit_figure_text(figure)
    return figure


def line_plot(
    series: Mapping[str, Sequence[float]],
    *,
    x: Sequence[float] | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    xticklabels: Sequence[str] | None = None,
    size: tuple[float, float] = (5.0, 3.4),
) -> Image.Image:
    """One line per entry of ``series``; returns the rendered figure."""
    figure = line_figure(
        series, x=x, title=title, xlabel=xlabel, ylabel=ylabel, xticklabels=xticklabels, size=size
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
