"""Line plots (matplotlib, Agg backend) returned as pictures."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt
from PIL import Image

__all__ = ["line_plot"]


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
    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        for name, values in series.items():
            xs = list(x) if x is not None else list(range(len(values)))
            ax.plot(xs, list(values), marker="o", markersize=3, label=name)
        if xticklabels is not None:
            ax.set_xticks(range(len(xticklabels)))
            ax.set_xticklabels(xticklabels, rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
