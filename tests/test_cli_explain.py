"""``cnnlens explain``: the written pictures and raw tensors, options reaching each method,
exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import cnnlens
from cnnlens.cli import main

RANDOM = ["--model", "resnet18", "--random-weights"]
TILE = 224


def _model() -> cnnlens.LoadedModel:
    # The same random weights as the command's: both seeded identically before loading.
    torch.manual_seed(0)
    return cnnlens.load_model("resnet18", pretrained=False)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return picture.size


def _run(argv: list[str]) -> int:
    torch.manual_seed(0)
    return main(argv)


def test_single_method_overlay_signed_map_and_raw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, raw = tmp_path / "sub" / "out.png", tmp_path / "raw.pt"
    argv = ["explain", "cat", "--method", "saliency", *RANDOM, "-o", str(out), "--raw", str(raw)]
    assert _run(argv) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(out), "wrote", str(raw)]
    width, height = _size(out)
    # input, overlay, signed map in one row
    assert width > 3 * TILE and height < 2 * TILE
    saved = torch.load(raw)
    assert set(saved) == {"saliency"}
    model = _model()
    inputs = model.preprocess(cnnlens.sample_image("cat"))
    expected = cnnlens.explain(model, inputs, "saliency").attribution
    torch.testing.assert_close(saved["saliency"], expected)


def test_options_and_label_target_reach_the_method(tmp_path: Path) -> None:
    raw = tmp_path / "raw.pt"
    argv = [
        "explain",
        "cat",
        "-m",
        "smoothgrad",
        "--samples",
        "3",
        "--noise",
        "0.1",
        "--seed",
        "4",
        "--target",
        "tabby",
        *RANDOM,
        "-o",
        str(tmp_path / "o.png"),
        "--raw",
        str(raw),
    ]
    assert _run(argv) == 0
    model = _model()
    tabby = model.labels.index("tabby")
    inputs = model.preprocess(cnnlens.sample_image("cat"))
    expected = cnnlens.explain(
        model, inputs, "smoothgrad", target=tabby, samples=3, noise=0.1, seed=4
    ).attribution
    torch.testing.assert_close(torch.load(raw)["smoothgrad"], expected)
    # another seed gives another map, so the option did arrive
    other = cnnlens.explain(
        model, inputs, "smoothgrad", target=tabby, samples=3, noise=0.1, seed=5
    ).attribution
    assert not torch.allclose(other, expected)


def test_several_methods_grid_with_other_methods_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, raw = tmp_path / "grid.png", tmp_path / "raw.pt"
    argv = [
        "explain",
        "cat",
        "-m",
        "guided_backprop,gradcam",
        "-m",
        "occlusion",
        "--window",
        "56",
        "--stride",
        "56",
        "--layer",
        "layer3",
        "--target",
        "3",
        *RANDOM,
        "-o",
        str(out),
        "--raw",
        str(raw),
    ]
    assert _run(argv) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(out), "wrote", str(raw)]
    width, height = _size(out)
    # input + 3 methods side by side; a second row of signed maps
    assert 4 * TILE < width < 5 * TILE
    assert 2 * TILE < height < 3 * TILE
    saved = torch.load(raw)
    assert list(saved) == ["guided_backprop", "gradcam", "occlusion"]
    assert saved["guided_backprop"].shape == (1, 3, TILE, TILE)
    assert saved["gradcam"].shape == (1, 14, 14)  # layer3 of resnet18 at 224
    model = _model()
    inputs = model.preprocess(cnnlens.sample_image("cat"))
    occlusion = cnnlens.explain(model, inputs, "occlusion", target=3, window=56, stride=56)
    torch.testing.assert_close(saved["occlusion"], occlusion.attribution)


# Two steps leave integrated gradients far from complete, which it says; the test is about
# the option reaching the method.
@pytest.mark.filterwarnings("ignore::cnnlens.CompletenessWarning")
def test_generic_option_flag(tmp_path: Path) -> None:
    raw = tmp_path / "raw.pt"
    argv = ["explain", "cat", "-m", "integrated_gradients", "--option", "steps=2"]
    argv += ["--baseline", "0.5", *RANDOM, "-o", str(tmp_path / "o.png"), "--raw", str(raw)]
    assert _run(argv) == 0
    model = _model()
    inputs = model.preprocess(cnnlens.sample_image("cat"))
    expected = cnnlens.explain(model, inputs, "integrated_gradients", steps=2, baseline=0.5)
    torch.testing.assert_close(torch.load(raw)["integrated_gradients"], expected.attribution)


def test_default_model(tmp_path: Path) -> None:
    raw = tmp_path / "raw.pt"
    argv = ["explain", "cat", "-m", "guided_backprop", "-o", str(tmp_path / "o.png")]
    assert main([*argv, "--raw", str(raw)]) == 0
    model = cnnlens.load_model("efficientnet_lite0")
    inputs = model.preprocess(cnnlens.sample_image("cat"))
    expected = cnnlens.explain(model, inputs, "guided_backprop")
    assert expected.targets is not None
    assert "cat" in model.label(int(expected.targets[0]))
    torch.testing.assert_close(torch.load(raw)["guided_backprop"], expected.attribution)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cat", "-m", "salency"], "did you mean saliency"),
        (["cat", "-m", "saliency", "--target", "no such label"], "matches no class"),
        (["cat", "-m", "saliency", "--target", "1000"], "out of range"),
        (["missing.jpg", "-m", "saliency"], "missing.jpg"),
        (["cat", "-m", "saliency", "--samples", "4"], "--samples is not an option"),
        (["cat", "-m", "saliency", "--layer", "layer3"], "--layer is not used"),
        (["cat", "-m", "gradcam", "--layer", "layer9"], "unknown layer"),
        (["cat", "-m", "saliency", "--option", "steps"], "NAME=VALUE"),
        (["cat", "-m", "smoothgrad", "--samples", "0"], "--samples: must be at least 1"),
    ],
)
def test_bad_input_exits_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.png"
    assert main(["explain", *args, *RANDOM, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_missing_method_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "cat", "-o", "x.png"]) == 2
    assert "--method" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "form"), [("o.jpg", "JPEG"), ("o.WEBP", "WEBP"), ("o.png", "PNG")]
)
def test_picture_written_in_the_format_its_name_says(tmp_path: Path, name: str, form: str) -> None:
    out = tmp_path / name
    assert _run(["explain", "cat", "-m", "saliency", *RANDOM, "-o", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.format == form


@pytest.mark.parametrize("command", [["explain", "cat", "-m", "saliency"], ["filters"]])
def test_picture_named_other_than_png_jpg_webp_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    out = tmp_path / "maps.txt"
    assert main([*command, *RANDOM, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "name the file .png, .jpg or .webp" in err and err.count("\n") == 1
    assert not out.exists()


def test_maps_carry_colour_bars(tmp_path: Path) -> None:
    # Under the overlay a jet bar (blue to dark red), under the signed map a bwr bar (blue,
    # white in the middle, red); the input has none.
    out = tmp_path / "o.png"
    assert _run(["explain", "cat", "-m", "saliency", *RANDOM, "-o", str(out)]) == 0
    with Image.open(out) as opened:
        picture = opened.convert("RGB")
    column = TILE + 4  # one panel and the grid's padding

    def bar_row(panel: int) -> list[tuple[int, int, int]]:
        x0 = 4 + panel * column
        # the first row of the picture's last 60 (below the maps) not white at both ends
        for y in range(picture.height - 60, picture.height):
            left, middle, right = (
                picture.getpixel((x0 + dx, y)) for dx in (10, TILE // 2, TILE - 10)
            )
            if left != (255, 255, 255) and right != (255, 255, 255):
                return [left, middle, right]  # type: ignore[list-item]
        return []

    assert bar_row(0) == []
    left, _, right = bar_row(1)
    assert left[2] > 100 > left[0] and right[0] > 100 > right[2]  # blue ... red
    left, middle, right = bar_row(2)
    assert left[2] > 200 > left[0] and right[0] > 200 > right[2] and min(middle) > 200
