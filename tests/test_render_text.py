"""PNG outputs fit their text: long titles and labels are wrapped (or shrunk), never cut off."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from cnnlens.render import add_caption, grid
from cnnlens.render._behaviour import factor_legend
from cnnlens.render._dataset import embedding_scatter, neighbours_figure
from cnnlens.render._images import fit_text
from cnnlens.render._plots import line_figure, texts_outside

LONG = "academic gown, academic robe, judge's robe: the 6 NMF factors of _blocks.11._expand_relu"
WORD = "_blocks.11._expand_relu_with_a_very_long_name_that_cannot_wrap"


def _ink_columns(image: Image.Image, band: int) -> np.ndarray:
    """Columns of the top ``band`` rows that hold dark (text) pixels."""
    pixels = np.asarray(image.convert("L"))[:band]
    return np.nonzero((pixels < 128).any(axis=0))[0]


def test_fit_text_wraps_then_shrinks_then_breaks() -> None:
    for text in (LONG, WORD, f"{LONG} {WORD}"):
        for width in (60, 110, 224):
            lines, font, _ = fit_text(text, width)
            assert all(font.getlength(line) <= width for line in lines), (text, width)
            assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing dropped
    lines, font, _ = fit_text("short", 224)
    assert lines == ["short"]


def test_caption_is_wrapped_inside_the_picture() -> None:
    picture = Image.new("RGB", (112, 112), "white")
    captioned = add_caption(picture, LONG)
    band = captioned.height - picture.height
    assert band > 40  # several lines
    ink = _ink_columns(captioned, band)
    assert ink.size and ink.max() < captioned.width - 2  # the text stops before the edge
    # Drawn on an unbounded canvas, the same text has as many dark pixels: nothing cut off.
    lines, font, line_height = fit_text(LONG, picture.width - 6)
    wide = Image.new("L", (2000, band), 255)
    draw = ImageDraw.Draw(wide)
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * line_height), line, fill=0, font=font)
    inside = (np.asarray(captioned.convert("L"))[:band] < 128).sum()
    assert inside == (np.asarray(wide) < 128).sum()


def test_grid_captions_share_one_band() -> None:
    tiles = [Image.new("RGB", (64, 64), "gray") for _ in range(3)]
    out = grid(tiles, captions=["a", LONG, WORD])
    assert out.width == 3 * 64 + 4 * 4
    assert _ink_columns(out, out.height - 64 - 8).size


def test_row_titles_and_legends_fit() -> None:
    tile = Image.new("RGB", (32, 32), "gray")
    figure = neighbours_figure(
        tile, "query #30 (academic gown)", [(tile, LONG)], [(tile, WORD)], tile=48
    )
    assert figure.height >= 2 * 48
    import torch

    legend = factor_legend(torch.arange(1000, 1012).view(1, 12))
    lines = legend.convert("L")
    assert (np.asarray(lines)[:, -2:] < 128).sum() == 0  # the legend grew to its text


def test_line_plot_texts_stay_inside_the_figure() -> None:
    figure = line_figure(
        {"deletion": [1, 0.5, 0.2], "insertion": [0.1, 0.6, 0.9]},
        title=LONG + " " + LONG,
        xlabel=LONG,
        ylabel="probability of " + LONG,
        xticklabels=[LONG, WORD, "x"],
    )
    assert texts_outside(figure) == []


def test_scatter_legend_stays_inside_the_figure() -> None:
    points = np.random.default_rng(0).normal(size=(30, 2))
    labels = np.arange(30) % 3
    picture = embedding_scatter(points, labels, [LONG, WORD, "c"], title=LONG, size=(4, 3))
    assert picture.width == 440


def test_activation_grid_has_a_colour_bar_with_its_scale() -> None:
    import torch

    from cnnlens.render._behaviour import activation_grid
    from cnnlens.render._images import colorbar_image

    maps = torch.rand(10, 7, 7) * 6
    picture = activation_grid(maps, [3, 1, 4], [4.0, 2.5, 1.0], size=64)
    bar = colorbar_image("viridis", 0.0, float(maps[[3, 1, 4]].max()), min(picture.width, 480), "x")
    tiles = picture.height - bar.height
    strip = np.asarray(picture)[tiles + 4 : tiles + 12, 8 : picture.width - 8]
    assert strip.std(axis=1).mean() > 20  # a gradient runs along the bar
    narrow = colorbar_image("viridis", -1234.5, 98765.4, 120, LONG)
    assert _ink_columns(narrow, narrow.height).max() < narrow.width - 2
