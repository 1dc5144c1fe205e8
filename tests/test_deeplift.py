"""DeepLIFT-Rescale: hand-computed multipliers, summation-to-delta on real architectures,
linear networks, baselines, and a model left as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError


def _deeplift(model: nn.Module, x: Tensor, **options: object) -> Tensor:
    return cnnlens.explain(model, x, "deeplift", **options).attribution


def _scores(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out.gather(1, classes.view(-1, 1).expand(out.shape[0], 1)).squeeze(1)


class Pixels(nn.Module):
    """f(x) = head(x.flatten(1)) with a given head; inputs are (B, 1, 1, n)."""

    def __init__(self, head: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.flatten(1)).view(-1, 1)


def _pixels(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1)


def test_rescale_relu_hand_computed() -> None:
    # f = relu(x1 + x2 - 1); x = (1, 1), x0 = (0, 0): h = 1, h0 = -1, Δy = 1, m = 1/2.
    model = Pixels(lambda v: F.relu(v.sum(1, keepdim=True) - 1))
    a = _deeplift(model, _pixels(1, 1), target=0)
    torch.testing.assert_close(a.flatten(), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # the gradient × Δx would give (1, 1): summing to 2, not Δy = 1


def test_rescale_uses_the_gradient_where_the_difference_vanishes() -> None:
    # f = relu(x1 - x2): x = (2, 1), x0 = (1, 0) give h = h0 = 1, so Δh = 0 and m is the
    # gradient, 1: attributions (1, -1), summing to Δy = 0 (not NaN).
    model = Pixels(lambda v: F.relu(v[:, :1] - v[:, 1:]))
    a = _deeplift(model, _pixels(2, 1), target=0, baseline=_pixels(1, 0))
    torch.testing.assert_close(a.flatten(), torch.tensor([1.0, -1.0], dtype=torch.float64))
    # f = relu6(x1 - x2) at h = h0 = 7 (saturated): gradient 0
    model = Pixels(lambda v: F.relu6(v[:, :1] - v[:, 1:]))
    with pytest.warns(cnnlens.ZeroAttributionWarning, match="deeplift: .* identically zero"):
        a = _deeplift(model, _pixels(8, 1), target=0, baseline=_pixels(7, 0))
    torch.testing.assert_close(a.flatten(), torch.zeros(2, dtype=torch.float64))


_PAIRS = [  # (h, h0): a rectifier's input for the input and for the baseline
    (-2.0, -1.0),  # both below 0
    (-1.0, -1.0),  # a tie below 0: the gradient, 0
    (0.0, 0.0),  # a tie at the kink: 0 (the gradient of clamp at 0, as autograd's)
    (0.5, 0.5),  # a tie in the linear part: 1
    (3.0, 1.0),  # both linear: 1
    (7.0, 8.0),  # both above 6: 0 for ReLU6
    (7.0, 7.0),  # a tie above 6: 0 for ReLU6, 1 for ReLU
    (6.0, 6.0),  # a tie at the upper kink: 0 for ReLU6
    (-1.0, 2.0),  # crossing 0
    (8.0, -2.0),  # crossing both kinks
    (5.0, 9.0),  # crossing 6
]


@pytest.mark.parametrize("upper", [None, 6.0], ids=["relu", "relu6"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rectifier_multipliers_in_every_region_and_at_ties(
    upper: float | None, dtype: torch.dtype
) -> None:
    # f = sum_j c_j clip(x_2j - x_2j+1): the second input of each pair has Δx = 1, so its
    # attribution is -c_j m_j, which shows the multiplier m_j also at a tie (Δh = 0).
    def rectify(h: Tensor) -> Tensor:
        return F.relu(h) if upper is None else F.relu6(h)

    weights = torch.arange(1, len(_PAIRS) + 1, dtype=dtype)
    model = Pixels(lambda v: (rectify(v[:, 0::2] - v[:, 1::2]) * weights).sum(1))
    h = torch.tensor([p[0] for p in _PAIRS], dtype=dtype)
    h0 = torch.tensor([p[1] for p in _PAIRS], dtype=dtype)
    x = torch.stack([h + 1, torch.ones_like(h)], dim=1).view(1, 1, 1, -1)
    baseline = torch.stack([h0, torch.zeros_like(h0)], dim=1).view(1, 1, 1, -1)
    a = _deeplift(model, x, target=0, baseline=baseline).view(-1, 2)
    m = -a[:, 1] / weights

    top = float("inf") if upper is None else upper
    linear = ((h > 0) & (h < top)).to(dtype)
    ratio = (h.clamp(0, top) - h0.clamp(0, top)) / torch.where(h == h0, 1.0, h - h0)
    expected = torch.where(h == h0, linear, ratio)
    torch.testing.assert_close(m, expected, rtol=0, atol=0)
    torch.testing.assert_close(a[:, 0], weights * m * (x - baseline).view(-1, 2)[:, 0])


def test_rectifier_multipliers_keep_a_nan_of_the_input() -> None:
    # A NaN in the input is not taken for a tie: it reaches the attribution.
    model = Pixels(lambda v: F.relu6(v[:, :1] - v[:, 1:]))
    a = _deeplift(model, _pixels(float("nan"), 1), target=0, baseline=_pixels(1, 0))
    assert bool(a.isnan().all())


@pytest.mark.parametrize(
    "relu6",
    [
        lambda h: nn.ReLU6()(h),
        lambda h: nn.ReLU6(inplace=True)(h),
        lambda h: F.relu6(h),
        lambda h: F.hardtanh(h, 0.0, 6.0),
    ],
    ids=["module", "inplace", "functional", "hardtanh"],
)
def test_rescale_relu6_hand_computed(relu6: Callable[[Tensor], Tensor]) -> None:
    # f = relu6(4 x1 + 4 x2); x = (1, 1): h = 8, y = 6, y0 = 0, m = 6/8 (the gradient is 0).
    model = Pixels(lambda v: relu6(4 * v.sum(1, keepdim=True)))
    a = _deeplift(model, _pixels(1, 1), target=0)
    torch.testing.assert_close(a.flatten(), torch.tensor([3.0, 3.0], dtype=torch.float64))


def _pool_model() -> nn.Module:
    return nn.Sequential(nn.MaxPool2d((1, 2)), nn.Flatten())


def test_max_pool_hand_computed() -> None:
    # x = (3, 1), x0 = (0, 2): y = 3, y0 = 2; Δy = 1 goes to the input's winner x1 (Δx1 = 3)
    a = _deeplift(_pool_model(), _pixels(3, 1), target=0, baseline=_pixels(0, 2))
    torch.testing.assert_close(a.flatten(), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # x = (1, 0), x0 = (0, 4): y = 1, y0 = 4; Δy = -3 goes to the baseline's winner x2
    a = _deeplift(_pool_model(), _pixels(1, 0), target=0, baseline=_pixels(0, 4))
    torch.testing.assert_close(a.flatten(), torch.tensor([0.0, -3.0], dtype=torch.float64))


def _check_delta(model: nn.Module, x: Tensor, baseline: Tensor, rel: float = 1e-3) -> None:
    explanation = cnnlens.explain(model, x, "deeplift", baseline=baseline)
    assert explanation.targets is not None
    total = explanation.attribution.sum(dim=(1, 2, 3))
    delta = _scores(model, x, explanation.targets) - _scores(
        model, baseline.expand_as(x), explanation.targets
    )
    assert bool((delta.abs() > 1e-6).all()), "degenerate test: score(input) == score(baseline)"
    torch.testing.assert_close(total, delta, rtol=rel, atol=0.0)


def test_overlapping_max_pools_and_shared_relu_sum_exactly() -> None:
    relu = nn.ReLU(inplace=True)  # one module called at several places, as in ResNet
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        relu,
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows
        nn.Conv2d(8, 8, 3, padding=1),
        relu,
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
    ).double()
    x = torch.randn(3, 3, 15, 15, dtype=torch.float64)
    _check_delta(model, x, torch.randn(1, 3, 15, 15, dtype=torch.float64), rel=1e-9)
    _check_delta(model, x, torch.randn(3, 3, 15, 15, dtype=torch.float64), rel=1e-9)


class WritesOverItsActivations(nn.Module):
    """Writes in place over a rectifier's input and output after the call: the reference
    pass keeps those tensors without copying them, sees the change and runs again with
    copies."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        y = F.relu(h)
        if self.inplace:
            h.mul_(2.0)
            y.add_(h)
        else:
            y = y + 2.0 * h
        return self.head(y.mean(dim=(2, 3)))


