"""Integrated gradients: the quadrature rules, the completeness gap reported with every
result (against its definition and against captum's convergence delta), the warning when the
gap exceeds 1 %, and agreement with captum's ``IntegratedGradients``."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import CompletenessWarning, InputError
from cnnlens.attribution.gradient import (
    COMPLETENESS_TOLERANCE,
    DEFAULT_STEPS,
    MAX_ADAPTIVE_STEPS,
    PATH_RULES,
    completeness_gap,
    path_points,
)

from .peers import peer

D = torch.float64


def kinked_cnn(classes: int = 5) -> nn.Module:
    """A small ReLU CNN with biases and BatchNorm statistics: its path integrand is piecewise
    smooth with many kinks, so few steps leave a visible completeness gap."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).to(D)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 1.5)
        for layer in (net[0], net[3], net[7]):
            layer.bias.normal_(0.0, 0.3)
    return net.eval()


def _x(batch: int = 2, size: int = 8) -> Tensor:
    return torch.randn(batch, 3, size, size, dtype=D)


def _scores(net: nn.Module, x: Tensor, classes: list[int]) -> Tensor:
    with torch.no_grad():
        out = net(x)
    return out[torch.arange(x.shape[0]), classes]


# ------------------------------------------------------------------ quadrature rules -----


@pytest.mark.parametrize("rule", PATH_RULES)
def test_path_points_weights_sum_to_one_and_lie_on_the_path(rule: str) -> None:
    alphas, weights = path_points(9, rule)
    assert alphas.dtype == weights.dtype == D and alphas.shape == weights.shape == (9,)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-14)
    assert bool((alphas >= 0).all() and (alphas <= 1).all())


def test_gauss_legendre_is_exact_for_polynomials_below_twice_its_steps() -> None:
    alphas, weights = path_points(5, "gausslegendre")
    for degree in range(10):  # ∫_0^1 α^k dα = 1 / (k + 1)
        assert float((weights * alphas**degree).sum()) == pytest.approx(1 / (degree + 1), rel=1e-13)
    assert float((weights * alphas**10).sum()) != pytest.approx(1 / 11, rel=1e-9)


@pytest.mark.parametrize("rule", PATH_RULES)
def test_path_points_are_captums(rule: str) -> None:
    methods = peer("captum.attr._utils.approximation_methods")
    step_sizes, alphas = methods.approximation_parameters(rule)
    got_alphas, got_weights = path_points(7, rule)
    if rule == "riemann_trapezoid":
        # captum's trapezoid weighs its 7 points 1/7 (halved at the ends), summing to 6/7 at
        # spacing 1/6; the trapezoid rule weighs them 1/6
        got_weights = got_weights * 6 / 7
    # captum builds its Riemann positions and weights in float32
    tolerance = 1e-14 if rule == "gausslegendre" else 1e-7
    torch.testing.assert_close(got_alphas, torch.tensor(alphas(7), dtype=D), rtol=0, atol=tolerance)
    torch.testing.assert_close(
        got_weights, torch.tensor(step_sizes(7), dtype=D), rtol=0, atol=tolerance
    )


def test_bad_rule_and_steps_raise() -> None:
    net, x = kinked_cnn(), _x()
    with pytest.raises(InputError, match="rule must be one of"):
        cnnlens.explain(net, x, "integrated_gradients", rule="simpson")
    with pytest.raises(InputError, match="steps >= 2"):
        cnnlens.explain(net, x, "integrated_gradients", rule="riemann_trapezoid", steps=1)
    with pytest.raises(InputError, match="steps"):
        cnnlens.explain(net, x, "integrated_gradients", steps=0)


# ------------------------------------------------------------------ completeness gap ------


