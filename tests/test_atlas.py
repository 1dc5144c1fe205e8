"""The atlas: a static site per layer and channel, checked in headless Chromium."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens._atlas import build_atlas
from cnnlens.cli import main
from cnnlens.dataset import fashion_mnist
from cnnlens.dataset._sources import fashion_mnist_root
from cnnlens.render._atlas import atlas_pages, layer_filename

from .browser import check_page, requires_chromium

needs_fashion = pytest.mark.skipif(
    fashion_mnist_root() is None, reason="Debian package dataset-fashion-mnist not installed"
)


@pytest.fixture(scope="module")
def fashion_atlas() -> object:
    model = cnnlens.load_model("fashion_cnn")
    return build_atlas(
        model,
        fashion_mnist("test"),
        ["features.relu1", "features.relu3"],
        channels=3,
        k=4,
        steps=16,
        sample=120,
        queries=2,
    )


@needs_fashion
def test_atlas_content(fashion_atlas: object) -> None:
    from cnnlens._atlas import Atlas

    assert isinstance(fashion_atlas, Atlas)
    assert [v.name for v in fashion_atlas.layers] == ["features.relu1", "features.relu3"]
    first, deep = fashion_atlas.layers
    assert all(c.weights is not None for c in first.channels)  # relu1 shows conv1's filters
    assert all(c.weights is None for c in deep.channels)
    for view in first.channels + deep.channels:
        assert view.visualization is not None
        assert len(view.patches) == 4
        acts = [p.activation for p in view.patches]
        assert acts == sorted(acts, reverse=True)
    assert fashion_atlas.points.shape == (120, 2)
    assert len(fashion_atlas.queries) == 2
    for q in fashion_atlas.queries:
        assert q.query not in q.feature
        assert len(q.feature) == 6


@needs_fashion
def test_every_channel_shows_a_picture_or_says_why(fashion_atlas: object) -> None:
    from cnnlens._atlas import Atlas

    assert isinstance(fashion_atlas, Atlas)
    pages = atlas_pages(fashion_atlas)
    for view in fashion_atlas.layers:
        page = pages[layer_filename(view.name)]
        for channel in view.channels:
            card = re.search(rf'id="channel-{channel.channel}".*?</article>', page, re.S)
            assert card is not None
            if channel.flat:
                assert "could not drive this unit" in card.group(0)
                assert "Feature visualization" not in card.group(0)
            else:
                assert "Feature visualization" in card.group(0)
            assert card.group(0).count("<img") >= len(channel.patches)


def test_a_flat_unit_says_so_and_shows_its_patches() -> None:
    """A unit the optimizer cannot drive gets the reason and its patches, not a grey square."""
    from cnnlens._atlas import Atlas, ChannelView, LayerView
    from cnnlens.dataset import Patch

    patch = Patch(
        index=7,
        channel=0,
        position=(0, 0),
        activation=2.5,
        box=(0, 0, 4, 4),
        pixels=torch.rand(3, 4, 4),
    )
    flat = ChannelView(0, torch.full((3, 8, 8), 0.5), [patch], None, pixel_std=0.001, reached=0.0)
    lively = ChannelView(1, torch.rand(3, 8, 8), [patch], None, pixel_std=0.3, reached=1.5)
    assert flat.flat and not lively.flat
    picture = Image.new("RGB", (4, 4))
    layer = LayerView("a.b", [flat, lively], (5, 5), {0: [picture], 1: [picture]})
    atlas = Atlas("m", "d", [layer], "a.b", np.zeros((1, 2)), [""], [picture], [])
    pages = atlas_pages(atlas)
    page = pages[layer_filename("a.b")]
    assert (
        "1 without a feature visualization (the optimizer could not drive it; its top"
        in pages["index.html"]
    )
    first, second = page.split('id="channel-1"')
    assert "could not drive this unit" in first and "pixel standard deviation 0.001" in first
    assert "#7 · 2.50" in first
    assert "could not drive" not in second and "mean activation reached: 1.5" in second


@needs_fashion
@requires_chromium
@pytest.mark.parametrize("width", [1280, 1920])
def test_atlas_pages_in_chromium(fashion_atlas: object, tmp_path: Path, width: int) -> None:
    pages = atlas_pages(fashion_atlas)
    assert set(pages) == {
        "index.html",
        layer_filename("features.relu1"),
        layer_filename("features.relu3"),
    }
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
        assert layer_filename("features.relu1") in pages["index.html"]
    shots = Path(os.environ.get("CNNLENS_SCREENSHOTS", tmp_path))
    for name, shot in (
        ("index.html", f"atlas-index-{width}.png"),
        (layer_filename("features.relu1"), f"atlas-layer-{width}.png"),
    ):
        result = check_page(tmp_path / name, shots / shot, width=width)
        assert result.images > 0
        assert result.broken == []
        assert result.console_errors == []
        assert result.clipped == []
        assert result.heatmaps_without_bar == []
        assert not result.horizontal_scroll
        assert result.used_width > 0.9


def test_atlas_cli_on_a_photo_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "coffee", "rocket"):
        cnnlens.sample_image(name).resize((160, 120)).save(photos / f"{name}.png")
    out = tmp_path / "site"
    code = main(
        [
            "atlas",
            str(photos),
            "--layers",
            "_blocks.1._expand_relu",
            "--channels",
            "1",
            "-k",
            "2",
            "--steps",
            "2",
            "-o",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "index.html").exists()
    assert (out / layer_filename("_blocks.1._expand_relu")).exists()


def test_atlas_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["atlas", str(tmp_path), "--layers", "nope", "-o", str(tmp_path / "s")]) == 2
    assert "unknown layer" in capsys.readouterr().err
    assert (
        main(["atlas", str(tmp_path / "missing"), "--layers", "x", "-o", str(tmp_path / "s")]) == 2
    )
    # Counts are refused while the arguments are parsed, as in every command.
    site = str(tmp_path / "s")
    assert main(["atlas", str(tmp_path), "--layers", "x", "--channels", "0", "-o", site]) == 2
    assert "argument --channels: must be at least 1, got 0" in capsys.readouterr().err


def test_atlas_progress_counts_steps_when_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens._atlas import atlas_steps
    from cnnlens._progress import progress_mode

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat", "coffee"):
        cnnlens.sample_image(name).resize((96, 72)).save(photos / f"{name}.png")
    with progress_mode(True):
        code = main(
            [
                "atlas",
                str(photos),
                "--layers",
                "_blocks.1._expand_relu",
                "--channels",
                "1",
                "-k",
                "1",
                "--steps",
                "1",
                "-o",
                str(tmp_path / "site"),
            ]
        )
    assert code == 0
    err = capsys.readouterr().err
    total = atlas_steps(1)
    counts = [int(n) for n in re.findall(rf"(\d+)/{total}\b", err)]
    assert counts[0] == 0 and counts[-1] == total and counts == sorted(counts)
    lines = [s.rstrip() for s in re.split(r"[\r\n]", err) if f"/{total}" in s]
    running = [s for s in lines if s.endswith("feature visualization]")]
    assert running and all(f" 1/{total}" in s for s in running)
    assert any(f" 2/{total}" in s for s in lines if s.endswith("feature visualization: done]"))


def test_a_layer_given_twice_is_refused_before_any_work() -> None:
    # By its name twice, or by two names of one module (a Sequential's index and the
    # name under which it is also held): it would be computed and drawn twice.
    model = cnnlens.load_model("fashion_cnn")
    model.module.features.add_module("same", model.module.features.relu1)
    for layers, message in (
        (["features.relu1", "features.relu1"], "'features.relu1' is given twice"),
        (["features.relu1", "features.same"], "are the same layer"),
    ):
        with pytest.raises(cnnlens.InputError, match=message):
            build_atlas(model, torch.zeros(4, 1, 28, 28), layers, progress=False)
