"""``cnnlens models`` and ``cnnlens predict``: output, exit codes, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from cnnlens.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("cnnlens: error:")
    return lines[0]


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_models_lists_every_named_spec(capsys: pytest.CaptureFixture[str], empty_hub: Path) -> None:
    code, out, err = _run(capsys, "models")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("* efficientnet_lite0") and "bundled" in lines[0]
    names = [line[2:].split()[0] for line in lines]
    assert names[:2] == ["efficientnet_lite0", "fashion_cnn"]
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)
    resnet = next(line for line in lines if line[2:].split()[0] == "resnet50")
    assert "not cached" in resnet and "--random-weights" in resnet


def test_models_offline_shows_cached_weights(
    capsys: pytest.CaptureFixture[str], empty_hub: Path
) -> None:
    from cnnlens.models._load import torchvision_weights_path

    path = torchvision_weights_path("squeezenet1_1")
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x")  # only its presence is listed
    code, out, _ = _run(capsys, "models", "--offline")
    names = [line[2:].split()[0] for line in out.splitlines()]
    assert code == 0 and names == ["efficientnet_lite0", "fashion_cnn", "squeezenet1_1"]


def test_predict_cat_sample(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "predict", "cat", "--top", "3")
    assert code == 0 and err == ""
    header, *rows = out.strip().splitlines()
    assert header.split() == ["rank", "prob", "index", "label"]
    assert len(rows) == 3
    rank, prob, index, *label = rows[0].split()
    assert rank == "1" and 281 <= int(index) <= 285 and 0.3 < float(prob) <= 1.0
    assert " ".join(label) in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
    probs = [float(r.split()[1]) for r in rows]
    assert probs == sorted(probs, reverse=True)


def test_predict_image_file_and_several_images(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cnnlens import sample_image

    path = tmp_path / "cup.jpg"
    sample_image("coffee").save(path, quality=95)
    code, out, _ = _run(capsys, "predict", str(path), "cat", "--top", "1")
    assert code == 0
    blocks = out.strip().split("\n\n")
    assert blocks[0].startswith(f"{path}:") and "espresso" in blocks[0]
    assert blocks[1].startswith("cat:") and len(blocks[1].splitlines()) == 3


def test_predict_random_torchvision_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "predict", "coffee", "--model", "squeezenet1_1", "--random-weights", "--top", "2"
    )
    assert code == 0 and len(out.strip().splitlines()) == 3


def test_predict_state_dict_with_arch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "sq.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)
    code, _, err = _run(capsys, "predict", "cat", "--model", str(path))
    assert code == 2 and "--arch" in _one_line_error(err)
    code, out, _ = _run(capsys, "predict", "cat", "--model", str(path), "--arch", "squeezenet1_1")
    assert code == 0 and len(out.strip().splitlines()) == 6


def test_predict_pickled_module_needs_trust_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "whole.pt"
    torch.save(torchvision.models.squeezenet1_1(weights=None), path)
    code, _, err = _run(capsys, "predict", "cat", "--model", str(path))
    assert code == 2 and "--trust-pickle" in _one_line_error(err)
    code, out, _ = _run(capsys, "predict", "cat", "--model", str(path), "--trust-pickle")
    assert code == 0 and len(out.strip().splitlines()) == 6


def _bad_files(tmp_path: Path) -> dict[str, str]:
    text = tmp_path / "notes.png"
    text.write_text("hello\n")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    from cnnlens import sample_image

    good = tmp_path / "good.jpg"
    sample_image("cat").save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:2000])
    return {
        str(tmp_path / "missing.jpg"): "no such file",
        str(tmp_path): "is a directory",
        str(text): "not an image file",
        str(empty): "empty file",
        str(cut): "truncated",
    }


def test_predict_bad_image_files_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for path, reason in _bad_files(tmp_path).items():
        code, out, err = _run(capsys, "predict", path)
        assert code == 2, path
        line = _one_line_error(err)
        assert path in line and reason in line
        assert out == ""


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["predict", "cat", "--model", "resnt18"], "did you mean resnet18"),
        (["predict", "cat", "--model", "no/such/model.pt"], "no such model file"),
        (["predict", "cat", "--top", "0"], "--top: must be at least 1, got 0"),
        (["predict", "zebra"], "no such file, nor a sample image (cat, coffee"),
        # a model's name where the image goes (`cnnlens check resnet18 -m lrp`)
        (["check", "resnet18", "-m", "lrp"], "; to pick the model, use --model resnet18"),
    ],
)
def test_predict_bad_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert reason in _one_line_error(err)


def test_predict_weights_missing_offline(
    capsys: pytest.CaptureFixture[str], empty_hub: Path
) -> None:
    code, _, err = _run(capsys, "predict", "cat", "--model", "resnet18")
    line = _one_line_error(err)
    assert code == 2 and "missing offline" in line and "--random-weights" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_predict_cuda_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "predict", "cat", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in _one_line_error(err)


def test_predict_needs_an_image(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict"]) == 2
    assert "IMAGE" in capsys.readouterr().err
