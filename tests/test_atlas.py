"""The atlas: a static site per layer and channel, checked in headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
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
@requires_chromium
def test_atlas_pages_load_in_chromium(fashion_atlas: object, tmp_path: Path) -> None:
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
        ("index.html", "atlas_index.png"),
        (layer_filename("features.relu3"), "atlas_layer.png"),
    ):
        result = check_page(tmp_path / name, shots / shot)
        assert result.images > 0
        assert result.broken == []
        assert result.console_errors == []


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
