"""Adaptive drill-down (Krypton §4.2): the refined windows are exact, the rest are
interpolated from the coarse pass and flagged, and refining everything is exact occlusion."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError
from cnnlens.attribution.occlusion import window_starts

from .test_occlusion import small_cnn

# coarse starts 0, 4, 8, 12, 15 are fine starts too; 5 lands between fine starts
WINDOW, STRIDE, COARSE, SIZE = 5, 2, 4, 20


def _model() -> nn.Module:
    torch.manual_seed(0)
    return small_cnn().double().eval()


def _inputs(items: int) -> Tensor:
    return torch.randn(
        items, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )


def _window_drops_by_hand(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """Every stride window's drop, one forward per window."""
    starts = window_starts(SIZE, WINDOW, STRIDE)
    drops = torch.empty(len(starts), len(starts), dtype=torch.float64)
    with torch.no_grad():
        clean = model(x)[0, target]
        for i, top in enumerate(starts):
            for j, left in enumerate(starts):
                occluded = x.clone()
                occluded[:, :, top : top + WINDOW, left : left + WINDOW] = 0.0
                drops[i, j] = clean - model(occluded)[0, target]
    return drops


@pytest.mark.parametrize("incremental", [False, True])
def test_refining_everything_is_exact_occlusion(incremental: bool) -> None:
    model, x = _model(), _inputs(2)
    options = {"window": WINDOW, "stride": STRIDE, "incremental": incremental}
    exact = cnnlens.explain(model, x, "occlusion", **options)
    full = cnnlens.explain(model, x, "occlusion", drill_down=1.0, coarse_stride=5, **options)
    torch.testing.assert_close(full.attribution, exact.attribution, rtol=0, atol=1e-12)
    assert not full.extras["interpolated"].any()
    assert not full.extras["window_interpolated"].any()
    assert exact.extras == {}  # drill-down off reports nothing new


@pytest.mark.parametrize("incremental", [False, True])
def test_refined_windows_are_exact_and_the_rest_interpolated(incremental: bool) -> None:
    model, x = _model(), _inputs(1)
    e = cnnlens.explain(
        model,
        x,
        "occlusion",
        window=WINDOW,
        stride=STRIDE,
        incremental=incremental,
        drill_down=0.3,
        coarse_stride=COARSE,
    )
    assert e.targets is not None
    reference = _window_drops_by_hand(model, x, int(e.targets[0]))
    drops, estimated = e.extras["window_drops"][0], e.extras["window_interpolated"][0]
    assert 0 < int(estimated.sum()) < estimated.numel()
    torch.testing.assert_close(drops[~estimated], reference[~estimated], rtol=0, atol=1e-12)
    # interpolated drops are convex combinations of the coarse (exact) drops
    coarse = [
        window_starts(SIZE, WINDOW, STRIDE).index(s) for s in window_starts(SIZE, WINDOW, COARSE)
    ]
    coarse_drops = reference[coarse][:, coarse]
    assert bool((drops[estimated] >= coarse_drops.min() - 1e-12).all())
    assert bool((drops[estimated] <= coarse_drops.max() + 1e-12).all())
    assert not torch.allclose(drops[estimated], reference[estimated])  # not exact by accident
    # the coarse window of largest drop was refined: every fine window nearest to it
    # (by start offset per axis, ties to the earlier coarse window) is exact
    fine_starts, coarse_starts = (
        window_starts(SIZE, WINDOW, STRIDE),
        window_starts(SIZE, WINDOW, COARSE),
    )
    nearest = [
        min(range(len(coarse_starts)), key=lambda k, f=f: abs(f - coarse_starts[k]))
        for f in fine_starts
    ]
    top = divmod(int(coarse_drops.argmax()), len(coarse))
    owned = (
        [i for i, k in enumerate(nearest) if k == top[0]],
        [j for j, k in enumerate(nearest) if k == top[1]],
    )
    assert len(owned[0]) * len(owned[1]) >= 2  # more than the coarse window itself
    assert not estimated[owned[0]][:, owned[1]].any()
    # the map is the mean of the window drops; the share of interpolated ones per pixel
    cover = torch.zeros(len(drops), SIZE, dtype=torch.float64)
    for i, s in enumerate(window_starts(SIZE, WINDOW, STRIDE)):
        cover[i, s : s + WINDOW] = 1.0
    summed = torch.einsum("ij,ih,jw->hw", drops, cover, cover)
    count = torch.outer(cover.sum(0), cover.sum(0))
    torch.testing.assert_close(e.attribution[0, 0], summed / count, rtol=0, atol=1e-12)
    share = torch.einsum("ij,ih,jw->hw", estimated.double(), cover, cover) / count
    torch.testing.assert_close(e.extras["interpolated"][0, 0], share, rtol=0, atol=1e-12)
    assert bool((share == 0).any()) and bool((share > 0).any())


def test_float32_model() -> None:
    model, x = small_cnn().eval(), _inputs(1).float()
    options = {"window": WINDOW, "stride": STRIDE}
    exact = cnnlens.explain(model, x, "occlusion", **options).attribution
    e = cnnlens.explain(model, x, "occlusion", drill_down=0.5, coarse_stride=5, **options)
    assert e.attribution.dtype == e.extras["window_drops"].dtype == torch.float32
    kept = e.extras["interpolated"] == 0
    assert bool(kept.any())
    torch.testing.assert_close(e.attribution[kept], exact[kept], rtol=1e-5, atol=1e-5)


def test_an_item_does_not_depend_on_the_batch() -> None:
    model, x = _model(), _inputs(3)
    options = {"window": WINDOW, "stride": STRIDE, "drill_down": 0.25, "batch_size": 7}
    batch = cnnlens.explain(model, x, "occlusion", **options)
    for i in range(3):
        alone = cnnlens.explain(model, x[i : i + 1], "occlusion", **options)
        torch.testing.assert_close(
            batch.attribution[i], alone.attribution[0], rtol=1e-10, atol=1e-12
        )
        for key in ("interpolated", "window_interpolated"):
            assert torch.equal(batch.extras[key][i], alone.extras[key][0])


@pytest.mark.parametrize(
    "options",
    [
        {"drill_down": 0.0},
        {"drill_down": 1.5},
        {"drill_down": True},
        {"drill_down": "half"},
        {"drill_down": 0.5, "coarse_stride": 1},
        {"drill_down": 0.5, "coarse_stride": (4, 1)},
        {"drill_down": 0.5, "coarse_stride": 0},
        {"coarse_stride": 4},
    ],
)
def test_bad_drill_down_options_raise_input_error(options: dict[str, object]) -> None:
    with pytest.raises(InputError):
        cnnlens.explain(_model(), _inputs(1), "occlusion", window=WINDOW, stride=STRIDE, **options)
