"""Faithfulness and sanity metrics on constructed cases where the answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import Box, DetectionTarget
from cnnlens.evaluate import (
    METRICS,
    data_randomization_test,
    deletion_insertion,
    infidelity,
    max_sensitivity,
    pointing_game,
    randomization_test,
    road,
    trust_table,
)
from cnnlens.evaluate._road import linear_imputation
from cnnlens.evaluate._similarity import hog_similarity, spearman, ssim


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
    # The result says what was done.
    assert (good.method, good.ranking, good.baseline, good.score) == ("map", "signed", 0.0, "logit")
    assert good.fractions.tolist() == pytest.approx([i / 16 for i in range(17)])


def test_batch_equals_items_and_probability_score() -> None:
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
    with pytest.raises(cnnlens.InputError, match="rank"):
        deletion_insertion(model, x, maps, rank="loud")  # type: ignore[arg-type]


# Regions of the mean(A) - mean(B) model: A is 4 x 8 = 32 pixels, B 2 x 4 = 8 pixels, so each
# B pixel carries 4 times the weight of an A pixel (and the opposite sign).
A = (slice(0, 4), slice(0, 8))
B = (slice(6, 8), slice(0, 4))


class MeanDifference(nn.Module):
    """Logit 0 = mean(A) - mean(B) of channel 0; logit 1 = 0. Linear and zero at zero, so
    input x gradient is its exact signed decomposition."""

    def forward(self, x: Tensor) -> Tensor:
        s = x[:, 0, A[0], A[1]].mean(dim=(1, 2)) - x[:, 0, B[0], B[1]].mean(dim=(1, 2))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def hand_deletion_auc(order: np.ndarray, steps: int, pixels: int) -> float:
    """Deletion AUC of the mean-difference model on an all-ones channel 0 deleted to 0 in
    ``order`` (flat pixel indices, most important first), integrated with numpy."""
    in_a = np.zeros((8, 8), bool)
    in_a[A] = True
    in_b = np.zeros((8, 8), bool)
    in_b[B] = True
    in_a, in_b = in_a.reshape(-1), in_b.reshape(-1)
    xs, ys = [], []
    for s in range(steps + 1):
        k = round(s * pixels / steps)
        gone = order[:k]
        ys.append((32 - in_a[gone].sum()) / 32 - (8 - in_b[gone].sum()) / 8)
        xs.append(k / pixels)
    return float(np.trapezoid(ys, xs))


def test_signed_ranking_deletes_positive_evidence_first() -> None:
    model = MeanDifference()
    x = torch.rand(1, 3, 8, 8)
    x[:, 0] = 1.0
    e = cnnlens.explain(model, x, "input_x_gradient", target=0)
    torch.testing.assert_close(e.attribution.sum(), model(x)[0, 0])  # exact decomposition
    signed = deletion_insertion(model, x, e, steps=16, score="logit")
    absolute = deletion_insertion(model, x, e, steps=16, score="logit", rank="abs")
    assert (signed.ranking, absolute.ranking, signed.method) == (
        "signed",
        "abs",
        "input_x_gradient",
    )
    assert float(signed.deletion_auc) < float(absolute.deletion_auc)
    # Independent computation: order the pixels by hand from the known weights.
    weights = np.zeros((8, 8))
    weights[A] = 1 / 32
    weights[B] = -1 / 8
    flat = weights.reshape(-1)
    by_signed = np.argsort(-flat, kind="stable")
    by_abs = np.argsort(-np.abs(flat), kind="stable")
    assert float(signed.deletion_auc) == pytest.approx(
        hand_deletion_auc(by_signed, 16, 64), abs=1e-6
    )
    assert float(absolute.deletion_auc) == pytest.approx(
        hand_deletion_auc(by_abs, 16, 64), abs=1e-6
    )
    # Gradient-type maps rank by magnitude unless told otherwise.
    saliency = cnnlens.explain(model, x, "saliency", target=0)
    assert deletion_insertion(model, x, saliency, steps=2).ranking == "abs"
    assert deletion_insertion(model, x, saliency, steps=2, rank="signed").ranking == "signed"


def test_pointing_game_uses_the_euclidean_distance() -> None:
    maps = torch.zeros(3, 40, 40)
    maps[0, 30, 30] = 1.0  # 10 px away on both axes: 14.1 px
    maps[1, 20, 35] = 1.0  # 15 px away on one axis
    maps[2, 20, 20] = 1.0  # on the object
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[20, 20] = True
    at_10 = pointing_game(maps, mask, tolerance=10)
    assert at_10.hits.tolist() == [False, False, True]  # a max-pooled square would hit item 0
    assert at_10.distances.tolist() == pytest.approx([200**0.5, 15.0, 0.0])
    assert at_10.points.tolist() == [[30, 30], [20, 35], [20, 20]]
    assert pointing_game(maps, mask, tolerance=15).hits.tolist() == [True, True, True]
    assert pointing_game(maps, mask, tolerance=14).hits.tolist() == [False, False, True]
    assert pointing_game(maps, mask, tolerance=15).hit_rate == pytest.approx(1.0)


def torchray_hit(mask: Tensor, point: tuple[int, int], tolerance: int) -> bool:
    """TorchRay's PointingGame.evaluate (benchmark/pointing_game.py), restated: the
    acceptance disc around the point (u = column, v = row) meets the mask."""
    v, u = torch.meshgrid(
        (torch.arange(mask.shape[0]) - point[1]) ** 2,
        (torch.arange(mask.shape[1]) - point[0]) ** 2,
        indexing="ij",
    )
    return bool((mask & ((v + u) < tolerance**2)).any())


def test_pointing_game_equals_torchray_off_the_boundary() -> None:
    """Same hits as TorchRay on random masks and points; the two differ only for a point
    exactly ``tolerance`` away, which TorchRay's strict ``<`` rejects and ours accepts."""
    g = torch.Generator().manual_seed(0)
    compared = 0
    for _ in range(60):
        mask = torch.zeros(32, 32, dtype=torch.bool)
        y, x = torch.randint(0, 28, (2,), generator=g).tolist()
        h, w = torch.randint(1, 5, (2,), generator=g).tolist()
        mask[y : y + h, x : x + w] = True
        row, col = torch.randint(0, 32, (2,), generator=g).tolist()
        heat = torch.zeros(1, 32, 32)
        heat[0, row, col] = 1.0
        for tolerance in (0, 3, 7, 15):
            ours = pointing_game(heat, mask, tolerance=tolerance)
            if float(ours.distances[0]) == tolerance:
                assert bool(ours.hits[0]) and not torchray_hit(mask, (col, row), tolerance)
                continue
            assert bool(ours.hits[0]) == torchray_hit(mask, (col, row), max(tolerance, 1e-9))
            compared += 1
    assert compared > 200


