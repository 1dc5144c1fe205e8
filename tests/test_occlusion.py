"""Occlusion: exact maps on toy models with known answers, batching, options, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError
from cnnlens.attribution.occlusion import window_starts


class RegionSum(nn.Module):
    """Logit 0: weighted sum of the input inside rows [r0, r1) × cols [c0, c1) (all
    channels); logit 1: minus the sum of everything."""

    def __init__(self, r0: int, r1: int, c0: int, c1: int, weight: float = 1.0) -> None:
        super().__init__()
        self.box = (r0, r1, c0, c1)
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        r0, r1, c0, c1 = self.box
        region = x[:, :, r0:r1, c0:c1].sum(dim=(1, 2, 3)) * self.weight
        return torch.stack([region, -x.sum(dim=(1, 2, 3))], dim=1)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_window_starts_add_a_window_flush_with_the_edge() -> None:
    assert window_starts(10, 4, 3) == [0, 3, 6]  # 6 + 4 = 10: lands on the edge
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # one more window flush with the edge
    assert window_starts(5, 5, 2) == [0]
    assert window_starts(7, 1, 3) == [0, 3, 6]


def test_single_pixel_region_hand_computed() -> None:
    # Ones image 4x4, the score is the pixel (1, 1). Window 2, stride 1: 3x3 positions;
    # a window's drop is 1 when it contains (1, 1), else 0. Per pixel: the share of the
    # windows covering it that contain (1, 1).
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    model = RegionSum(1, 2, 1, 2)
    a = cnnlens.explain(model, x, "occlusion", target=0, window=2, stride=1).attribution
    expected = torch.tensor(
        [
            [1, 1, 1 / 2, 0],
            [1, 1, 1 / 2, 0],
            [1 / 2, 1 / 2, 1 / 4, 0],
            [0, 0, 0, 0],
        ],
        dtype=torch.float64,
    )
    assert a.shape == (1, 1, 4, 4)
    torch.testing.assert_close(a[0, 0], expected, rtol=0, atol=1e-12)
    # window 2, stride 2: only the top-left window contains (1, 1)
    a = cnnlens.explain(model, x, "occlusion", target=0, window=2, stride=2).attribution
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[:2, :2] = 1
    torch.testing.assert_close(a[0, 0], expected, rtol=0, atol=1e-12)


def _reference_map(
    x: Tensor,
    box: tuple[int, int, int, int],
    weight: float,
    tops: list[int],
    lefts: list[int],
    win: tuple[int, int],
    fill: float,
) -> Tensor:
    """Independent slow reference: explicit loops over windows and pixels."""
    _, _, h, w = x.shape
    r0, r1, c0, c1 = box
    total = [[0.0] * w for _ in range(h)]
    count = [[0] * w for _ in range(h)]
    values = x[0].tolist()
    for top in tops:
        for left in lefts:
            drop = 0.0
            for c in range(len(values)):
                for i in range(max(top, r0), min(top + win[0], r1)):
                    for j in range(max(left, c0), min(left + win[1], c1)):
                        drop += weight * (values[c][i][j] - fill)
            for i in range(top, top + win[0]):
                for j in range(left, left + win[1]):
                    total[i][j] += drop
                    count[i][j] += 1
    return torch.tensor(
        [[total[i][j] / count[i][j] if count[i][j] else 0.0 for j in range(w)] for i in range(h)],
        dtype=torch.float64,
    )


def test_region_model_matches_slow_reference_with_flush_window() -> None:
    x = torch.randn(1, 2, 10, 11, dtype=torch.float64)
    box = (2, 7, 3, 9)
    model = RegionSum(*box, weight=0.5)
    a = cnnlens.explain(
        model, x, "occlusion", target=0, window=(4, 4), stride=3, baseline=0.25, batch_size=5
    ).attribution
    # rows: 0, 3, 6 (6 + 4 = 10 lands on the edge); cols: 0, 3, 6 and 7 flush with the edge
    expected = _reference_map(x, box, 0.5, [0, 3, 6], [0, 3, 6, 7], (4, 4), 0.25)
    torch.testing.assert_close(a[0, 0], expected, rtol=0, atol=1e-10)
    assert bool((a[0, 0, :, 10] != 0).any()), "the last column must be covered"


def test_rectangular_window_and_stride_pairs() -> None:
    x = torch.randn(1, 1, 9, 8, dtype=torch.float64)
    box = (1, 5, 2, 8)
    a = cnnlens.explain(
        RegionSum(*box), x, "occlusion", target=0, window=(3, 2), stride=(2, 3)
    ).attribution
    expected = _reference_map(x, box, 1.0, [0, 2, 4, 6], [0, 3, 6], (3, 2), 0.0)
    torch.testing.assert_close(a[0, 0], expected, rtol=0, atol=1e-10)


def test_probability_score_hand_computed() -> None:
    # Logits (s, -t) with s the region sum and t the total: p0 = 1 / (1 + exp(-t - s)).
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    model = RegionSum(0, 2, 0, 2)
    a = cnnlens.explain(
        model, x, "occlusion", target=0, window=2, stride=2, score="probability"
    ).attribution

    def p0(img: list[list[float]]) -> float:
        s = img[0][0] + img[0][1] + img[1][0] + img[1][1]
        t = sum(sum(row) for row in img)
        return 1.0 / (1.0 + math.exp(-t - s))

    img = x[0, 0].tolist()
    clean = p0(img)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for top in (0, 2):
        for left in (0, 2):
            occluded = [row[:] for row in img]
            for i in range(top, top + 2):
                for j in range(left, left + 2):
                    occluded[i][j] = 0.0
            expected[top : top + 2, left : left + 2] = clean - p0(occluded)
    torch.testing.assert_close(a[0, 0], expected, rtol=0, atol=1e-12)


def test_batch_equals_items_alone() -> None:
    model = small_cnn().double().eval()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    options = {"window": 4, "stride": 3, "batch_size": 7}  # batches mix items
    batch = cnnlens.explain(model, x, "occlusion", **options)
    alone = [cnnlens.explain(model, x[i : i + 1], "occlusion", **options) for i in range(3)]
    assert batch.targets is not None
    assert batch.targets.tolist() == [int(e.targets[0]) for e in alone if e.targets is not None]
    torch.testing.assert_close(
        batch.attribution, torch.cat([e.attribution for e in alone]), rtol=1e-10, atol=1e-12
    )
    one_row = cnnlens.explain(model, x, "occlusion", window=4, stride=3, batch_size=1)
    torch.testing.assert_close(batch.attribution, one_row.attribution, rtol=1e-10, atol=1e-12)


def test_per_item_targets_and_tensor_baseline() -> None:
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    model = RegionSum(1, 4, 2, 5)
    fill = torch.full((2, 6, 6), 0.7, dtype=torch.float64)
    as_float = cnnlens.explain(model, x, "occlusion", target=[0, 1], window=3, baseline=0.7)
    as_tensor = cnnlens.explain(model, x, "occlusion", target=[0, 1], window=3, baseline=fill)
    torch.testing.assert_close(as_float.attribution, as_tensor.attribution)
    # per-item baseline: item 1 occluded with its own values changes nothing
    per_item = torch.stack([torch.zeros(2, 6, 6, dtype=torch.float64), x[1]])
    with pytest.warns(cnnlens.ZeroAttributionWarning, match=r"for items \[1\]: covering"):
        a = cnnlens.explain(
            model, x, "occlusion", target=0, window=3, baseline=per_item
        ).attribution
    assert bool((a[1] == 0).all())
    assert bool((a[0] != 0).any())


def test_callable_target() -> None:
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    model = RegionSum(0, 3, 0, 3)
    by_class = cnnlens.explain(model, x, "occlusion", target=0, window=2).attribution
    by_callable = cnnlens.explain(
        model, x, "occlusion", target=lambda out: out[:, 0], window=2
    ).attribution
    torch.testing.assert_close(by_class, by_callable)


class _Spy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []
        self.inference: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.rows.append(x.shape[0])
        self.inference.append(torch.is_inference_mode_enabled())
        return self.inner(x)


def test_batches_are_bounded_and_run_in_inference_mode() -> None:
    spy = _Spy(small_cnn())
    x = torch.randn(2, 3, 16, 16)
    # the plain path: whole forwards of the occluded copies (the incremental engine calls
    # the submodules instead; see the next test)
    cnnlens.explain(spy, x, "occlusion", window=4, stride=4, batch_size=6, incremental=False)
    # 16 windows per item, 32 copies: the clean pass, then 6, 6, 6, 6, 6, 2
    assert spy.rows == [2, 6, 6, 6, 6, 6, 2]
    assert all(spy.inference)


def test_incremental_batches_are_bounded_and_run_in_inference_mode() -> None:
    model = small_cnn()
    rows: list[int] = []
    inference: list[bool] = []

    def record(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        rows.append(args[0].shape[0])
        inference.append(torch.is_inference_mode_enabled())

    modules = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_pre_hook(record) for m in modules]
    try:
        cnnlens.explain(
            model,
            torch.randn(2, 3, 16, 16),
            "occlusion",
            window=4,
            stride=4,
            batch_size=6,
            incremental=True,
        )
    finally:
        for handle in handles:
            handle.remove()
    assert rows and max(rows) <= 6
    assert all(inference)


def test_model_untouched(untouched: type) -> None:
    model = small_cnn().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    x = torch.randn(2, 3, 12, 12)
    snap = untouched.take(model)
    explanation = cnnlens.explain(model, x, "occlusion", window=4, progress=False)
    snap.assert_same(model)
    assert explanation.attribution.shape == (2, 1, 12, 12)
    assert not explanation.attribution.is_inference()
    assert explanation.heatmap().shape == (2, 12, 12)


def test_default_window_is_a_seventh_of_the_side() -> None:
    x = torch.randn(1, 1, 14, 14, dtype=torch.float64)
    model = RegionSum(0, 14, 0, 14)
    default = cnnlens.explain(model, x, "occlusion", target=0).attribution
    explicit = cnnlens.explain(model, x, "occlusion", target=0, window=2, stride=1).attribution
    torch.testing.assert_close(default, explicit)


@pytest.mark.parametrize(
    "options",
    [
        {"window": 0},
        {"window": 13},
        {"window": (2, 13)},
        {"window": "big"},
        {"window": (2,)},
        {"window": 2.5},
        {"window": True},
        {"stride": 0},
        {"stride": (1, -1)},
        {"batch_size": 0},
        {"score": "softmax"},
        {"baseline": "zeros"},
        {"baseline": torch.zeros(3, 3, 12, 12)},
    ],
)
def test_bad_options_raise_input_error(options: dict[str, object]) -> None:
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(InputError):
        cnnlens.explain(small_cnn(), x, "occlusion", **options)


def test_probability_needs_class_outputs() -> None:
    class Map(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x

    with pytest.raises(InputError, match="probability"):
        cnnlens.explain(
            Map(),
            torch.randn(1, 1, 4, 4),
            "occlusion",
            target=lambda o: o.sum((1, 2, 3)),
            window=2,
            score="probability",
        )
