"""The "fast" feature-visualization recipe (the CLI's default): coarse views first, then
full-size ones, a cosine learning rate; and that the default reaches its classes."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from cnnlens.behaviour.visualize import FAST_STEPS, visualize
from cnnlens.behaviour.visualize.optimize import (
    RECIPES,
    coarse_view,
    learning_rate,
    settings_for,
)


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def _seen_sizes(net: nn.Module, **options: Any) -> tuple[Tensor, list[tuple[int, int]]]:
    sizes: list[tuple[int, int]] = []

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        sizes.append((int(args[0].shape[-2]), int(args[0].shape[-1])))

    handle = net.register_forward_pre_hook(record)
    try:
        images = visualize(net, 1, **options)
    finally:
        handle.remove()
    return images, sizes


def test_coarse_views_then_full_size() -> None:
    images, sizes = _seen_sizes(_net(), recipe="fast", steps=8, size=(224, 160))
    assert images.shape == (1, 3, 224, 160)  # the picture itself is full size
    # 3/4 of the steps see the picture with its shorter side at 128 pixels, the rest whole
    assert sizes == [(179, 128)] * 6 + [(224, 160)] * 2
    assert coarse_view(RECIPES["fast"], (224, 224)) == (128, 128)


def test_no_coarse_views_when_the_picture_is_small_or_the_recipe_is_lucid() -> None:
    _, sizes = _seen_sizes(_net(), recipe="fast", steps=4, size=96)
    assert sizes == [(96, 96)] * 4
    _, sizes = _seen_sizes(_net(), steps=4, size=160)
    assert sizes == [(160, 160)] * 4
    # without transforms (Simonyan's recipe) the coarse view is a plain resize
    _, sizes = _seen_sizes(
        _net(), recipe="simonyan", steps=4, size=160, coarse_size=80, coarse_steps=0.5
    )
    assert sizes == [(80, 80)] * 2 + [(160, 160)] * 2


def test_cosine_learning_rate() -> None:
    fast = RECIPES["fast"]
    rates = [learning_rate(fast, step, 10) for step in range(10)]
    assert rates[0] == fast.lr
    assert all(a > b > 0 for a, b in itertools.pairwise(rates))
    assert rates[5] == pytest.approx(fast.lr / 2)
    assert rates[-1] == pytest.approx(fast.lr * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert learning_rate(RECIPES["lucid"], 7, 10) == RECIPES["lucid"].lr


@pytest.mark.parametrize(
    ("option", "value"), [("schedule", "step"), ("coarse_size", 4), ("coarse_steps", 1.5)]
)
def test_bad_schedule_options(option: str, value: object) -> None:
    from cnnlens import InputError

    with pytest.raises(InputError, match=option):
        settings_for("fast", **{option: value})


def test_cli_default_is_the_fast_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cnnlens.cli import _visualize, main

    calls: list[dict[str, Any]] = []

    def fake(model: Any, objectives: Any, **kwargs: Any) -> Tensor:
        calls.append(kwargs)
        return torch.zeros(len(objectives), 3, 8, 8)

    monkeypatch.setattr(_visualize, "visualize", fake)
    base = ["visualize", "--model", "fashion_cnn", "--target", "3", "-o", str(tmp_path / "v.png")]
    assert main(base) == 0
    assert main([*base, "--recipe", "lucid", "--size", "64"]) == 0
    assert main([*base, "--plain-l2", "0.001", "--steps", "7"]) == 0
    capsys.readouterr()
    assert [(c["recipe"], c["steps"]) for c in calls] == [
        ("fast", FAST_STEPS),
        ("lucid", 256),
        ("simonyan", 7),
    ]
    assert calls[1]["size"] == 64 and "size" not in calls[0]


@pytest.mark.slow
def test_acceptance_fast_default_reaches_the_classes() -> None:
    """The CLI's default (fast recipe, FAST_STEPS steps), one class at a time as
    `cnnlens visualize --target C` runs it: the README's tabby and docs/visualize.md's five
    classes each get probability >= 0.9 (figures and times in docs/visualize.md)."""
    import cnnlens

    model = cnnlens.load_model("efficientnet_lite0")
    prep = model.preprocessing
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    for klass in (281, 1, 130, 323, 949, 980):  # tabby, goldfish, flamingo, monarch, ...
        start = time.perf_counter()
        image = visualize(model, klass, steps=FAST_STEPS, recipe="fast")
        seconds = time.perf_counter() - start
        with torch.no_grad():
            p = torch.softmax(model((image - mean) / std), dim=1)[0, klass]
        assert float(p) >= 0.9, (klass, float(p), seconds)