def test_in_place_writes_after_a_call_keep_the_exact_result() -> None:
    torch.manual_seed(0)
    writes = WritesOverItsActivations(inplace=True).double()
    plain = WritesOverItsActivations(inplace=False).double()
    plain.load_state_dict(writes.state_dict())
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    baseline = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    expected = _deeplift(plain, x, target=1, baseline=baseline)
    torch.testing.assert_close(
        _deeplift(writes, x, target=1, baseline=baseline), expected, rtol=1e-12, atol=1e-12
    )
    _check_delta(writes, x, baseline, rel=1e-9)


def test_elementwise_activations_sum_exactly() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.SiLU(),
        nn.Conv2d(6, 6, 3),
        nn.Sigmoid(),
        nn.Conv2d(6, 6, 3),
        nn.GELU(),
        nn.Conv2d(6, 6, 3),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(6, 6, 3),
        nn.Hardswish(),
        nn.Conv2d(6, 6, 3),
        nn.Tanh(),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 3),
    ).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _check_delta(model, x, torch.randn(1, 3, 16, 16, dtype=torch.float64), rel=1e-9)


class _Linear(nn.Module):
    """No nonlinearity: convolution, eval batch norm, average pooling, a residual addition,
    a concatenation, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.side = nn.Conv2d(3, 4, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.conv(x))
        h = h + self.side(x)
        h = torch.cat([h, self.side(x)], dim=1)
        return self.fc(self.pool(h).flatten(1))


def test_linear_network_equals_gradient_times_delta() -> None:
    model = _Linear().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    a = _deeplift(model, x, target=[1, 2], baseline=x0)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[:, 1:].diagonal().sum(), xr)
    torch.testing.assert_close(a, grad * (x - x0), rtol=1e-12, atol=1e-12)


_TORCHVISION = ["vgg16", "resnet50", "densenet121"]


@pytest.mark.parametrize("name", _TORCHVISION)
def test_summation_to_delta_on_torchvision(name: str) -> None:
    model = getattr(torchvision.models, name)(weights=None).eval()
    # float64 where the network is small enough; vgg16's 138 M parameters stay in float32
    if name != "vgg16":
        model = model.double()
    dtype = next(model.parameters()).dtype
    x = torch.randn(2, 3, 64, 64, dtype=dtype)
    _check_delta(model, x, torch.zeros(1, 3, 64, 64, dtype=dtype))
    _check_delta(model, x, x + 0.5 * torch.randn(2, 3, 64, 64, dtype=dtype))


def test_summation_to_delta_on_efficientnet_lite0() -> None:
    loaded = cnnlens.load_model("efficientnet_lite0")
    model = loaded.module.double()
    try:
        photo = loaded.preprocess(cnnlens.sample_image("cat")).double()
        small = F.interpolate(photo, size=(96, 96), mode="bilinear", align_corners=False)
        x = torch.cat([small, torch.randn_like(small)])
        _check_delta(model, x, torch.zeros_like(small))
        _check_delta(model, x, small.flip(-1) + 0.3 * torch.randn_like(x))
    finally:
        model.float()


def test_several_baselines_are_averaged() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 9, 3)
    ).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    refs = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    stacked = cnnlens.explain(model, x, "deeplift", baselines=refs)
    listed = _deeplift(model, x, baseline=list(refs))
    one_by_one = torch.stack(
        [_deeplift(model, x, target=stacked.targets, baseline=r) for r in refs]
    ).mean(0)
    torch.testing.assert_close(stacked.attribution, listed)
    torch.testing.assert_close(stacked.attribution, one_by_one)
    assert stacked.targets is not None
    expected = _scores(model, x, stacked.targets) - torch.stack(
        [_scores(model, r.expand_as(x), stacked.targets) for r in refs]
    ).mean(0)
    torch.testing.assert_close(stacked.attribution.sum(dim=(1, 2, 3)), expected)


def test_batch_equals_items_alone_with_per_item_baselines() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    x0 = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    batch = _deeplift(model, x, target=[1, 4, 7], baseline=x0)
    alone = [
        _deeplift(model, x[i : i + 1], target=t, baseline=x0[i]) for i, t in enumerate([1, 4, 7])
    ]
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-9, atol=1e-12)


def test_zero_baseline_is_the_default_and_float_is_a_constant_image() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        _deeplift(model, x, target=0), _deeplift(model, x, target=0, baseline=torch.zeros(3, 8, 8))
    )
    torch.testing.assert_close(
        _deeplift(model, x, target=0, baseline=0.5),
        _deeplift(model, x, target=0, baseline=torch.full((1, 3, 8, 8), 0.5)),
    )


@pytest.mark.parametrize(
    "options",
    [
        {"baseline": "ones"},
        {"baseline": torch.zeros(3, 3, 8, 8)},
        {"baseline": torch.zeros(2, 3, 4, 4)},
        {"baseline": []},
        {"baseline": object()},
        {"baselines": torch.zeros(3, 8, 8)},
        {"baselines": torch.zeros(2, 3, 8, 8), "baseline": torch.zeros(3, 8, 8)},
    ],
)
def test_bad_baselines_raise_input_error(options: dict[str, object]) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    with pytest.raises(InputError):
        _deeplift(model, torch.randn(2, 3, 8, 8), **options)


def test_control_flow_that_differs_is_refused() -> None:
    class Branchy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(x)
            if float(x.detach().sum()) > 0:
                h = F.relu(h - 1)
            return h.flatten(1)[:, :2]

    with pytest.raises(RuntimeError, match="same sequence"):
        _deeplift(Branchy(), torch.ones(1, 1, 2, 2), target=0)


def test_model_untouched_also_after_an_error(untouched: type) -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=10).train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    model.conv1.weight.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    snap = untouched.take(model)
    a = _deeplift(model, x)
    snap.assert_same(model)
    assert a.shape == x.shape

    def broken(output: Tensor) -> Tensor:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _deeplift(model, x, target=broken)
    snap.assert_same(model)
    model.eval()
    probe = snap.take(model, x)
    _deeplift(model, x)
    probe.assert_same(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_summation_to_delta_float32_at_full_size(name: str) -> None:
    """What users get: float32 at 224x224 on the cat photo, within 1e-3 relative."""
    if name == "efficientnet_lite0":
        loaded = cnnlens.load_model(name)
        model, x = loaded.module, loaded.preprocess(cnnlens.sample_image("cat"))
    else:
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
    x = torch.cat([x, x.flip(-1) + 0.2 * torch.randn_like(x)])
    _check_delta(model, x, torch.zeros(1, *x.shape[1:]))
    _check_delta(model, x, x.roll(1, dims=0) + 0.5 * torch.randn_like(x))
