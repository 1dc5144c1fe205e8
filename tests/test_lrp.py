"""LRP: every rule against a float64 reference written as explicit matrix products,
conservation on small bias-free networks (VGG-, ResNet- and DenseNet-like), the relevance
absorbed by biases, BatchNorm folding, composites on torchvision models and the model left
untouched."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import BasicBlock, ResNet

import cnnlens
from cnnlens.attribution.lrp import COMPOSITES, Composite, make_composite, relevance
from cnnlens.attribution.lrp._affine import Affine, conv2d_call, linear_call
from cnnlens.attribution.lrp.canonizers import batch_norm_call, fold_batch_norm
from cnnlens.attribution.lrp.rules import (
    PASS,
    AffineRule,
    alpha_beta,
    epsilon,
    flat,
    gamma,
    layer_relevance,
    w_square,
    z_box,
    z_plus,
)
from cnnlens.targets import resolve_target

from .peers import peer

D = torch.float64

# PyTorch warns that an even kernel with padding="same" pads a copy of the input.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


# --------------------------------------------------------------------------------------
# Reference: the layer as an explicit (outputs x inputs) matrix, rules as matrix products.
# --------------------------------------------------------------------------------------


def _matrices(layer: nn.Module, shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """(A, M, bias per output): A[j, i] the weight connecting input i to output j, M the 0/1
    connection pattern, both built entry by entry from the layer's weights."""
    n_in = math.prod(shape)
    if isinstance(layer, nn.Linear):
        a = layer.weight.detach().clone()
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(a.shape[0], dtype=D)
        return a, torch.ones_like(a), bias
    assert isinstance(layer, nn.Conv2d)
    c, h, w = shape
    out_h, out_w = layer(torch.zeros(1, *shape, dtype=D)).shape[-2:]
    k_h, k_w = layer.kernel_size
    s_h, s_w = layer.stride
    d_h, d_w = layer.dilation
    if isinstance(layer.padding, str):  # "same", stride 1: PyTorch pads the odd pixel last
        p_h, p_w = d_h * (k_h - 1) // 2, d_w * (k_w - 1) // 2
    else:
        p_h, p_w = layer.padding
    groups = layer.groups
    c_out = layer.out_channels
    per_in, per_out = c // groups, c_out // groups
    a = torch.zeros(c_out * out_h * out_w, n_in, dtype=D)
    m = torch.zeros_like(a)
    for o in range(c_out):
        g = o // per_out
        for oy in range(out_h):
            for ox in range(out_w):
                j = (o * out_h + oy) * out_w + ox
                for ci in range(per_in):
                    cin = g * per_in + ci
                    for ky in range(k_h):
                        for kx in range(k_w):
                            iy = oy * s_h - p_h + ky * d_h
                            ix = ox * s_w - p_w + kx * d_w
                            if 0 <= iy < h and 0 <= ix < w:
                                i = (cin * h + iy) * w + ix
                                a[j, i] = layer.weight[o, ci, ky, kx]
                                m[j, i] = 1.0
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(c_out, dtype=D)
    return a, m, b.repeat_interleave(out_h * out_w)


def _stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _share(numer: Tensor, denom: Tensor, r: Tensor) -> Tensor:
    """sum_j numer[b, j, i] / denom[b, j] * r[b, j]."""
    return (numer / denom[:, :, None] * r[:, :, None]).sum(dim=1)