def test_one_box_convention_for_pointing_game_and_detection_target() -> None:
    # A wide, short box: columns 0-9, rows 0-4. Read the other way round (top, left,
    # bottom, right), it would be tall and narrow and the point (row 2, column 8) outside.
    box = Box(x1=0, y1=0, x2=10, y2=5)
    heat = torch.zeros(1, 20, 20)
    heat[0, 2, 8] = 1.0
    for region in (box, (0, 0, 10, 5), [box], torch.tensor([[0.0, 0.0, 10.0, 5.0]])):
        assert pointing_game(heat, region, tolerance=0).hits.tolist() == [True]
    heat_t = heat.transpose(1, 2).contiguous()  # the point (row 8, column 2)
    assert pointing_game(heat_t, box, tolerance=0).hits.tolist() == [False]
    assert torch.equal(box.mask(20, 20)[2], torch.arange(20) < 10)
    # Receptive-field boxes are (top, left, bottom, right): Box.from_tlbr names them.
    assert Box.from_tlbr(0, 0, 5, 10) == box
    assert box.tlbr == (0, 0, 5, 10)
    # DetectionTarget reads the same four numbers the same way.
    detections = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 5.0, 10.0], [0.0, 0.0, 10.0, 5.0]]),
            "labels": torch.tensor([1, 1]),
            "scores": torch.tensor([0.3, 0.8]),
        }
    ]
    for spec in (box, (0, 0, 10, 5)):
        assert DetectionTarget(spec).best_box(detections) == [1]
    assert DetectionTarget(Box.from_tlbr(0, 0, 10, 5)).best_box(detections) == [0]
    with pytest.raises(cnnlens.InputError, match="x2 >= x1"):
        Box(5, 0, 1, 1)
    with pytest.raises(cnnlens.InputError, match="got 3 boxes"):
        pointing_game(heat, [(0, 0, 1, 1)] * 3)


