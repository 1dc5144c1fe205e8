"""Long commands draw a progress bar on stderr that counts finished steps; ``--quiet``
turns it off. (``report`` and ``atlas`` are checked in their own tests.)"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlens._progress import progress_mode
from cnnlens.cli import main


def _counts(err: str, total: int) -> list[int]:
    return [int(n) for n in re.findall(rf"(\d+)/{total}\b", err)]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    torch.manual_seed(0)
    with progress_mode(True):
        code = main(list(argv))
    _, err = capsys.readouterr()
    assert code == 0, err
    return err


def _counted_when_done(err: str, total: int) -> None:
    counts = _counts(err, total)
    assert counts, err
    assert counts[0] == 0 and counts[-1] == total, counts  # nothing counted at its start
    assert counts == sorted(counts)


def test_visualize_shows_steps_and_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _run(
        capsys, "visualize", "--model", "fashion_cnn", "--target", "3", "--steps", "5",
        "-o", str(tmp_path / "v.png"),
    )  # fmt: skip
    assert "visualize" in err and re.search(r"score -?\d", err)
    assert re.search(r"<\d\d:\d\d", err), "no ETA"
    _counted_when_done(err, 5)


def test_explain_with_several_methods_counts_methods(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _run(
        capsys, "explain", "cat", "-m", "saliency,gradcam,occlusion", "--window", "112",
        "--model", "resnet18", "--random-weights", "-o", str(tmp_path / "e.png"),
    )  # fmt: skip
    _counted_when_done(err, 3)
    # While a method runs the bar names it and counts only the methods before it.
    for done, method in enumerate(("saliency", "gradcam", "occlusion")):
        assert re.search(rf"explain[^\r\n]*\b{done}/3\b[^\r\n]*{method}", err), (method, err)
    # occlusion's own bar, drawn below and cleared
    assert "occlusion" in err and "batch" in err


def _folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def test_index_counts_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _folder(tmp_path / "data", 6)
    monkeypatch.chdir(tmp_path)  # relative paths, as typed
    err = _run(
        capsys, "index", "data", "--model", "fashion_cnn", "--batch-size", "2", "-o", "store"
    )
    assert "features" in err and "img" in err
    _counted_when_done(err, 6)
    assert set(_counts(err, 6)) == {0, 2, 4, 6}


def test_quiet_turns_bars_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with progress_mode(None):
        code = main(
            ["visualize", "--model", "fashion_cnn", "--target", "3", "--steps", "2",
             "--quiet", "-o", str(tmp_path / "v.png")],
        )  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 0 and err == ""
    # the same with the bar forced on by the environment: --quiet still wins
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLENS_PROGRESS", "1")
        assert main(["visualize", "--model", "fashion_cnn", "--target", "3", "--steps", "2",
                     "-q", "-o", str(tmp_path / "v.png")]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""
