"""Faithfulness metrics on constructed cases where the answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.evaluate import deletion_insertion, pointing_game, randomization_test
from cnnlens.evaluate._randomization import spearman, ssim


class RegionScore(nn.Module):
    """Logit 0 = 10 x mean of channel 0 inside rows 0-3, cols 0-3; logit 1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, :4, :4].mean(dim=(1, 2)) * 10
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_perfect_map_beats_reversed_map() -> None:
    x = torch.ones(1, 3, 8, 8)
    perfect = torch.zeros(1, 8, 8)
    perfect[:, :4, :4] = 1.0
    reversed_map = 1.0 - perfect
    model = RegionScore()
    good = deletion_insertion(model, x, perfect, steps=16, target=0, score="logit")
    bad = deletion_insertion(model, x, reversed_map, steps=16, target=0, score="logit")
    assert float(good.deletion_auc) < float(bad.deletion_auc)
    assert float(good.insertion_auc) > float(bad.insertion_auc)
    # Deletion of the 16 region pixels first: the score falls linearly to 0 over the first
    # quarter of the curve, then stays 0: area = 10 * 0.25 / 2.
    assert float(good.deletion_auc) == pytest.approx(10 * 0.25 / 2, abs=1e-5)
    # The reversed order deletes the 48 other pixels first: 10 for 3/4, then falls.
    assert float(bad.deletion_auc) == pytest.approx(10 * 0.75 + 10 * 0.25 / 2, abs=1e-5)
    # Curves start at the full score and end at the baseline's.
    assert float(good.deletion_curve[0, 0]) == pytest.approx(10.0)
    assert float(good.deletion_curve[0, -1]) == pytest.approx(0.0)
    assert float(good.insertion_curve[0, -1]) == pytest.approx(10.0)
    deletion, insertion = good  # unpacks as the two AUCs
    assert torch.equal(deletion, good.deletion_auc)
    assert torch.equal(insertion, good.insertion_auc)


def test_batch_equals_items_and_probability_score() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ).eval()
    x = torch.randn(3, 3, 12, 12)
    maps = torch.rand(3, 12, 12)
    together = deletion_insertion(model, x, maps, steps=6, target=[0, 2, 4], batch_size=5)
    for i, t in enumerate([0, 2, 4]):
        alone = deletion_insertion(model, x[i : i + 1], maps[i : i + 1], steps=6, target=t)
        torch.testing.assert_close(together.deletion_curve[i], alone.deletion_curve[0])
        torch.testing.assert_close(together.insertion_curve[i], alone.insertion_curve[0])
    assert bool((together.deletion_curve <= 1).all())
    assert bool((together.deletion_curve >= 0).all())
    with pytest.raises(cnnlens.InputError, match="entries"):
        deletion_insertion(model, x, maps, target=[0, 1])
    with pytest.raises(cnnlens.InputError, match="maps for"):
        deletion_insertion(model, x, maps[:2])


def test_pointing_game_boxes_masks_and_tolerance() -> None:
    maps = torch.zeros(2, 20, 20)
    maps[0, 5, 5] = 1.0
    maps[1, 15, 15] = 1.0
    box = (0, 0, 10, 10)
    assert pointing_game(maps, box, tolerance=0).tolist() == [True, False]
    assert pointing_game(maps, box, tolerance=6).tolist() == [True, True]
    assert pointing_game(maps, [(0, 0, 10, 10), (14, 14, 16, 16)], tolerance=0).tolist() == [
        True,
        True,
    ]
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[15, 15] = True
    assert pointing_game(maps, mask, tolerance=0).tolist() == [False, True]
    with pytest.raises(cnnlens.InputError):
        pointing_game(maps, [(0, 0, 1, 1)] * 3)


def test_similarity_measures() -> None:
    a = torch.rand(16, 16)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(1.0)  # absolute values
    assert spearman(a, 1 - a) < 0
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, torch.rand(16, 16)) < 0.5


def test_randomization_decorrelates_gradients_and_restores_the_model(untouched: type) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    snap = untouched.take(model, x)
    result = randomization_test(model, x, "saliency", stages=3)
    snap.assert_same(model, x)
    assert result.spearman.shape == (3, 2)
    assert result.ssim.shape == (3, 2)
    assert result.maps.shape == (4, 2, 16, 16)
    assert result.steps[0][0] == "6"  # the top layer first
    assert result.steps[-1][-1] == "0"
    assert float(result.spearman[-1].mean()) < 0.9
