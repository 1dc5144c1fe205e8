"""The HTML report: computed for the bundled cat with the bundled model (with non-default
options, so the captions must follow them), then opened in a real browser (headless
Chromium) at 1280 and 1920 px: every image loads, the console stays clean, no text is
clipped, every heatmap has a colour bar, maps are at least 224 px, the panels fill the
window, and each caption names the options the method ran with."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

import cnnlens
from cnnlens._report import REPORT_METHODS, TRUST_METRICS, Report, build_report, report_steps
from cnnlens.cli import main
from cnnlens.render._captions import baseline_words, count, method_text
from cnnlens.render._html import report_html

from .browser import check_page, requires_chromium

OPTIONS = {
    "occlusion": {"window": 40, "stride": 20, "baseline": 0.0},
    "smoothgrad": {"samples": 6, "noise": 0.2, "seed": 3},
    "lrp": {"composite": "epsilon_gamma_box"},
}

# What each caption must say for the options above (EfficientNet-Lite0 normalizes with mean
# 0.5, so a zero input is mid-grey).
EXPECTED = {
    "occlusion": ["window 40×40 px", "stride 20×20 px", "mid-grey, RGB(128, 128, 128)"],
    "smoothgrad": ["6 noisy copies", "σ = 0.2", "seed 3"],
    "lrp": ["composite epsilon_gamma_box", "γ-rule"],
    "deeplift": ["baseline: 0 in the normalized input", "mid-grey, RGB(128, 128, 128)"],
    "gradcam": ["layer _head_relu", "stage 5 of 5", "7×7", "receptive field"],
    "cam": ["layer _head_relu", "stage 5 of 5"],
}


@pytest.fixture(scope="module")
def cat_report() -> Report:
    model = cnnlens.load_model("efficientnet_lite0")
    return build_report(model, [("cat", cnnlens.sample_image("cat"))], steps=8, options=OPTIONS)


def test_report_has_every_method_with_metrics(cat_report: Report) -> None:
    (image,) = cat_report.images
    assert 281 <= image.top[0][0] <= 285  # a cat
    (results,) = image.explained.values()
    assert [r.method for r in results] == list(REPORT_METHODS)
    for r in results:
        assert r.error is None, f"{r.method}: {r.error}"
        assert r.explanation is not None
        assert r.curves is not None
        assert r.curves.deletion_curve.shape == (1, 9)
        assert r.deletion_auc is not None
        assert 0.0 <= r.deletion_auc <= 1.0
        assert r.insertion_auc is not None
        assert 0.0 <= r.insertion_auc <= 1.0
        assert r.seconds > 0
        assert r.options == OPTIONS.get(r.method, r.options)
    assert cat_report.behaviour is not None
    assert len(cat_report.behaviour.depths) == 3
    assert cat_report.zero_colour == (128, 128, 128)


def test_trust_table_per_image(cat_report: Report) -> None:
    (image,) = cat_report.images
    ((target, results),) = image.explained.items()
    for r in results:
        assert r.trust is not None and r.trust.curves is r.curves  # the panels' own curves
        assert set(r.trust.values) == set(TRUST_METRICS)
        assert all(torch.isfinite(v).all() for v in r.trust.values.values())
    # the page's table: one row per method, the best value of each column in bold
    html = report_html(cat_report)
    table = html[html.index(f'id="cat-{target}-trust"') :]
    table = table[: table.index("</table>")]
    assert table.count("data-trust-row=") == len(REPORT_METHODS)
    deletion = [float(r.trust.values["deletion"][0]) for r in results if r.trust is not None]
    assert f"<b>{min(deletion):.3f}</b>" in table
    assert "ROAD" in table and "infidelity" in table


def test_cam_and_gradcam_coincide_and_the_report_says_why(cat_report: Report) -> None:
    """For a GAP + linear head Grad-CAM = ReLU(CAM)/(h·w): found by measurement, explained."""
    (image,) = cat_report.images
    (found,) = image.coincidences.values()
    exact = [c for c in found if c.exact]
    assert [(c.first, c.second) for c in exact] == [("cam", "gradcam")]
    assert exact[0].difference < 1e-3
    page = report_html(cat_report)
    assert "up to the ReLU and a scale" in page
    assert "global average pooling and a linear layer" in page


def test_layer_notes(cat_report: Report) -> None:
    note = cat_report.layers["_head_relu"]
    assert (note.stage, note.stages, note.size, note.stride) == (5, 5, (7, 7), 32)
    assert note.receptive_field is not None and note.receptive_field[0] > 224
    shallow = cat_report.layers["_blocks.3._expand_relu"]
    assert (shallow.stage, shallow.size, shallow.receptive_field) == (2, (56, 56), (19, 19))


def test_captions_follow_the_options(cat_report: Report) -> None:
    page = report_html(cat_report)
    for method, phrases in EXPECTED.items():
        panel = re.search(
            rf'<article class="card method"[^>]*data-method="{method}".*?</article>', page, re.S
        )
        assert panel is not None, method
        settings = re.search(r'<p class="text settings">(.*?)</p>', panel.group(0), re.S)
        assert settings is not None
        for phrase in phrases:
            assert phrase in settings.group(1), f"{method}: {phrase!r} not in {settings.group(1)!r}"
    assert "black baseline" not in page


def test_lrp_caption_accounts_for_the_score(cat_report: Report) -> None:
    (image,) = cat_report.images
    (results,) = image.explained.values()
    (lrp,) = [r for r in results if r.method == "lrp"]
    assert lrp.explanation is not None
    extras = lrp.explanation.extras
    total = float(lrp.explanation.attribution.sum())
    score, absorbed = float(extras["score"][0]), float(extras["absorbed"][0])
    # (that the two add up to the explained logit is tested against the per-node flows in
    # test_lrp.py; here: that the caption says both)
    page = report_html(cat_report)
    panel = re.search(
        r'<article class="card method"[^>]*data-method="lrp".*?</article>', page, re.S
    )
    assert panel is not None
    words = panel.group(0)
    # an absolute sum, then its share of the score, then where the rest went
    share = f"{100 * total / score:.3g}\u00a0%"  # no line break between number and sign
    assert f"the map sums to {total:.3g} — {share} of the" in words
    assert f"score {score:.3g}" in words and "holds" not in words
    assert f"absorbed the other {absorbed:.3g}" in words and "conserved at each layer" not in words
    assert "see the cnnlens docs, docs/lrp.md" in words


def test_lrp_budget_words() -> None:
    from cnnlens.render._captions import _lrp_budget

    text = _lrp_budget("tiger cat", 0.000925, 9.24, 9.239075)
    assert text.startswith("; the map sums to 0.000925 — 0.01\u00a0% of the tiger cat score 9.24;")
    assert "absorbed the other 9.24 on the way down" in text
    # "the other" only where absorbed is the rest of the score
    assert "absorbed 1 on" in _lrp_budget("x", 2.0, 9.0, 1.0)
    assert _lrp_budget("x", 2.0, 0.0, None) == "; the map sums to 2; the x score is 0."
    assert _lrp_budget("x", 2.0, None, None) == "; the map sums to 2."


def test_backticks_in_captions_are_code_and_docs_are_named_as_docs(cat_report: Report) -> None:
    """Text written with `backticks` (commands, names) is set as <code> in every caption,
    note and message, never shown with the backticks; docs are named as the cnnlens docs,
    not as if docs/... were reachable from the standalone page."""
    from markupsafe import Markup

    from cnnlens.render._pages import prose

    assert prose("run `cnnlens evaluate` & <b>") == Markup(
        "run <code>cnnlens evaluate</code> &amp; &lt;b&gt;"
    )
    assert prose("a `<script>` b") == Markup("a <code>&lt;script&gt;</code> b")
    page = report_html(cat_report)
    body = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)
    text = re.sub(r"<[^>]+>", "", body)
    assert "`" not in text
    assert "<code>cnnlens evaluate</code>" in page
    assert "the cnnlens docs (docs/trust.md)" in page
    assert re.search(r"(?<!cnnlens docs \()(?<!cnnlens docs, )docs/\w+\.md", text) is None


def test_report_curves_use_the_steps_of_cnnlens_evaluate() -> None:
    """One image's AUCs are the same numbers in the report, ``cnnlens evaluate`` and the
    explorer: the report's default steps are evaluate's."""
    import inspect

    from cnnlens.cli import build_parser
    from cnnlens.evaluate import trust_table
    from cnnlens.evaluate._deletion import CURVE_STEPS

    args = build_parser().parse_args(["evaluate", "cat"])
    assert inspect.signature(build_report).parameters["steps"].default == CURVE_STEPS
    assert args.steps == CURVE_STEPS == inspect.signature(trust_table).parameters["steps"].default


def test_counted_nouns(cat_report: Report) -> None:
    assert count(1, "image") == "1 image" and count(2, "image") == "2 images"
    page = report_html(cat_report)
    assert "· 1 image ·" in page and "image(s)" not in page


def test_baseline_words() -> None:
    assert "mid-grey" in baseline_words("zeros", (128, 128, 128))
    assert "black" in baseline_words(0.0, (0, 0, 0))
    assert baseline_words(0.3, (128, 128, 128)) == "0.3 in the normalized input (a constant image)"
    text = method_text(
        "occlusion", {"window": (8, 12), "stride": 4}, target="x", zero_colour=(1, 2, 3)
    )
    assert "window 8×12 px" in text.settings and "stride 4×4 px" in text.settings


@requires_chromium
@pytest.mark.parametrize("width", [1280, 1920])
def test_report_page_in_chromium(cat_report: Report, tmp_path: Path, width: int) -> None:
    page = tmp_path / "report.html"
    page.write_text(report_html(cat_report), encoding="utf-8")
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "")  # nothing fetched
    assert "https://" not in text
    shots = Path(os.environ.get("CNNLENS_SCREENSHOTS", tmp_path))
    result = check_page(page, shots / f"report-{width}.png", width=width)
    assert result.images >= 2 * len(REPORT_METHODS) + 4
    assert result.broken == []
    assert result.console_errors == []
    assert result.clipped == []
    assert result.heatmaps >= 2 * len(REPORT_METHODS) + 24  # the maps and the activation tiles
    assert result.heatmaps_without_bar == []
    assert not result.horizontal_scroll
    assert result.used_width > 0.9  # no third of the page left empty
    assert result.smallest_map >= 224
    panels = result.panels
    assert [p["method"] for p in panels] == list(REPORT_METHODS)
    assert len({round(p["width"]) for p in panels}) == 1  # equal panels
    for p in panels:  # the caption in the page names the options the method ran with
        for phrase in EXPECTED.get(p["method"], []):
            assert phrase in p["settings"], (p["method"], phrase)
        for key, value in OPTIONS.get(p["method"], {}).items():
            assert p["options"][key.replace("_", "-")] == str(value)
    assert (shots / f"report-{width}.png").stat().st_size > 10_000


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
    assert capsys.readouterr().out.startswith("wrote ")


def test_report_cli_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "missing.jpg" in err
    assert err.count("\n") == 1
    assert main(["report", "cat", "coffee", "--target", "1", "-o", str(tmp_path / "r.html")]) == 2


def _segments(err: str) -> list[str]:
    return [s.rstrip() for s in re.split(r"[\r\n]", err) if s.strip()]


def test_report_progress_counts_steps_when_done(capsys: pytest.CaptureFixture[str]) -> None:
    from cnnlens._progress import progress_mode

    model = cnnlens.load_model("efficientnet_lite0")
    with progress_mode(True):
        build_report(
            model,
            [("cat", cnnlens.sample_image("cat"))],
            methods=["saliency", "gradcam"],
            behaviour=False,
            steps=2,
        )
    err = capsys.readouterr().err
    total = report_steps(1, 2, 1, False)
    counts = [int(n) for n in re.findall(rf"(\d+)/{total}\b", err)]
    assert counts[0] == 0 and counts[-1] == total and counts == sorted(counts)
    # While a step runs, the count shows the steps before it: saliency runs after predict;
    # once it is done it says so and counts.
    lines = [s for s in _segments(err) if f"/{total}" in s]
    assert [s for s in lines if s.endswith("cat: saliency]")]
    assert all(f" 1/{total}" in s for s in lines if s.endswith("cat: saliency]"))
    assert any(f" 2/{total}" in s for s in lines if s.endswith("cat: saliency: done]"))


def test_layer_words() -> None:
    from cnnlens._report import LayerNote
    from cnnlens.render._captions import layer_words

    note = LayerNote("a.b", "ReLU", 64, (14, 14), 16, 4, 5, (99, 99))
    assert layer_words(note, "a.b") == (
        "a.b — ReLU, stage 4 of 5, 64 channels at 14×14 (1/16 of the input side), "
        "receptive field 99×99 px"
    )
    assert layer_words(note, "a.b", with_name=False).startswith("ReLU, stage 4 of 5")
    unknown = LayerNote("a.b", "ReLU", 64, (14, 14), 16, 4, 5, None, "the probe failed")
    assert layer_words(unknown, "a.b").endswith("receptive field not computed (the probe failed)")
    glob = LayerNote("a.b", "ReLU", 64, (14, 14), 16, 4, 5, None)
    assert "no local receptive field" in layer_words(glob, "a.b")
    assert layer_words(None, "a.b") == "a.b"