def _reference(
    name: str,
    a: Tensor,
    m: Tensor,
    bias: Tensor,
    x: Tensor,
    r: Tensor,
    low: Tensor | None = None,
    high: Tensor | None = None,
) -> Tensor:
    eps = 1e-6
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)

    def c(inputs: Tensor, weights: Tensor) -> Tensor:  # contributions (B, J, I)
        return weights[None] * inputs[:, None, :]

    if name == "epsilon":
        numer = c(x, a)
        return _share(numer, _stab(numer.sum(-1) + bias, 0.1), r)
    if name == "z+":
        numer = c(xp, pos) + c(xn, neg)
        return _share(numer, _stab(numer.sum(-1) + bias.clamp(min=0), eps), r)
    if name in ("alpha2-beta1", "alpha1-beta0"):
        alpha, beta = (2.0, 1.0) if name == "alpha2-beta1" else (1.0, 0.0)
        p = c(xp, pos) + c(xn, neg)
        n = c(xp, neg) + c(xn, pos)
        return alpha * _share(p, _stab(p.sum(-1) + bias.clamp(min=0), eps), r) - beta * _share(
            n, _stab(n.sum(-1) + bias.clamp(max=0), eps), r
        )
    if name == "gamma":
        g = 0.25
        z = c(x, a).sum(-1) + bias
        p = c(xp, a + g * pos) + c(xn, a + g * neg)
        n = c(xp, a + g * neg) + c(xn, a + g * pos)
        rp, rn = r * (z > 0), r * (z < 0)
        return _share(p, _stab(p.sum(-1) + bias + g * bias.clamp(min=0), eps), rp) + _share(
            n, _stab(n.sum(-1) + bias + g * bias.clamp(max=0), eps), rn
        )
    if name == "z^B":
        assert low is not None and high is not None
        numer = c(x, a) - c(low, pos) - c(high, neg)
        return _share(numer, _stab(numer.sum(-1), eps), r)
    if name == "flat":
        numer = m[None].expand(x.shape[0], -1, -1)
        return _share(numer, _stab(numer.sum(-1), eps), r)
    if name == "w^2":
        numer = (a * a)[None].expand(x.shape[0], -1, -1)
        return _share(numer, _stab(numer.sum(-1), eps), r)
    raise AssertionError(name)


LAYERS: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
    "linear": lambda: (nn.Linear(7, 5), (7,)),
    "conv": lambda: (nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 6, 6)),
    "depthwise": lambda: (nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4), (4, 5, 5)),
    "grouped_same": lambda: (nn.Conv2d(4, 6, (4, 3), padding="same", groups=2), (4, 5, 6)),
}

RULES: dict[str, Callable[[], AffineRule]] = {
    "epsilon": lambda: epsilon(0.1),
    "z+": z_plus,
    "alpha2-beta1": lambda: alpha_beta(2.0, 1.0),
    "alpha1-beta0": lambda: alpha_beta(1.0, 0.0),
    "gamma": lambda: gamma(0.25),
    "z^B": z_box,
    "flat": flat,
    "w^2": w_square,
}


def _affine(layer: nn.Module, x: Tensor) -> Affine:
    if isinstance(layer, nn.Linear):
        parsed = linear_call({"input": x, "weight": layer.weight, "bias": layer.bias}, "layer")
    else:
        assert isinstance(layer, nn.Conv2d)
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        args = (x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
        parsed = conv2d_call(dict(zip(names, (*args, layer.groups), strict=True)), "layer")
    assert parsed is not None
    return parsed[1]


@pytest.mark.parametrize("relevant", ["every output", "positive outputs"])
@pytest.mark.parametrize("sign", ["mixed", "nonnegative"])
@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_rule_matches_matrix_reference(
    layer_name: str, rule_name: str, sign: str, relevant: str
) -> None:
    layer, shape = LAYERS[layer_name]()
    layer = layer.to(D)
    with torch.no_grad():  # biases of both signs, large enough to matter
        layer.bias.copy_(torch.randn_like(layer.bias) * 0.5)
    x = torch.randn(3, *shape, dtype=D)
    if sign == "nonnegative":
        x = x.clamp(min=0)  # the engine skips the x- branches here
    with torch.no_grad():
        z = layer(x)
    r = torch.randn_like(z)
    if relevant == "positive outputs":  # as below a rectifier: gamma's one-transpose path
        r = r * (z > 0)
    got = layer_relevance(RULES[rule_name](), _affine(layer, x), x, r).flatten(1)

    a, m, bias = _matrices(layer, shape)
    flat_x, flat_r = x.flatten(1), r.flatten(1)
    low = high = None
    if rule_name == "z^B":  # default bounds: each item's per-channel min and max
        dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)
        low = x.amin(dim=dims, keepdim=True).expand_as(x).flatten(1)
        high = x.amax(dim=dims, keepdim=True).expand_as(x).flatten(1)
    want = _reference(rule_name, a, m, bias, flat_x, flat_r, low, high)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("sign", "relevant", "transposes"),
    [
        ("nonnegative", "positive outputs", 1),
        ("nonnegative", "every output", 2),
        ("mixed", "positive outputs", 2),
    ],
)
def test_gamma_needs_one_transpose_only_for_a_rectified_layer(
    monkeypatch: pytest.MonkeyPatch, sign: str, relevant: str, transposes: int
) -> None:
    # The one-transpose path is exact only when x >= 0 and no relevance sits on an
    # output with z <= 0; it must be taken then (it is what makes gamma cheap on ReLU
    # nets) and never otherwise.
    layer, shape = LAYERS["conv"]()
    layer = layer.to(D)
    x = torch.randn(2, *shape, dtype=D)
    if sign == "nonnegative":
        x = x.clamp(min=0)
    with torch.no_grad():
        z = layer(x)
    r = torch.randn_like(z)
    if relevant == "positive outputs":
        r = r * (z > 0)
    calls: list[Tensor] = []
    original = Affine._transpose

    def counted(self: Affine, grad: Tensor, weight: Tensor, like: Tensor) -> Tensor:
        calls.append(weight)
        return original(self, grad, weight, like)

    monkeypatch.setattr(Affine, "_transpose", counted)
    got = layer_relevance(gamma(0.25), _affine(layer, x), x, r).flatten(1)
    assert len(calls) == transposes
    a, m, bias = _matrices(layer, shape)
    want = _reference("gamma", a, m, bias, x.flatten(1), r.flatten(1))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sign", ["mixed", "nonnegative"])
