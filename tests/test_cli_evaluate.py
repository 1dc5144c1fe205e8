"""``cnnlens evaluate``: the trust table printed, files written, bad input exits 2."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlens.cli import main


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(28, 28, generator=g) * 255).to(torch.uint8).numpy()
    path = tmp_path / "item.png"
    Image.fromarray(pixels).save(path)
    return path


def test_evaluate_prints_the_table_and_writes_files(
    picture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", str(picture), "--model", "fashion_cnn", "--methods", "saliency,gradcam"]
    argv += ["--metrics", "deletion,insertion,infidelity", "--steps", "4", "--samples", "2"]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("| image | method | ranking | deletion AUC")
    assert "infidelity" in printed[0]
    assert [line.split("|")[2].strip() for line in printed[2:]] == ["saliency", "gradcam"]
    assert [line.split("|")[3].strip() for line in printed[2:]] == ["abs", "signed"]
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["saliency", "gradcam"]
    assert 0 <= float(rows[0]["deletion"]) <= 1
    assert (out / "results.md").read_text().splitlines() == printed
    assert (out / "curves_item.png").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "speed"], "unknown metric 'speed'"),
        (["--methods", "salincy"], "unknown method"),
        (["--steps", "0"], "at least 1"),
    ],
)
def test_evaluate_bad_input_exits_2(
    picture: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(picture), "--model", "fashion_cnn", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
