"""PNG pictures are sized to their content and overlays are drawn on a grey copy of the
photo: grids give each row its own height, the factorization overlay (the report's and
``cnnlens factorize``'s) keeps none of the photo's colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens.cli import main
from cnnlens.render import grid
from cnnlens.render._behaviour import FACTOR_SIDE, factor_figure, factor_overlay
from cnnlens.render._images import grey_copy


def test_grid_rows_are_as_tall_as_their_pictures() -> None:
    big, small = Image.new("RGB", (300, 300), "gray"), Image.new("RGB", (320, 100), "gray")
    out = grid([big, small], columns=1, pad=4)
    assert out.size == (4 + 320 + 4, 4 + 300 + 4 + 100 + 4)  # no band under the short row
    same = [Image.new("RGB", (20, 30), "gray") for _ in range(6)]
    assert grid(same, columns=4, pad=2).size == (4 * 22 + 2, 2 * 32 + 2)  # equal tiles as before


def test_grey_copy_has_no_colour() -> None:
    photo = Image.new("RGB", (8, 8), (230, 150, 20))  # amber
    pixels = np.asarray(grey_copy(photo)).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_factor_overlay_is_drawn_over_a_grey_copy() -> None:
    """Where no factor is present the picture is the grey copy (the photo's amber would
    read as the orange factor)."""
    photo = Image.new("RGB", (224, 224), (230, 150, 20))
    maps = torch.zeros(2, 14, 14)
    maps[0, :7] = 1.0  # factor 0 on the top half, nothing at the bottom
    out = factor_overlay(photo, maps)
    assert out.size == photo.size
    bottom = np.asarray(out)[-20:].astype(int)
    expected = np.asarray(grey_copy(photo))[0, 0].astype(int)
    assert (np.abs(bottom - expected) <= 1).all()
    top = np.asarray(out)[:20].astype(int)
    assert (top[..., 2] > top[..., 0]).all()  # factor 0 is tab10 blue
    assert factor_overlay(photo, maps, min_side=FACTOR_SIDE).size == (FACTOR_SIDE, FACTOR_SIDE)
    big = Image.new("RGB", (400, 500))
    assert factor_overlay(big, maps, min_side=FACTOR_SIDE).size == (400, 500)  # not shrunk


def _layout(pixels: np.ndarray) -> tuple[int, int, int]:
    """(blank rows under the last ink, first and last row of the overlays)."""
    ink_rows = np.nonzero((pixels < 200).any(axis=1))[0]
    picture_rows = np.nonzero((pixels < 250).mean(axis=1) > 0.5)[0]  # the overlays
    return (
        pixels.shape[0] - 1 - int(ink_rows.max()),
        int(picture_rows.min()),
        int(picture_rows.max()),
    )


@pytest.mark.parametrize("count", [1, 2])
def test_factor_figure_is_sized_to_its_content(count: int) -> None:
    """The factorization picture: a one-line title over the overlays, the legend under them,
    no blank band below the legend."""
    import cnnlens

    model = cnnlens.load_model("efficientnet_lite0")
    names = ["cat", "coffee"][:count]
    inputs = model.preprocess([cnnlens.sample_image(n) for n in names])
    found = cnnlens.factorize(model, inputs, "_blocks.11._expand_relu", 6)
    seen = [model.deprocess(inputs[i : i + 1]) for i in range(count)]
    figure = factor_figure(seen, found, "_blocks.11._expand_relu: 6 NMF factors")
    blank, first, last = _layout(np.asarray(figure.convert("L")))
    assert blank < 12  # the legend ends the picture
    assert first <= 4 + 22 + 4  # pad, one line of the 14 px title (two: 48), pad
    assert last - first + 1 >= FACTOR_SIDE
    assert figure.width >= count * FACTOR_SIDE


def test_cnnlens_factorize_picture_has_no_blank_band(tmp_path: Path) -> None:
    """``cnnlens factorize cat -k 6`` (bundled model): the legend row is as tall as the
    legend (it was as tall as the overlay above it: 250 px of white)."""
    out = tmp_path / "factors.png"
    assert main(["factorize", "cat", "-k", "6", "-o", str(out)]) == 0
    blank, _, _ = _layout(np.asarray(Image.open(out).convert("L")))
    assert blank < 12