@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("layer_name", ["linear", "grouped_same"])
def test_rule_on_a_folded_batch_norm_matches_reference(
    layer_name: str, rule_name: str, sign: str
) -> None:
    # The BatchNorm stays on the output side (scale of both signs and a zero, shift): the
    # rules apply parts of s W through W's parts. As in the driver, the rule's forward half
    # runs on the layer alone first and the folded node reuses what it kept.
    layer, shape = LAYERS[layer_name]()
    layer = layer.to(D)
    channels = layer.weight.shape[0]
    scale = torch.randn(channels, dtype=D)
    scale[0] = 0.0
    scale[1] = -abs(float(scale[1])) - 0.1
    scale[2] = abs(float(scale[2])) + 0.1
    shift = torch.randn(channels, dtype=D) * 0.5
    x = torch.randn(3, *shape, dtype=D)
    if sign == "nonnegative":
        x = x.clamp(min=0)
    rule = RULES[rule_name]()
    plain = _affine(layer, x)
    norm = (torch.zeros_like(scale), torch.ones_like(scale), scale, shift, 0.0)
    folded = dataclasses.replace(plain, norm=norm)
    with torch.no_grad():
        _, prior = rule.forward(plain, x, lambda t: plain.conv(t, "w", plain.bias_part()))
        z, saved = rule.forward(folded, x, lambda t: folded.conv(t, "w", folded.bias_part()), prior)
        r = torch.randn_like(z)
        got = rule.backward(folded, saved, r).flatten(1)
        want_z = layer(x) * scale.view(1, -1, *([1] * (x.dim() - 2))) + shift.view(
            1, -1, *([1] * (x.dim() - 2))
        )
    torch.testing.assert_close(z, want_z, rtol=1e-12, atol=1e-12)
    a, m, bias = _matrices(layer, shape)
    per_output = scale.repeat_interleave(a.shape[0] // channels)
    a = a * per_output[:, None]
    bias = bias * per_output + shift.repeat_interleave(a.shape[0] // channels)
    flat_x, flat_r = x.flatten(1), r.flatten(1)
    low = high = None
    if rule_name == "z^B":
        dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)
        low = x.amin(dim=dims, keepdim=True).expand_as(x).flatten(1)
        high = x.amax(dim=dims, keepdim=True).expand_as(x).flatten(1)
    want = _reference(rule_name, a, m, bias, flat_x, flat_r, low, high)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    alone = layer_relevance(rule, folded, x, r).flatten(1)  # the folded layer from scratch
    torch.testing.assert_close(alone, want, rtol=1e-9, atol=1e-10)


def test_z_box_with_given_bounds_matches_reference() -> None:
    layer, shape = LAYERS["conv"]()
    layer = layer.to(D)
    x = torch.rand(2, *shape, dtype=D) * 2 - 1
    low = torch.tensor([-1.0, -2.0, -1.5], dtype=D).view(1, 3, 1, 1)
    high = torch.tensor([1.0, 2.0, 1.5], dtype=D).view(1, 3, 1, 1)
    with torch.no_grad():
        z = layer(x)
    r = torch.randn_like(z)
    got = layer_relevance(z_box(low, high), _affine(layer, x), x, r).flatten(1)
    a, m, bias = _matrices(layer, shape)
    want = _reference(
        "z^B",
        a,
        m,
        bias,
        x.flatten(1),
        r.flatten(1),
        low.expand_as(x).flatten(1),
        high.expand_as(x).flatten(1),
    )
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_pass_rule_refuses_a_shape_change() -> None:
    layer = nn.Linear(4, 3).to(D)
    x = torch.randn(2, 4, dtype=D)
    with pytest.raises(cnnlens.InputError, match="keeps the shape"):
        layer_relevance(PASS, _affine(layer, x), x, torch.ones(2, 3, dtype=D))


# --------------------------------------------------------------------------------------
# Small networks: VGG-like (max and average pooling), ResNet (torchvision's BasicBlock:
# shared ReLU, out += identity, downsample), DenseNet (torchvision's: F.relu, torch.cat).
# --------------------------------------------------------------------------------------


def _vgg_like(bias: bool) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=bias),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16, bias=bias),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(16, 5, bias=bias),
    )


