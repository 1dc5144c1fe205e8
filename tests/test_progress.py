"""The progress facility: when bars are shown, and that steps count once they are done."""

from __future__ import annotations

import re

import pytest

from cnnlens._progress import progress, progress_mode, show_progress, track


def _counts(err: str, total: int) -> list[int]:
    """Every ``n/total`` drawn, in order."""
    return [int(n) for n in re.findall(rf"(\d+)/{total}\b", err)]


def test_hidden_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(3, "work") as bar:
        bar.advance(3)
    assert not bar.shown and bar.done == 3
    assert capsys.readouterr().err == ""


def test_forced_bar_draws_on_stderr_with_eta(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_mode(True), progress(4, "work", unit="item") as bar:
        for _ in range(4):
            bar.advance()
    out, err = capsys.readouterr()
    assert out == ""
    assert "work" in err and "4/4" in err and "item/s" in err
    assert re.search(r"<\d\d:\d\d", err), "no ETA drawn"
    assert _counts(err, 4) == sorted(_counts(err, 4))


@pytest.mark.parametrize(
    ("mode", "enabled", "env", "shown"),
    [
        (None, None, None, False),  # pytest's stderr is not a terminal
        (None, True, None, True),
        (None, None, "1", True),
        (None, False, "1", False),
        (True, None, None, True),
        (True, False, None, False),  # a call that turns its own bar off (nested work)
        (False, True, "1", False),  # --quiet beats everything
    ],
)
def test_who_decides(
    monkeypatch: pytest.MonkeyPatch,
    mode: bool | None,
    enabled: bool | None,
    env: str | None,
    shown: bool,
) -> None:
    if env is None:
        monkeypatch.delenv("CNNLENS_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("CNNLENS_PROGRESS", env)
    with progress_mode(mode):
        assert show_progress(enabled) is shown


def test_mode_is_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError), progress_mode(False):
        raise RuntimeError
    assert show_progress(True)


def test_steps_count_when_done(capsys: pytest.CaptureFixture[str]) -> None:
    seen = []
    with progress_mode(True):
        for name in track(["a", "b", "c"], "letters"):
            seen.append(name)
    err = capsys.readouterr().err
    assert seen == ["a", "b", "c"]
    assert _counts(err, 3)[0] == 0 and _counts(err, 3)[-1] == 3

    with progress_mode(True), progress(2, "methods") as bar:
        for method in ("first", "second"):
            bar.describe(method)
            assert bar.done == ("first", "second").index(method)  # while it runs
            bar.advance()
    err = capsys.readouterr().err
    # While "second" runs, the bar reads 1/2 (the first is done), not 2/2.
    assert re.search(r"1/2\b[^\r\n]*second", err), err
    assert not re.search(r"2/2\b[^\r\n]*first", err), err


def test_inner_bars_are_cleared(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_mode(True), progress(1, "outer") as outer:
        with progress(2, "inner") as inner:
            inner.advance(2)
        outer.advance()
    err = capsys.readouterr().err
    assert "inner" in err and "outer" in err
    assert err.rstrip().splitlines()[-1].lstrip("\r").startswith("outer")


def test_tsne_bar_counts_iterations_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import numpy as np

    from cnnlens import embed

    features = np.random.default_rng(0).normal(size=(40, 5))
    options = {"early_exaggeration_iter": 60, "n_iter": 40}
    quiet = embed(features, "tsne", progress=False, **options)
    with progress_mode(True):
        shown = embed(features, "tsne", **options)
    err = capsys.readouterr().err
    np.testing.assert_array_equal(quiet, shown)
    counts = _counts(err, 100)
    assert counts[0] == 0 and counts[-1] == 100 and counts == sorted(counts), counts
    assert 85 in counts, "the main phase continues after the 60 early iterations"
    assert "KL divergence" in err
