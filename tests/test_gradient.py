"""Saliency, SmoothGrad, input × gradient, integrated gradients, and the behaviour shared by
every gradient method: batches, targets, leaving the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError

# The generic tests run integrated gradients with few steps, which warns that the path
# integral is under-resolved; completeness and its warning are tested in
# test_integrated_gradients.py.
pytestmark = pytest.mark.filterwarnings("ignore::cnnlens.CompletenessWarning")

GRADIENT_METHODS = [
    "saliency",
    "smoothgrad",
    "deconvnet",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
]
FAST_OPTIONS: dict[str, dict[str, object]] = {
    "smoothgrad": {"samples": 5, "noise": 0.2, "seed": 1},
    "integrated_gradients": {"steps": 7},
}


def tiny_cnn(classes: int = 5) -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


class SquareSum(nn.Module):
    """f(x) = Σ x², one output: gradient 2x, a known answer for noise and path methods."""

    def forward(self, x: Tensor) -> Tensor:
        return (x * x).flatten(1).sum(dim=1, keepdim=True)


def _x(batch: int = 3, size: int = 8) -> Tensor:
    return torch.randn(batch, 3, size, size, dtype=torch.float64)


# ---------------------------------------------------------------- saliency ---------------


def test_saliency_equals_autograd_and_finite_differences() -> None:
    net, x = tiny_cnn(), _x(2)
    target = [1, 4]
    got = cnnlens.explain(net, x, "saliency", target=target)
    assert got.attribution.shape == x.shape and got.attribution.dtype == torch.float64
    assert got.targets is not None and got.targets.tolist() == target

    xr = x.clone().requires_grad_()
    out = net(xr)
    (auto,) = torch.autograd.grad(out[0, 1] + out[1, 4], xr)
    torch.testing.assert_close(got.attribution, auto, rtol=1e-12, atol=1e-14)

    eps = 1e-6
    flat = x[0].flatten()
    numeric = torch.empty_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            up, down = flat.clone(), flat.clone()
            up[i] += eps
            down[i] -= eps
            numeric[i] = (
                net(up.view(1, *x.shape[1:]))[0, 1] - net(down.view(1, *x.shape[1:]))[0, 1]
            ) / (2 * eps)
    torch.testing.assert_close(got.attribution[0].flatten(), numeric, rtol=1e-5, atol=1e-8)


def test_input_x_gradient() -> None:
    net, x = tiny_cnn(), _x()
    sal = cnnlens.explain(net, x, "saliency", target=2).attribution
    ixg = cnnlens.explain(net, x, "input_x_gradient", target=2).attribution
    torch.testing.assert_close(ixg, x * sal, rtol=0, atol=0)


def test_default_target_is_top_class() -> None:
    net, x = tiny_cnn(), _x(4)
    with torch.no_grad():
        top = net(x).argmax(dim=1)
    for method in GRADIENT_METHODS:
        got = cnnlens.explain(net, x, method, **FAST_OPTIONS.get(method, {}))  # type: ignore[arg-type]
        assert got.targets is not None and got.targets.tolist() == top.tolist(), method
        explicit = cnnlens.explain(
            net, x, method, target=top.tolist(), **FAST_OPTIONS.get(method, {})
        )  # type: ignore[arg-type]
        torch.testing.assert_close(got.attribution, explicit.attribution, rtol=0, atol=0)


def test_works_under_no_grad() -> None:
    net, x = tiny_cnn(), _x()
    expected = cnnlens.explain(net, x, "saliency", target=0).attribution
    with torch.no_grad():
        got = cnnlens.explain(net, x, "guided_backprop", target=0).attribution
        again = cnnlens.explain(net, x, "saliency", target=0).attribution
    assert got.abs().sum() > 0
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


# ---------------------------------------------------------------- batches and targets ----


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_batch_equals_items_one_by_one_with_per_item_targets(method: str) -> None:
    net, x = tiny_cnn(), _x(3)
    options = FAST_OPTIONS.get(method, {})
    targets = [4, 0, 2]
    batch = cnnlens.explain(net, x, method, target=targets, **options)  # type: ignore[arg-type]
    assert batch.targets is not None and batch.targets.tolist() == targets
    for i, c in enumerate(targets):
        one = cnnlens.explain(net, x[i : i + 1], method, target=c, **options)  # type: ignore[arg-type]
        torch.testing.assert_close(batch.attribution[i : i + 1], one.attribution)
    # per-item targets: another class gives another map
    other = cnnlens.explain(net, x, method, target=[1, 1, 1], **options)  # type: ignore[arg-type]
    assert not torch.allclose(other.attribution[0], batch.attribution[0])


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_callable_target(method: str) -> None:
    net, x = tiny_cnn(), _x(2)
    options = FAST_OPTIONS.get(method, {})

    def margin(output: Tensor) -> Tensor:
        return output[:, 3] - output[:, 1]

    got = cnnlens.explain(net, x, method, target=margin, **options)  # type: ignore[arg-type]
    assert got.targets is None
    # linearity of every gradient method in the score: class 3 minus class 1
    # (deconvnet/guided rectify the gradient, so only the linear methods are checked so)
    if method in ("saliency", "input_x_gradient", "smoothgrad", "integrated_gradients"):
        a = cnnlens.explain(net, x, method, target=3, **options).attribution  # type: ignore[arg-type]
        b = cnnlens.explain(net, x, method, target=1, **options).attribution  # type: ignore[arg-type]
        torch.testing.assert_close(got.attribution, a - b)
    else:
        xr = x.clone().requires_grad_()
        (plain,) = torch.autograd.grad(margin(net(xr)).sum(), xr)
        assert not torch.allclose(got.attribution, plain)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_wrong_length_targets_raise(method: str) -> None:
    net, x = tiny_cnn(), _x(3)
    for bad in ([0, 1], [0, 1, 2, 3]):
        with pytest.raises(InputError, match="3 items"):
            cnnlens.explain(net, x, method, target=bad, **FAST_OPTIONS.get(method, {}))  # type: ignore[arg-type]


def test_callable_target_with_wrong_shape_raises() -> None:
    net, x = tiny_cnn(), _x(3)
    with pytest.raises(InputError, match=r"scores for 3 items|one score per"):
        cnnlens.explain(net, x, "saliency", target=lambda out: out[:2, 0])
    with pytest.raises(InputError, match="does not depend"):
        cnnlens.explain(net, x, "saliency", target=lambda out: out[:, 0].detach())


def test_out_of_range_class_raises() -> None:
    with pytest.raises(InputError, match="out of range"):
        cnnlens.explain(tiny_cnn(), _x(), "guided_backprop", target=5)


# ---------------------------------------------------------------- model untouched --------


def _used_model() -> nn.Module:
    """A model in training mode with gradients on and stored .grad values."""
    net = tiny_cnn().train()
    net(_x()).sum().backward()
    net[3].weight.requires_grad_(False)
    net[3].weight.grad = None
    return net


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_model_untouched(method: str, untouched: type) -> None:
    net, x = _used_model(), _x()
    snap = untouched.take(net, x)
    cnnlens.explain(net, x, method, target=1, **FAST_OPTIONS.get(method, {}))  # type: ignore[arg-type]
    snap.assert_same(net, x)
    assert net.training and net[1].training


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_model_untouched_after_error(method: str, untouched: type) -> None:
    net, x = _used_model(), _x()
    snap = untouched.take(net, x)

    def broken(output: Tensor) -> Tensor:
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        cnnlens.explain(net, x, method, target=broken, **FAST_OPTIONS.get(method, {}))  # type: ignore[arg-type]
    snap.assert_same(net, x)
    # no rectifier interception left active: a plain backward gives the true gradient
    probe = tiny_cnn()
    xr = _x().requires_grad_()
    out = probe(xr)[:, 0].sum()
    (auto,) = torch.autograd.grad(out, xr)
    torch.testing.assert_close(cnnlens.explain(probe, xr, "saliency", target=0).attribution, auto)
    relu_in = torch.tensor([-1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(torch.relu(relu_in) @ torch.tensor([-1.0, -1.0]), relu_in)
    assert g.tolist() == [0.0, -1.0]


def test_inputs_untouched() -> None:
    net, x = tiny_cnn(), _x()
    keep = x.clone()
    for method in GRADIENT_METHODS:
        cnnlens.explain(net, x, method, target=0, **FAST_OPTIONS.get(method, {}))  # type: ignore[arg-type]
    assert torch.equal(x, keep) and not x.requires_grad


# ---------------------------------------------------------------- smoothgrad -------------


def test_smoothgrad_noise_is_scaled_by_each_inputs_range() -> None:
    # f = Σx², gradient 2(x + σ n): subtracting 2x leaves 2σ n, and the noise patterns are
    # the same for every item, so an input with 3× the range has 3× the deviation.
    x1 = _x(1)
    x = torch.cat([x1, 3 * x1])
    got = cnnlens.explain(SquareSum(), x, "smoothgrad", target=0, samples=4, noise=0.1).attribution
    dev = got - 2 * x
    assert dev.abs().max() > 0.01
    torch.testing.assert_close(dev[1], 3 * dev[0])
    # squared: E[(2(x + σn))²] = 4x² + 4σ², σ = noise × (max − min)
    noise, samples = 0.2, 400
    sq = cnnlens.explain(
        SquareSum(), x1, "smoothgrad", target=0, samples=samples, noise=noise, squared=True
    ).attribution
    sigma = noise * float(x1.max() - x1.min())
    estimate = float(((sq - 4 * x1 * x1) / 4).mean())
    # the mean of n² over 400 samples × 192 entries has a standard error of ~0.5 %
    assert estimate == pytest.approx(sigma**2, rel=0.03)


def test_smoothgrad_seeded_and_independent_of_batching() -> None:
    net, x = tiny_cnn(), _x(3)
    options: dict[str, object] = {"samples": 7, "noise": 0.3, "target": [0, 1, 2]}
    a = cnnlens.explain(net, x, "smoothgrad", seed=5, **options).attribution  # type: ignore[arg-type]
    b = cnnlens.explain(net, x, "smoothgrad", seed=5, batch_size=3, **options).attribution  # type: ignore[arg-type]
    c = cnnlens.explain(
        net, x, "smoothgrad", seed=5, batch_size=1000, progress=False, **options
    ).attribution  # type: ignore[arg-type]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    d = cnnlens.explain(net, x, "smoothgrad", seed=6, **options).attribution  # type: ignore[arg-type]
    assert not torch.allclose(a, d)
    sal = cnnlens.explain(net, x, "saliency", target=[0, 1, 2]).attribution
    assert not torch.allclose(a, sal)
    zero = cnnlens.explain(net, x, "smoothgrad", seed=5, target=[0, 1, 2], noise=0.0).attribution
    torch.testing.assert_close(zero, sal)


def test_smoothgrad_equals_mean_of_saliency_at_noisy_copies() -> None:
    # Reference: the documented noise draw (a generator seeded with `seed`, one (C, H, W)
    # pattern per sample) and plain saliency at each copy, one at a time.
    net, x = tiny_cnn(), _x(2)
    samples, noise, seed = 6, 0.25, 3
    got = cnnlens.explain(
        net, x, "smoothgrad", samples=samples, noise=noise, seed=seed, target=[1, 3]
    ).attribution
    gen = torch.Generator().manual_seed(seed)
    sigma = noise * (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    total = torch.zeros_like(x)
    for _ in range(samples):
        pattern = torch.randn(x.shape[1:], generator=gen, dtype=x.dtype)
        copy = x + sigma * pattern
        total += cnnlens.explain(net, copy, "saliency", target=[1, 3]).attribution
    torch.testing.assert_close(got, total / samples)


def test_smoothgrad_top_class_from_clean_input() -> None:
    # With heavy noise the top class of noisy copies changes; the target must stay the
    # clean input's top class for every copy.
    net, x = tiny_cnn(), _x(2)
    with torch.no_grad():
        top = net(x).argmax(1).tolist()
    options: dict[str, object] = {"samples": 6, "noise": 2.0, "seed": 0}
    got = cnnlens.explain(net, x, "smoothgrad", **options)  # type: ignore[arg-type]
    assert got.targets is not None and got.targets.tolist() == top
    fixed = cnnlens.explain(net, x, "smoothgrad", target=top, **options).attribution  # type: ignore[arg-type]
    torch.testing.assert_close(got.attribution, fixed, rtol=0, atol=0)


@pytest.mark.parametrize(
    "options",
    [{"samples": 0}, {"samples": 2.5}, {"noise": -0.1}, {"seed": -1}, {"batch_size": 0}],
)
def test_smoothgrad_bad_options(options: dict[str, object]) -> None:
    with pytest.raises(InputError):
        cnnlens.explain(tiny_cnn(), _x(), "smoothgrad", **options)  # type: ignore[arg-type]


def test_unknown_option_and_layer_raise() -> None:
    with pytest.raises(InputError, match="no option"):
        cnnlens.explain(tiny_cnn(), _x(), "saliency", samples=3)
    with pytest.raises(InputError, match="no layer"):
        cnnlens.explain(tiny_cnn(), _x(), "guided_backprop", layer="0")


# ---------------------------------------------------------------- integrated gradients ---


def test_integrated_gradients_exact_on_quadratic() -> None:
    # The gradient of Σx² is linear along the path, so the midpoint rule is exact:
    # IG = (x − b)(x + b) = x² − b², summing to f(x) − f(b) with any number of steps.
    x = _x(2)
    for baseline in (0.0, 0.5, "zeros", torch.full((3, 1, 1), -0.25, dtype=torch.float64)):
        b = (
            torch.zeros_like(x)
            if isinstance(baseline, str)
            else torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
        )
        got = cnnlens.explain(
            SquareSum(), x, "integrated_gradients", target=0, steps=3, baseline=baseline
        ).attribution
        torch.testing.assert_close(got, x * x - b * b)


def test_integrated_gradients_completeness() -> None:
    net, x = tiny_cnn(), _x(2)
    got = cnnlens.explain(net, x, "integrated_gradients", target=[1, 2], steps=256).attribution
    with torch.no_grad():
        out, base = net(x), net(torch.zeros_like(x))
    expected = torch.stack([out[0, 1] - base[0, 1], out[1, 2] - base[1, 2]])
    torch.testing.assert_close(got.flatten(1).sum(1), expected, rtol=1e-3, atol=1e-4)


def test_integrated_gradients_bad_baseline() -> None:
    with pytest.raises(InputError, match="baseline"):
        cnnlens.explain(tiny_cnn(), _x(), "integrated_gradients", baseline=torch.zeros(2, 5, 5))
    with pytest.raises(InputError, match="baseline"):
        cnnlens.explain(tiny_cnn(), _x(), "integrated_gradients", baseline="mean")


# ---------------------------------------------------------------- registry ---------------


def test_methods_registered_and_heatmap() -> None:
    net, x = tiny_cnn(), _x(2)
    for method in GRADIENT_METHODS:
        assert method in cnnlens.METHODS
        got = cnnlens.explain(net, x, method, **FAST_OPTIONS.get(method, {}))  # type: ignore[arg-type]
        assert got.signed and got.kind == "input"
        heat = got.heatmap()
        assert heat.shape == (2, 8, 8)
        assert float(heat.min()) >= 0.0 and float(heat.amax(dim=(1, 2)).min()) == 1.0
        torch.testing.assert_close(
            heat.double(),
            got.attribution.abs().amax(1) / got.attribution.abs().flatten(1).amax(1).view(-1, 1, 1),
            rtol=1e-6,
            atol=1e-7,
        )