def _randomize_batch_norms(model: nn.Module, shift: bool) -> None:
    """Random scales (some negative) and variances; shifts only when ``shift``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn_like(m.weight))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
                if shift:
                    m.bias.copy_(torch.randn_like(m.bias) * 0.3)
                    m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.3)


def _resnet_like(bias: bool) -> nn.Module:
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)
    _randomize_batch_norms(model, shift=bias)
    if not bias:
        nn.init.zeros_(model.fc.bias)
    return model


def _densenet_like(bias: bool) -> nn.Module:
    model = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2)
    model.classifier = nn.Linear(model.classifier.in_features, 5)
    _randomize_batch_norms(model, shift=bias)
    if not bias:
        nn.init.zeros_(model.classifier.bias)
    return model


NETS: dict[str, Callable[[bool], nn.Module]] = {
    "vgg_like": _vgg_like,
    "resnet_like": _resnet_like,
    "densenet_like": _densenet_like,
}
SIZES = {"vgg_like": 8, "resnet_like": 32, "densenet_like": 32}


def _net(name: str, bias: bool) -> tuple[nn.Module, Tensor]:
    model = NETS[name](bias).to(D).eval()
    return model, torch.randn(2, 3, SIZES[name], SIZES[name], dtype=D)


def _run(
    model: nn.Module, x: Tensor, composite: Composite, target: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    result = relevance(model, x, resolve_target(target, x.shape[0]), composite, record=True)
    return result.relevance, result.scores, result.absorbed()


def _lrp0() -> Composite:
    return Composite("lrp0", epsilon(1e-12), epsilon(1e-12), stabilizer=1e-12)


@pytest.mark.parametrize("net", list(NETS))
def test_lrp0_is_gradient_times_input_on_bias_free_nets(net: str) -> None:
    # On a bias-free ReLU network LRP-0 (epsilon -> 0, proportional pooling and sums, max
    # pooling by its gradient) equals gradient x input, and sums to the logit.
    model, x = _net(net, bias=False)
    rel, scores, _ = _run(model, x, _lrp0(), target=3)
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(xr)[:, 3].sum(), xr)
    torch.testing.assert_close(rel, x * grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(rel.flatten(1).sum(1), scores, rtol=1e-8, atol=0)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box"])
@pytest.mark.parametrize("net", list(NETS))
def test_composites_conserve_on_bias_free_nets(net: str, composite: str) -> None:
    model, x = _net(net, bias=False)
    rel, scores, _ = _run(model, x, make_composite(composite, epsilon_value=1e-9))
    assert torch.all(scores.abs() > 1e-3)
    torch.testing.assert_close(rel.flatten(1).sum(1), scores, rtol=1e-3, atol=0)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("net", list(NETS))
def test_absorbed_relevance_accounts_for_biases(net: str, composite: str) -> None:
    # With biases (and BN shifts) relevance is absorbed; every node's in/out flow is
    # recorded, so input relevance + absorbed = logit exactly when all the unrecorded
    # operations (rectifiers, max pooling, concatenation, reshapes) conserve it.
    model, x = _net(net, bias=True)
    rel, scores, absorbed = _run(model, x, make_composite(composite, epsilon_value=0.01))
    total = rel.flatten(1).sum(1)
    assert not torch.allclose(total, scores, rtol=1e-3)  # the biases do absorb some
    torch.testing.assert_close(total + absorbed, scores, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("net", list(NETS))
def test_float32_agrees_with_float64(net: str) -> None:
    # Rounding must not be amplified: a filter with only positive weights and a negative
    # bias over a dark half (all inputs negative) has z+ = 0 exactly there, where a rule
    # that derived z+ or its numerators by subtraction (through |x| and |W|) turns rounding
    # into relevance (measured: 2e-2 to 2e-1 of the largest relevance on the DenseNet;
    # direct sums: at most 1.3e-5 on all three nets).
    model, x = _net(net, bias=True)
    modules = list(model.modules())
    i = next(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
    first, after = modules[i], modules[i + 1]
    with torch.no_grad():  # channel 0: positive weights, negative (folded) bias
        first.weight[0].abs_()
        if first.bias is not None:
            first.bias[0] = -0.5
        if isinstance(after, nn.BatchNorm2d):
            after.weight[0], after.bias[0], after.running_mean[0] = 1.0, -0.5, 0.0
    half = x.shape[-1] // 2
    x = x.clone()
    x[..., :half] = -x[..., :half].abs() - 0.5
    target = resolve_target(0, x.shape[0])
    for composite in COMPOSITES:
        rules = make_composite(composite)
        want = relevance(model, x, target, rules).relevance
        got = relevance(model.float(), x.float(), target, rules).relevance.double()
        model.double()
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * scale, msg=composite)


def test_absorbed_by_an_epsilon_layer_is_the_bias_share() -> None:
    layer = nn.Linear(6, 4).to(D)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=D))
    x = torch.randn(3, 6, dtype=D)
    result = relevance(
        layer, x, resolve_target(2, 3), Composite("eps", epsilon(0.1), epsilon(0.1)), record=True
    )
    (flow,) = result.flows
    z = layer(x).detach()[:, 2]
    torch.testing.assert_close(flow.upper, z)  # relevance put in: the logit
    share = z * (layer.bias[2].detach() + 0.1 * torch.sign(z)) / _stab(z, 0.1)
    torch.testing.assert_close(flow.upper - flow.lower, share)
    torch.testing.assert_close(result.relevance.sum(1), z - share)


def test_relu6_passes_saturated_relevance() -> None:
    # Saturated ReLU6 units have zero gradient; LRP passes their relevance anyway.
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.ReLU6(),
        nn.Conv2d(4, 4, 3, bias=False),
        nn.Flatten(),
        nn.Linear(16, 3, bias=False),
    ).to(D)
    with torch.no_grad():
        model[0].weight.mul_(10.0)
    x = torch.randn(2, 3, 6, 6, dtype=D)
    assert bool((model[0](x) > 6).any())
    rel, scores, _ = _run(model, x, _lrp0(), target=0)
    torch.testing.assert_close(rel.flatten(1).sum(1), scores, rtol=1e-8, atol=0)
    xr = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(xr)[:, 0].sum(), xr)
    assert not torch.allclose((x * grad).flatten(1).sum(1), scores, rtol=1e-3)


# --------------------------------------------------------------------------------------
# BatchNorm folding.
# --------------------------------------------------------------------------------------


def test_fold_batch_norm_is_the_same_affine_map() -> None:
    conv, bn = nn.Conv2d(3, 5, 3, padding=1).to(D), nn.BatchNorm2d(5).to(D).eval()
    dense, bn1d = nn.Linear(4, 5).to(D), nn.BatchNorm1d(5).to(D).eval()
    for norm in (bn, bn1d):
        _randomize_batch_norms(nn.Sequential(norm), shift=True)
        with torch.no_grad():
            norm.weight.copy_(torch.randn(5, dtype=D))
            norm.bias.copy_(torch.randn(5, dtype=D))
            norm.running_mean.copy_(torch.randn(5, dtype=D))
            norm.running_var.copy_(torch.rand(5, dtype=D) + 0.1)
    for layer, norm, x in (
        (conv, bn, torch.randn(2, 3, 4, 4, dtype=D)),
        (dense, bn1d, torch.randn(2, 4, dtype=D)),
    ):
        affine = _affine(layer, x)
        with torch.no_grad():
            y = layer(x)
            call = batch_norm_call(
                {
                    "input": y,
                    "running_mean": norm.running_mean,
                    "running_var": norm.running_var,
                    "weight": norm.weight,
                    "bias": norm.bias,
                    "training": False,
                    "momentum": 0.1,
                    "eps": norm.eps,
                }
            )
            assert call is not None
            folded = fold_batch_norm(affine, call, "folded")
            assert folded is not None
            torch.testing.assert_close(
                folded.conv(x, "w", folded.bias_part()), norm(y), rtol=1e-12, atol=1e-12
            )


class _ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("composite", COMPOSITES)
def test_batch_norm_is_folded_into_the_convolution(composite: str, untouched: type) -> None:
    model = _ConvBN().to(D).eval()
    _randomize_batch_norms(model, shift=True)
    x = torch.randn(2, 3, 4, 4, dtype=D)
    snap = untouched.take(model, x)
    rules = make_composite(composite)
    rel, _, _ = _run(model, x, rules, target=1)
    snap.assert_same(model, x)

    # The same network with the BatchNorm folded by hand.
    twin = _ConvBN().to(D).eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        s = model.bn.weight / torch.sqrt(model.bn.running_var + model.bn.eps)
        twin.conv.weight.copy_(model.conv.weight * s.view(-1, 1, 1, 1))
        twin.conv.bias.copy_((model.conv.bias - model.bn.running_mean) * s + model.bn.bias)
    twin.bn = nn.Identity()
    folded, _, _ = _run(twin, x, rules, target=1)
    torch.testing.assert_close(rel, folded, rtol=1e-9, atol=1e-12)


def test_batch_norm_after_no_layer_passes_relevance() -> None:
    bn = nn.BatchNorm2d(3).to(D).eval()
    _randomize_batch_norms(nn.Sequential(bn), shift=True)
    rest = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2)).to(D)
    model = nn.Sequential(bn, *rest)
    x = torch.randn(2, 3, 4, 4, dtype=D)
    rules = make_composite("epsilon_plus")
    rel, _, _ = _run(model, x, rules, target=0)
    with torch.no_grad():
        y = bn(x)
    rel_after, _, _ = _run(rest, y, rules, target=0)
    torch.testing.assert_close(rel, rel_after, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# Composites: which layer gets which rule.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("composite", "first", "conv", "dense"),
    [
        ("epsilon_plus", "z+", "z+", "epsilon(1e-06)"),
        ("epsilon_plus_flat", "flat", "z+", "epsilon(1e-06)"),
        ("epsilon_gamma_box", "z^B", "gamma(0.25)", "epsilon(1e-06)"),
        ("epsilon_alpha2_beta1", "alpha2-beta1", "alpha2-beta1", "epsilon(1e-06)"),
    ],
)
def test_composite_assigns_rules_by_layer(
    composite: str, first: str, conv: str, dense: str
) -> None:
    model, x = _net("resnet_like", bias=True)
    result = relevance(model, x, resolve_target(0, 2), make_composite(composite), record=True)
    rules = {f.name: f.rule for f in result.flows}
    assert rules["conv1+bn1"] == first
    assert rules["layer1.0.conv1+layer1.0.bn1"] == conv
    assert rules["layer2.0.downsample.0+layer2.0.downsample.1"] == conv
    assert rules["fc"] == dense
    assert sum(f.name == "sum" for f in result.flows) == 4  # one residual sum per block


# --------------------------------------------------------------------------------------
# torchvision models (random weights) and the public API.
# --------------------------------------------------------------------------------------


def _torchvision(name: str) -> nn.Module:
    if name == "efficientnet_lite0":
        # Random weights make its logits the classifier bias alone (all relevance absorbed
        # there), so the bundled ImageNet weights are the meaningful case.
        return cnnlens.load_model(name).module
    return torchvision.models.get_model(name, weights=None).eval()


@pytest.mark.parametrize(
    "name", ["vgg16", "resnet18", "resnet50", "densenet121", "efficientnet_lite0"]
)
def test_every_composite_runs_on_torchvision_models(name: str, untouched: type) -> None:
    model = _torchvision(name)
    x = torch.randn(1, 3, 32, 32)
    snap = untouched.take(model, x)
    for composite in COMPOSITES:
        result = relevance(
            model, x, resolve_target(None, 1), make_composite(composite), record=True
        )
        rel, scores = result.relevance, result.scores
        assert rel.shape == x.shape
        assert bool(torch.isfinite(rel).all())
        total = rel.flatten(1).sum(1)
        # Every relevance node is accounted for: nothing leaks or is created elsewhere.
        torch.testing.assert_close(total + result.absorbed(), scores, rtol=1e-3, atol=1e-4)
        ratio = (total / scores).tolist()
        if name == "efficientnet_lite0":
            # Its folded BatchNorms have large positive shifts: z+ and gamma put them in the
            # denominators, so most relevance is absorbed (measured: 1e-5 to 1e-3 of the
            # logit); it must never be created.
            assert all(abs(r) < 1.0 for r in ratio), (composite, ratio)
        elif composite != "epsilon_alpha2_beta1":  # alpha-beta does not conserve by design
            assert all(0.5 < r < 2.0 for r in ratio), (composite, ratio)
        else:
            assert all(0.1 < abs(r) < 10.0 for r in ratio), (composite, ratio)
    snap.assert_same(model, x)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_agrees_with_zennit_on_a_resnet(composite: str) -> None:
    # zennit (with its ResNet canonizer, which rewrites the model) as an independent
    # implementation. BatchNorm eps = 0, because zennit's merged BatchNorm is left as
    # x / sqrt(1 + eps) rather than the identity.
    zennit_composites = peer("zennit.composites")
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer

    model, x = _net("resnet_like", bias=True)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    x = x[:1]
    kwargs: dict[str, float] = (
        {"low": -4.0, "high": 4.0} if composite == "epsilon_gamma_box" else {}
    )
    classes = model(x).argmax(1)
    ours = relevance(
        model, x, resolve_target(classes, 1), make_composite(composite, **kwargs)
    ).relevance
    names = {
        "epsilon_plus": "EpsilonPlus",
        "epsilon_plus_flat": "EpsilonPlusFlat",
        "epsilon_gamma_box": "EpsilonGammaBox",
        "epsilon_alpha2_beta1": "EpsilonAlpha2Beta1",
    }
    reference = getattr(zennit_composites, names[composite])(
        canonizers=[ResNetCanonizer()], **kwargs
    )
    with Gradient(model=model, composite=reference) as attributor:
        _, theirs = attributor(x, lambda out: F.one_hot(classes, out.shape[1]) * out)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12 * float(theirs.abs().max()))


def test_explain_lrp_options_and_errors(untouched: type) -> None:
    model, x = _net("resnet_like", bias=True)
    model = model.float()
    x = x.float()
    snap = untouched.take(model, x)
    e = cnnlens.explain(model, x, "lrp")
    assert e.attribution.shape == x.shape
    assert e.targets is not None and e.targets.tolist() == model(x).argmax(1).tolist()
    box = cnnlens.explain(model, x, "lrp", composite="epsilon_gamma_box", low=-5.0, high=5.0)
    direct = relevance(
        model,
        x,
        resolve_target(e.targets, 2),
        make_composite("epsilon_gamma_box", low=-5.0, high=5.0),
    )
    torch.testing.assert_close(box.attribution, direct.relevance)
    with pytest.raises(cnnlens.InputError, match="unknown composite"):
        cnnlens.explain(model, x, "lrp", composite="epsilon_plus_flatt")
    with pytest.raises(cnnlens.InputError, match="epsilon"):
        cnnlens.explain(model, x, "lrp", epsilon=0.0)
    with pytest.raises(cnnlens.InputError, match="low must not exceed high"):
        cnnlens.explain(model, x, "lrp", composite="epsilon_gamma_box", low=1.0, high=-1.0)
    with pytest.raises(cnnlens.InputError, match="does not broadcast"):
        cnnlens.explain(model, x, "lrp", composite="epsilon_gamma_box", low=torch.zeros(5, 1, 1))
    with pytest.raises(cnnlens.InputError):
        cnnlens.explain(model, x, "lrp", target=[1, 2, 3])
    snap.assert_same(model, x)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_explain_reports_what_the_flows_say_was_absorbed(composite: str) -> None:
    # explain reports absorbed = score - the map's sum; the per-node flows of
    # relevance(record=True) account for every bias and stabilizer one by one. On the
    # pretrained Lite0 (biases absorb nearly all of the logit) and a random ResNet-18 with
    # BatchNorm shifts the two agree.
    lite0 = cnnlens.load_model("efficientnet_lite0").module
    resnet = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        for bn in resnet.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.bias.uniform_(-0.5, 0.5)
    for model, size in ((lite0, 96), (resnet, 64)):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        e = cnnlens.explain(model, x, "lrp", composite=composite)
        assert e.targets is not None
        flows = relevance(
            model, x, resolve_target(e.targets, 2), make_composite(composite), record=True
        )
        score = e.extras["score"]
        torch.testing.assert_close(score, flows.scores)
        assert bool((flows.absorbed().abs() > 1e-3 * score.abs()).all())  # biases do absorb
        torch.testing.assert_close(
            e.extras["absorbed"], flows.absorbed(), rtol=1e-4, atol=1e-5 * float(score.abs().max())
        )


def test_batch_equals_items_alone() -> None:
    model, x = _net("densenet_like", bias=True)
    rules = make_composite("epsilon_gamma_box")
    together = relevance(model, x, resolve_target([1, 4], 2), rules).relevance
    for i, t in enumerate([1, 4]):
        alone = relevance(model, x[i : i + 1], resolve_target(t, 1), rules).relevance
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-10, atol=1e-12)


def test_mode_is_left_after_an_error(untouched: type) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x: Tensor) -> Tensor:
            F.relu(self.conv(x))
            raise RuntimeError("broken")

    model = Broken()
    x = torch.randn(1, 3, 5, 5)
    snap = untouched.take(model.conv, x)
    with pytest.raises(RuntimeError, match="broken"):
        cnnlens.explain(model, x, "lrp", target=0)
    snap.assert_same(model.conv, x)
    t = torch.randn(20, requires_grad=True)
    (grad,) = torch.autograd.grad(F.relu(t).sum(), t)  # the true gradient again
    torch.testing.assert_close(grad, (t > 0).to(t.dtype))


def test_runs_under_no_grad_and_leaves_the_input_alone() -> None:
    model = nn.Sequential(nn.ReLU(inplace=True), _vgg_like(bias=True)).eval()
    x = torch.randn(2, 3, 8, 8)
    before = x.clone()
    with torch.no_grad():
        e = cnnlens.explain(model, x, "lrp", target=1)
    assert torch.equal(x, before)  # the first in-place ReLU did not write into the input
    again = cnnlens.explain(model, x, "lrp", target=1)
    torch.testing.assert_close(e.attribution, again.attribution)
