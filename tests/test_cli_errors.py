"""Bad input on the command line: exit code 2, one plain line on stderr, nothing left
behind — and the same errors from the API as :class:`cnnlens.InputError`."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens import InputError, ModelLoadError

from .conftest import cli_fails

RANDOM = ["--model", "resnet18", "--random-weights"]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------ output paths


def test_output_folder_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    before = _listing(tmp_path)
    line = cli_fails(capsys, "explain", "cat", "-m", "saliency", *RANDOM,
                  "-o", str(tmp_path / "afile" / "deeper" / "out.png"))  # fmt: skip
    assert "afile is a file, not a folder" in line
    line = cli_fails(capsys, "index", "fashion-mnist", "-o", str(tmp_path / "afile" / "store"))
    assert "afile is a file" in line
    assert _listing(tmp_path) == before


def test_output_naming_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = cli_fails(capsys, "filters", *RANDOM, "-o", str(tmp_path))
    assert "is a folder; name a file" in line
    (tmp_path / "file.txt").write_text("x")
    line = cli_fails(capsys, "evaluate", "cat", *RANDOM, "-o", str(tmp_path / "file.txt"))
    assert "is a file; name a folder" in line


def test_output_where_no_file_can_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # /proc refuses new files even to root (tests run as root in CI, where a chmod'ed
    # folder would not stop the write).
    line = cli_fails(capsys, "visualize", "--target", "1", *RANDOM,
                  "-o", "/proc/cnnlens-test/out.png")  # fmt: skip
    assert "cannot write /proc/cnnlens-test/out.png: no files can be created in /proc" in line
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            line = cli_fails(capsys, "filters", *RANDOM, "-o", str(locked / "sub" / "f.png"))
            assert "Permission denied" in line
            assert _listing(tmp_path) == ["locked"]
        finally:
            locked.chmod(0o700)


def test_every_written_path_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_fails(capsys, "explain", "cat", "-m", "saliency", *RANDOM, "-o", str(tmp_path / "a.png"),
           "--raw", str(tmp_path))  # fmt: skip
    cli_fails(capsys, "embed", "--store", str(tmp_path), "-o", str(tmp_path / "m.png"),
           "--html", "/proc/x/m.html")  # fmt: skip
    cli_fails(capsys, "report", "-o", str(tmp_path))
    assert _listing(tmp_path) == []


def test_misspelt_report_method_is_refused_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not a report with an empty "not available" panel and exit 0.
    line = cli_fails(capsys, "report", "cat", "--methods", "saliency,gradcm", *RANDOM,
                  "-o", str(tmp_path / "new" / "r.html"))  # fmt: skip
    assert "unknown method 'gradcm'; did you mean gradcam" in line
    assert _listing(tmp_path) == []


# ------------------------------------------------------------------ counts


def test_batch_size_zero_is_refused_before_anything_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = cli_fails(capsys, "index", "fashion-mnist", "--batch-size", "0",
                  "-o", str(tmp_path / "store"))  # fmt: skip
    assert "--batch-size: must be at least 1, got 0" in line
    assert _listing(tmp_path) == []
    cli_fails(capsys, "patches", "fashion-mnist", "-k", "0", "-o", str(tmp_path / "p.png"))
    cli_fails(capsys, "visualize", "--target", "1", "--steps", "-3", "-o", str(tmp_path / "v.png"))


def test_bad_input_during_the_run_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data" / "a"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(data / f"{i}.png")
    (data / "4.png").write_text("not a picture")  # found only when its batch is read
    store = tmp_path / "out" / "store"
    line = cli_fails(capsys, "index", str(tmp_path / "data"), "--model", "fashion_cnn",
                  "--batch-size", "2", "-o", str(store))  # fmt: skip
    assert "4.png" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ model files


def _model_files(root: Path) -> dict[str, tuple[Path, str]]:
    """Bad model files and the words their error must contain."""
    hello = root / "hello.pt"
    hello.write_text("hello world")
    raw = root / "raw.pkl"
    with raw.open("wb") as handle:
        pickle.dump({"weights": [1.0, 2.0]}, handle, protocol=4)

    class Shell:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("echo this must never run",))

    code = root / "code.pt"
    torch.save({"model": Shell()}, code)
    return {
        "text": (hello, "not a PyTorch model file"),
        "raw pickle": (raw, "a plain Python pickle, not a PyTorch model file"),
        "code": (code, "holds code cnnlens will not run (unpickling it would call"),
    }


def test_bad_model_files_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, words in _model_files(tmp_path).values():
        line = cli_fails(capsys, "layers", "--model", str(path))
        assert words in line and str(path) in line
    assert "torch.load" not in line and "weights_only" not in line


def test_bad_model_files_from_load_model(tmp_path: Path) -> None:
    for path, words in _model_files(tmp_path).values():
        with pytest.raises(ModelLoadError, match="^" + str(path)) as info:
            cnnlens.load_model(path)
        assert words in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ inputs


def test_one_channel_input_to_a_three_channel_model(untouched: Any) -> None:
    model = cnnlens.load_model("resnet18", pretrained=False)
    gray, probe = torch.rand(1, 1, 64, 64), torch.rand(1, 3, 64, 64)
    snapshot = untouched.take(model.module, probe)
    for method in ("lrp", "saliency", "gradcam"):
        with pytest.raises(InputError, match="the model expects 3 input channels, but the in"):
            cnnlens.explain(model, gray, method)
    snapshot.assert_same(model.module, probe)