def test_delta_is_the_completeness_gap_by_its_definition() -> None:
    net, x = kinked_cnn(), _x(3)
    baseline = torch.full((3, 1, 1), 0.2, dtype=D)
    classes = [1, 4, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompletenessWarning)
        e = cnnlens.explain(
            net, x, "integrated_gradients", target=classes, steps=5, baseline=baseline
        )
    score = _scores(net, x, classes)
    base_score = _scores(net, baseline.expand_as(x), classes)
    delta = e.attribution.flatten(1).sum(1) - (score - base_score)
    torch.testing.assert_close(e.extras["delta"], delta, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(e.extras["score"], score, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(e.extras["baseline_score"], base_score, rtol=1e-13, atol=1e-14)
    ulps = 64 * torch.finfo(D).eps * torch.maximum(score.abs(), base_score.abs())
    relative = (delta.abs() - ulps) / (score - base_score).abs()
    torch.testing.assert_close(e.extras["relative_delta"], relative, rtol=1e-12, atol=0)
    assert float(relative.max()) > 1e-4  # five steps are visibly short of the integral


def test_relative_gap_of_an_unchanged_score() -> None:
    zero = torch.zeros(2, dtype=D)
    score = torch.tensor([2.0, 0.0], dtype=D)
    # no change along the path and no gap: 0, not NaN
    assert completeness_gap(zero, score, score).tolist() == [0.0, 0.0]
    # a gap where nothing changed is reported as huge, not divided by zero
    assert bool((completeness_gap(torch.full((2,), 1e-3, dtype=D), score, score) > 1e6).all())
    # a gap within the scores' own rounding is no gap
    change = torch.tensor([0.4 + 1e-15, 0.5], dtype=D)
    gaps = completeness_gap(torch.tensor([2e-16, 0.005], dtype=D), change, change - 1e-15)
    assert gaps[0] == 0 and 4e12 < float(gaps[1]) < 6e12


def test_few_steps_warn_and_suggest_more() -> None:
    net, x = kinked_cnn(), _x()
    with pytest.warns(
        CompletenessWarning, match=r"misses score\(x\) − score\(baseline\) by .*steps=8"
    ):
        e = cnnlens.explain(net, x, "integrated_gradients", target=[0, 1], steps=2)
    assert float(e.extras["relative_delta"].max()) > COMPLETENESS_TOLERANCE


def test_enough_steps_close_the_gap_without_a_warning() -> None:
    net, x = kinked_cnn(), _x()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompletenessWarning)
        e = cnnlens.explain(net, x, "integrated_gradients", target=[0, 1], steps=512)
    assert float(e.extras["relative_delta"].max()) < 1e-3


def test_gap_shrinks_with_steps() -> None:
    net, x = kinked_cnn(), _x()
    gaps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompletenessWarning)
        for steps in (4, 32, 256):
            e = cnnlens.explain(net, x, "integrated_gradients", target=[0, 1], steps=steps)
            gaps.append(float(e.extras["relative_delta"].max()))
    assert gaps[0] > gaps[1] > gaps[2]


def test_input_equal_to_baseline_is_complete_and_says_the_result_is_zero() -> None:
    net = kinked_cnn()
    x = torch.zeros(1, 3, 8, 8, dtype=D)
    with pytest.warns(cnnlens.ZeroAttributionWarning, match="integrated_gradients"):
        e = cnnlens.explain(net, x, "integrated_gradients", target=0)
    assert float(e.extras["delta"].abs().max()) == 0.0
    assert float(e.extras["relative_delta"].max()) == 0.0


def test_callable_target_reports_its_gap() -> None:
    net, x = kinked_cnn(), _x()

    def margin(out: Tensor) -> Tensor:
        return out[:, 2] - out[:, 3]

    e = cnnlens.explain(net, x, "integrated_gradients", target=margin, steps=256)
    with torch.no_grad():
        change = margin(net(x)) - margin(net(torch.zeros_like(x)))
    torch.testing.assert_close(
        e.extras["delta"], e.attribution.flatten(1).sum(1) - change, rtol=1e-12, atol=1e-14
    )


def test_default_starts_at_64_gauss_legendre_points() -> None:
    net, x = kinked_cnn(), _x()
    default = cnnlens.explain(net, x, "integrated_gradients", target=[0, 1])
    assert DEFAULT_STEPS == 64 and default.extras["steps"].tolist() == [64, 64]
    explicit = cnnlens.explain(
        net, x, "integrated_gradients", target=[0, 1], steps=64, rule="gausslegendre"
    )
    torch.testing.assert_close(default.attribution, explicit.attribution, rtol=0, atol=0)


