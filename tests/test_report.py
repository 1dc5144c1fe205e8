"""The HTML report: computed for the bundled cat with the bundled model, opened in a real
browser (headless Chromium): every image loads, the console stays clean."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cnnlens
from cnnlens._report import REPORT_METHODS, build_report
from cnnlens.cli import main
from cnnlens.render._html import report_html

from .browser import check_page, requires_chromium


@pytest.fixture(scope="module")
def cat_report() -> object:
    model = cnnlens.load_model("efficientnet_lite0")
    return build_report(model, [("cat", cnnlens.sample_image("cat"))], steps=8)


def test_report_has_every_method_with_metrics(cat_report: object) -> None:
    from cnnlens._report import Report

    assert isinstance(cat_report, Report)
    (image,) = cat_report.images
    assert 281 <= image.top[0][0] <= 285  # a cat
    (results,) = image.explained.values()
    assert [r.method for r in results] == list(REPORT_METHODS)
    for r in results:
        assert r.error is None, f"{r.method}: {r.error}"
        assert r.explanation is not None
        assert r.deletion_auc is not None
        assert 0.0 <= r.deletion_auc <= 1.0
        assert r.insertion_auc is not None
        assert 0.0 <= r.insertion_auc <= 1.0
        assert r.seconds > 0
    assert cat_report.behaviour is not None
    assert len(cat_report.behaviour.depths) == 3


@requires_chromium
def test_report_page_loads_in_chromium(cat_report: object, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(report_html(cat_report), encoding="utf-8")
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "")  # nothing fetched
    assert "https://" not in text
    shots = Path(os.environ.get("CNNLENS_SCREENSHOTS", tmp_path))
    result = check_page(page, shots / "report.png")
    assert result.images >= len(REPORT_METHODS) + 4
    assert result.broken == []
    assert result.console_errors == []
    assert (shots / "report.png").stat().st_size > 10_000


def test_report_cli_on_a_small_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    code = main(
        [
            "report",
            "--model",
            "resnet18",
            "--random-weights",
            "--methods",
            "saliency,gradcam,cam",
            "--no-behaviour",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert out.exists()
    assert "report written to" in capsys.readouterr().out


def test_report_cli_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "missing.jpg" in err
    assert err.count("\n") == 1
    assert main(["report", "cat", "coffee", "--target", "1", "-o", str(tmp_path / "r.html")]) == 2