def test_infidelity_of_an_exact_decomposition_is_zero() -> None:
    """For a linear model without bias, attributionᵀI = f(x) - f(x - I) exactly when the
    attribution is the gradient, whatever the perturbation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3, bias=False)).eval()
    x = torch.randn(2, 3, 4, 4)
    gradient = cnnlens.explain(model, x, "saliency", target=1)
    exact = infidelity(model, x, gradient, normalize=False, samples=8)
    assert float(exact.values.max()) < 1e-10
    torch.testing.assert_close(exact.attribution_dot, exact.score_drops)
    noisy = infidelity(model, x, gradient.attribution + 0.3 * torch.randn_like(x), samples=8)
    assert float(noisy.values.min()) > 1e-4
    state = torch.random.get_rng_state()
    infidelity(model, x, gradient, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


def test_max_sensitivity_is_zero_for_a_constant_map_and_seeded() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()
    x = torch.randn(2, 3, 4, 4)
    # A linear model's gradient does not depend on the input.
    assert float(max_sensitivity(model, x, "saliency").values.max()) < 1e-6
    relu = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    a = max_sensitivity(relu, x, "input_x_gradient", radius=0.5, seed=1)
    b = max_sensitivity(relu, x, "input_x_gradient", radius=0.5, seed=1)
    assert torch.equal(a.values, b.values) and a.sensitivities.shape == (2, 10)
    assert float(a.values.min()) > 0


def test_linear_imputation_solves_the_neighbour_mean_system() -> None:
    image = torch.rand(2, 9, 7, dtype=torch.float64)
    removed = torch.rand(9, 7) < 0.5
    filled = linear_imputation(image, removed)
    assert torch.equal(filled[:, ~removed], image[:, ~removed])
    # Each removed pixel equals the weighted mean of its existing neighbours.
    for y, x in removed.nonzero().tolist():
        total, weight = torch.zeros(2, dtype=torch.float64), 0.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) != (0, 0) and 0 <= y + dy < 9 and 0 <= x + dx < 7:
                    w = 1 / 12 if dy and dx else 1 / 6
                    total += w * filled[:, y + dy, x + dx]
                    weight += w
        torch.testing.assert_close(filled[:, y, x], total / weight)


def test_road_ranks_a_faithful_map_above_its_reverse() -> None:
    model = RegionScore()
    x = torch.rand(1, 3, 8, 8) + 1.0
    good = torch.zeros(1, 8, 8)
    good[:, :4, :4] = 1.0 + torch.rand(4, 4)
    faithful = road(model, x, good, score="logit", fractions=(0.25, 0.5))
    reverse = road(model, x, -good, score="logit", fractions=(0.25, 0.5))
    assert float(faithful.values) > float(reverse.values)
    assert faithful.morf.shape == (1, 2) and faithful.ranking == "signed"
    assert float(faithful.original) == pytest.approx(float(model(x)[0, 0]))


def test_similarity_measures() -> None:
    a = torch.rand(28, 28)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(1.0)  # absolute values
    assert spearman(a, -a, absolute=False) == pytest.approx(-1.0)
    assert spearman(a, 1 - a) < 0
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, torch.rand(28, 28)) < 0.5
    assert hog_similarity(a, a) == pytest.approx(1.0)
    assert hog_similarity(a, torch.rand(28, 28)) < 0.5


def small_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def test_randomization_decorrelates_gradients_and_restores_the_model(untouched: type) -> None:
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    snap = untouched.take(model, x)
    result = randomization_test(model, x, "saliency", stages=3)
    snap.assert_same(model, x)
    for name in ("spearman_abs", "spearman_signed", "ssim", "hog"):
        assert result.similarity(name).shape == (3, 2)
    assert result.maps.shape == (4, 2, 16, 16) and result.signed_maps.shape == (4, 2, 16, 16)
    assert result.steps == [["6"], ["6", "2"], ["6", "2", "0"]]  # the top layer alone first
    assert float(result.spearman[-1].mean()) < 0.9
    assert result.mode == "cascading"


def test_independent_randomization_touches_one_group_at_a_time(untouched: type) -> None:
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    snap = untouched.take(model, x)
    cascading = randomization_test(model, x, "saliency", stages=3)
    independent = randomization_test(model, x, "saliency", stages=3, mode="independent")
    snap.assert_same(model, x)
    assert independent.steps == [["6"], ["2"], ["0"]]
    # Same seed, same first group: the first step is the same in both modes.
    torch.testing.assert_close(independent.maps[1], cascading.maps[1])
    # Later steps differ: the top layer has its trained weights back.
    assert not torch.allclose(independent.maps[2], cascading.maps[2])
    # Randomizing only the first convolution, with the rest trained, still moves the map.
    with pytest.raises(cnnlens.InputError, match="mode"):
        randomization_test(model, x, "saliency", mode="sideways")  # type: ignore[arg-type]


def test_data_randomization_compares_two_models() -> None:
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    same = data_randomization_test(model, model, x, "gradcam")
    assert same.spearman.tolist() == pytest.approx([1.0, 1.0])
    assert same.hog.tolist() == pytest.approx([1.0, 1.0])
    other = small_model()
    with warnings.catch_warnings():
        # The second random model's Grad-CAM may be all zero (said with a warning): it
        # still differs from the first one's.
        warnings.simplefilter("ignore", cnnlens.ZeroAttributionWarning)
        differ = data_randomization_test(model, other, x, "gradcam")
    assert float(differ.spearman.mean()) < 0.9
    assert differ.maps.shape == (2, 2, 16, 16)


def test_trust_table_gathers_every_metric_per_item() -> None:
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    # SmoothGrad's own ``samples`` and ``seed`` must not collide with the metrics'.
    smooth = {"samples": 2, "seed": 1}
    explanations = [cnnlens.explain(model, x, m) for m in ("saliency", "gradcam")]
    explanations.append(cnnlens.explain(model, x, "smoothgrad", **smooth))
    table = trust_table(
        model,
        x,
        explanations,
        metrics=METRICS,
        steps=4,
        samples=2,
        fractions=(0.5,),
        options={"smoothgrad": smooth},
    )
    assert [r.method for r in table.rows] == ["saliency", "gradcam", "smoothgrad"]
    assert table.better["deletion"] == "lower" and table.better["road"] == "higher"
    for row in table.rows:
        assert set(row.values) == set(METRICS)
        assert all(v.shape == (2,) for v in row.values.values())
    # The same numbers as the functions on their own.
    gradcam = table.row("gradcam")
    alone = deletion_insertion(model, x, explanations[1], steps=4)
    torch.testing.assert_close(gradcam.values["deletion"], alone.deletion_auc)
    assert gradcam.curves is not None and gradcam.ranking == "signed"
    top = randomization_test(model, x, "gradcam", stages=1, layer=explanations[1].layer)
    torch.testing.assert_close(gradcam.values["randomization"], top.spearman[0])
    records = table.records(1)
    assert [r["method"] for r in records] == ["saliency", "gradcam", "smoothgrad"]
    assert records[0]["item"] == 1 and records[0]["ranking"] == "abs"
    assert len(table.records()) == 6
    with pytest.raises(cnnlens.InputError, match="unknown metrics"):
        trust_table(model, x, explanations, metrics=["speed"])
    with pytest.raises(cnnlens.InputError, match="no row"):
        table.row("lrp")