class Ramp(nn.Module):
    """f(x) = relu(10 · mean(x) − c): along the path from 0 to a constant image the gradient
    jumps at α = c / (10 · value), which no quadrature resolves exactly."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(10 * x.mean(dim=(1, 2, 3)) - self.c).unsqueeze(1)


def test_default_doubles_the_steps_of_items_still_incomplete() -> None:
    # Put item 0's kink just past one of the 64 Gauss–Legendre nodes (a gap of 2.3 %);
    # item 1's kink sits at a third of that, where 64 points do (0.7 %).
    alphas, _ = path_points(64)
    kink = float(alphas[30]) + 1e-9
    model = Ramp(10 * kink)
    x = torch.stack([torch.ones(3, 4, 4, dtype=D), torch.full((3, 4, 4), 3.0, dtype=D)])
    # the advice names both spellings: the API's steps= and the CLI's --steps
    with pytest.warns(
        CompletenessWarning, match=r"steps=256 in the API, --steps 256 with cnnlens explain"
    ):
        cnnlens.explain(model, x[:1], "integrated_gradients", target=0, steps=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompletenessWarning)
        e = cnnlens.explain(model, x, "integrated_gradients", target=0)
    steps = e.extras["steps"].tolist()
    assert steps == [128, 64]
    assert float(e.extras["relative_delta"].max()) <= COMPLETENESS_TOLERANCE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompletenessWarning)
        for item, count in enumerate(steps):
            # each item is what a fixed run with its own step count gives, batch or not
            alone = cnnlens.explain(model, x[item : item + 1], "integrated_gradients", target=0)
            fixed = cnnlens.explain(
                model, x[item : item + 1], "integrated_gradients", target=0, steps=count
            )
            torch.testing.assert_close(e.attribution[item], alone.attribution[0])
            torch.testing.assert_close(e.attribution[item], fixed.attribution[0])


def test_adaptation_stops_at_its_cap_and_warns() -> None:
    # A kink beyond the last node of 1024 points (1 − 1.4e-6): every rule up to the cap
    # sums to 0 where the score changes by 1e-7.
    model = Ramp(10 * (1 - 1e-8))
    x = torch.ones(1, 3, 4, 4, dtype=D)
    assert float(path_points(MAX_ADAPTIVE_STEPS)[0].max()) < 1 - 1e-8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = cnnlens.explain(model, x, "integrated_gradients", target=0)
    assert e.extras["steps"].tolist() == [MAX_ADAPTIVE_STEPS]
    messages = [str(w.message) for w in caught if w.category is CompletenessWarning]
    assert len(messages) == 1 and f"with {MAX_ADAPTIVE_STEPS} gausslegendre" in messages[0]


def test_max_steps_sets_the_cap() -> None:
    # The kink of the doubling test above, which 128 points resolve: a cap of 64 stops
    # there and warns; a cap below the first count starts at the cap.
    alphas, _ = path_points(64)
    model = Ramp(10 * (float(alphas[30]) + 1e-9))
    x = torch.ones(1, 3, 4, 4, dtype=D)
    with pytest.warns(CompletenessWarning, match="with 64 gausslegendre"):
        capped = cnnlens.explain(model, x, "integrated_gradients", target=0, max_steps=64)
    assert capped.extras["steps"].tolist() == [64]
    with pytest.warns(CompletenessWarning, match="with 32 gausslegendre"):
        small = cnnlens.explain(model, x, "integrated_gradients", target=0, max_steps=32)
    assert small.extras["steps"].tolist() == [32]
    free = cnnlens.explain(model, x, "integrated_gradients", target=0)
    assert free.extras["steps"].tolist() == [128]
    with pytest.raises(cnnlens.InputError, match="max_steps"):
        cnnlens.explain(model, x, "integrated_gradients", target=0, max_steps=0)


# ------------------------------------------------------------------ against captum -------


@pytest.mark.parametrize(
    ("rule", "steps"),
    [("gausslegendre", 16), ("riemann_middle", 12), ("riemann_trapezoid", 9), ("riemann_right", 5)],
)
def test_agrees_with_captum(rule: str, steps: int) -> None:
    captum_attr = peer("captum.attr")
    net, x = kinked_cnn(), _x(3)
    baseline = torch.full_like(x, -0.1)
    classes = [2, 0, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompletenessWarning)
        ours = cnnlens.explain(
            net, x, "integrated_gradients", target=classes, steps=steps, rule=rule, baseline=-0.1
        )
    theirs, delta = captum_attr.IntegratedGradients(net).attribute(
        x,
        baselines=baseline,
        target=classes,
        n_steps=steps,
        method=rule,
        return_convergence_delta=True,
    )
    if rule == "riemann_trapezoid":  # captum's weights sum to (steps - 1) / steps
        theirs = theirs * steps / (steps - 1)
        with torch.no_grad():
            change = _scores(net, x, classes) - _scores(net, baseline, classes)
        delta = theirs.flatten(1).sum(1) - change
    # captum scales the path in float32 (relative differences ~1e-8)
    torch.testing.assert_close(ours.attribution, theirs, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(ours.extras["delta"], delta, rtol=1e-6, atol=1e-8)


def test_the_adaptive_default_suggests_a_larger_cap() -> None:
    # A kink just past the second-to-last of 1024 points: the advice is max_steps (with the
    # adaptive default only the items still off pay for the larger count)
    alphas, _ = path_points(1024)
    x = torch.ones(1, 3, 4, 4, dtype=D)
    with pytest.warns(
        CompletenessWarning, match=r"with 1024 gausslegendre steps; .*max_steps=4096 in the API"
    ):
        cnnlens.explain(Ramp(10 * (float(alphas[-2]) + 1e-9)), x, "integrated_gradients", target=0)
