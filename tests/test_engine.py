"""The interception engine: the operation registry (kinds, binding in every call form),
warnings for operations without a rule, coverage, and the rules it made possible —
DeepLIFT exact on squeeze-excitation and LayerNorm families, LRP conserving through
activations, gates and normalizations, guided backpropagation at smooth activations."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError, RuleWarning
from cnnlens._engine import GRADIENT, Engine, Rule, RuleSet
from cnnlens._ops import Kind
from cnnlens.attribution.lrp import make_composite, relevance
from cnnlens.attribution.lrp.composites import Composite
from cnnlens.attribution.lrp.rules import epsilon
from cnnlens.cli import main
from cnnlens.targets import resolve_target

from .peers import peer


class _Seen(Rule):
    name = "seen"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Kind, bool]] = []

    def __call__(self, call: Any) -> Any:
        self.calls.append((call.op, call.kind, call.inplace))
        return call.run()


def _kinds(fn: Callable[[Tensor], Any], x: Tensor) -> list[tuple[str, Kind, bool]]:
    seen = _Seen()
    with Engine(RuleSet("test", dict.fromkeys(Kind, seen)), warn=False):
        fn(x)
    return seen.calls


def _leaf(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda x: F.relu(x * 1.0), ("relu", Kind.RECTIFIER, False)),
        (lambda x: (x * 1.0).relu_(), ("relu", Kind.RECTIFIER, True)),
        (lambda x: nn.ReLU(inplace=True)(x * 1.0), ("relu", Kind.RECTIFIER, True)),
        (lambda x: nn.ReLU6()(x), ("hardtanh", Kind.RECTIFIER, False)),
        (lambda x: F.hardtanh(x, -1.0, 1.0), ("hardtanh", Kind.ACTIVATION, False)),
        (lambda x: x.clamp(min=0), ("clamp", Kind.RECTIFIER, False)),
        (lambda x: nn.SiLU(inplace=True)(x * 1.0), ("silu", Kind.ACTIVATION, True)),
        (lambda x: nn.Hardswish()(x), ("hardswish", Kind.ACTIVATION, False)),
        (lambda x: nn.GELU(approximate="tanh")(x), ("gelu", Kind.ACTIVATION, False)),
        (lambda x: torch.sigmoid(x), ("sigmoid", Kind.ACTIVATION, False)),
        (lambda x: (x * 1.0).sigmoid_(), ("sigmoid", Kind.ACTIVATION, True)),
        (lambda x: F.leaky_relu(x, 0.2), ("leaky_relu", Kind.ACTIVATION, False)),
        (lambda x: x * torch.tanh(x), ("mul", Kind.PRODUCT, False)),
        (lambda x: x / x.exp(), ("div", Kind.QUOTIENT, False)),
        (lambda x: x + x, ("add", Kind.SUM, False)),
        (lambda x: F.layer_norm(x, (4,)), ("layer_norm", Kind.NORMALIZATION, False)),
        (lambda x: F.group_norm(x, 2), ("group_norm", Kind.NORMALIZATION, False)),
        (lambda x: F.softmax(x, 1), ("softmax", Kind.SOFTMAX, False)),
        (lambda x: x.amax(1), ("amax", Kind.MAX_REDUCE, False)),
    ],
)
def test_every_call_form_is_classified(
    fn: Callable[[Tensor], Any], expected: tuple[str, Kind, bool]
) -> None:
    calls = _kinds(fn, _leaf(3, 4))
    assert expected in calls, calls


def test_products_with_constants_are_rescalings() -> None:
    scale = nn.Parameter(torch.rand(4, dtype=torch.float64), requires_grad=False)
    mask = torch.ones(3, 4, dtype=torch.float64)
    x = _leaf(3, 4)
    for fn in (lambda t: t * scale, lambda t: mask * t, lambda t: t * 0.5, lambda t: t / 2.0):
        assert [k for _, k, _ in _kinds(fn, x)] == [Kind.SCALE]
    # nothing that does not depend on the input is intercepted at all
    assert _kinds(lambda t: F.relu(mask) * scale, x) == []


def test_engine_leaves_nothing_and_computes_the_same_values() -> None:
    model = torchvision.models.mobilenet_v3_small(weights=None).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    expected = model(x)
    with Engine(RuleSet("plain", dict.fromkeys(Kind, GRADIENT))):
        got = model(x)
    assert torch.equal(got, expected)
    F.relu(x)  # the mode is gone


class _Unhandled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3).double()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 3).double(), nn.Softmax(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x).amax(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize("method", ["deeplift", "lrp"])
def test_an_operation_without_a_rule_warns_or_raises(method: str) -> None:
    model, x = _Unhandled(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.warns(RuleWarning, match=r"softmax \(softmax\) in 'head.2'"):
        cnnlens.explain(model, x, method, target=0)
    with pytest.raises(InputError, match="no rule for"):
        cnnlens.explain(model, x, method, target=0, strict=True)
    result = cnnlens.coverage(model, method, x, target=0)
    assert ("head.2", "softmax") in {(e.module, e.op) for e in result.unhandled}
    assert not result.complete


def test_coverage_lists_rules_per_method() -> None:
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    by_method = {
        m: {(e.kind, e.rule) for e in cnnlens.coverage(model, m, x).entries}
        for m in ("deeplift", "lrp", "guided_backprop", "saliency")
    }
    assert ("product", "signal (gate held constant)") in by_method["lrp"]
    assert ("activation", "pass") in by_method["lrp"]
    assert ("product", "product split ½(a+a0)Δb + ½(b+b0)Δa") in by_method["deeplift"]
    assert ("activation", "rescale") in by_method["deeplift"]
    assert ("activation", "guided: max(f'(x)·g, 0)") in by_method["guided_backprop"]
    assert {rule for _, rule in by_method["saliency"]} == {"gradient"}
    first = cnnlens.coverage(model, "lrp", x).entries[0]
    assert (first.module, first.op, first.rule) == ("features.0.0", "conv2d", "flat")


def test_cli_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--model", "fashion_cnn", "--method", "deeplift"]) == 0
    out = capsys.readouterr().out
    assert "rescale" in out and "every operation has a rule for deeplift" in out
    try:
        code = main(["check", "--model", "fashion_cnn", "--method", "nope"])
    except SystemExit as exc:  # argparse's exit, whether main catches it or not
        code = int(exc.code or 0)
    assert code == 2


# --------------------------------------------------------------------------- families


def _non_degenerate(model: nn.Module, *, bias: bool, size: int = 32) -> nn.Module:
    """Random init that hides no error: BatchNorm statistics measured on random inputs
    then rescaled, random affine weights and biases (zero with ``bias=False``), ConvNeXt
    layer scales around 0.5 instead of 1e-6."""
    gen = torch.Generator().manual_seed(0)

    def uniform(t: Tensor, low: float, high: float) -> Tensor:
        return torch.rand(t.shape, generator=gen, dtype=t.dtype) * (high - low) + low

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=gen, dtype=torch.float64))
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.mul_(uniform(m.running_var, 0.5, 1.5))
                m.running_mean.mul_(float(bias))
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                m.weight.copy_(uniform(m.weight, 0.5, 1.5))
                m.bias.copy_(uniform(m.bias, -0.2, 0.2) * float(bias))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(uniform(m.bias, -0.1, 0.1) * float(bias))
            scale = getattr(m, "layer_scale", None)
            if isinstance(scale, Tensor):
                scale.copy_(uniform(scale, 0.3, 0.7))
    return model


FAMILIES = ["mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny"]


def _family(name: str, *, bias: bool) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).double()
    model = _non_degenerate(model, bias=bias)
    return model, torch.randn(1, 3, 32, 32, dtype=torch.float64)


@pytest.mark.parametrize("name", FAMILIES)
def test_deeplift_sums_to_delta_on_gated_and_normalized_families(name: str) -> None:
    model, x = _family(name, bias=True)
    with torch.no_grad():
        out = model(x)
        cls = int(out.argmax())
        delta = float(out[0, cls] - model(torch.zeros_like(x))[0, cls])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no operation without a rule
        a = cnnlens.explain(model, x, "deeplift", target=cls).attribution
    assert abs(delta) > 1e-3
    assert abs(float(a.sum()) - delta) <= 1e-6 * abs(delta)


@pytest.mark.parametrize("name", FAMILIES)
def test_lrp_conserves_on_bias_free_families(name: str) -> None:
    # LRP-0-like rules on every affine layer, so that only the rules at activations,
    # gates, layer scales and normalizations decide conservation. (z+ on depthwise
    # convolutions loses the relevance of outputs whose contributions are all negative.)
    model, x = _family(name, bias=False)
    target = resolve_target(int(model(x).argmax()), 1)
    exact = Composite("lrp-0", epsilon(1e-12), epsilon(1e-12), stabilizer=1e-12)
    result = relevance(model, x, target, exact)
    score = float(result.scores[0])
    assert abs(float(result.relevance.sum()) - score) <= 1e-3 * abs(score)
    # with biases every absorbed share is accounted for, default composite included
    model, x = _family(name, bias=True)
    target = resolve_target(int(model(x).argmax()), 1)
    result = relevance(model, x, target, make_composite("epsilon_plus_flat"), record=True)
    total = result.relevance.sum() + result.absorbed()[0]
    torch.testing.assert_close(total, result.scores[0], rtol=1e-9, atol=1e-9)


def test_lrp_runs_on_mobilenet_v3_with_its_inplace_hardswish() -> None:
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    a = cnnlens.explain(model, x, "lrp", target=0).attribution
    assert a.shape == x.shape and bool(torch.isfinite(a).all())


class _Gated(nn.Module):
    """conv → SiLU (by hand) → squeeze-excitation gate → GroupNorm → GELU → LayerNorm
    over channels → head: every new rule in a small float64 net."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        h = h * torch.sigmoid(h)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))))
        h = self.gn(h * gate[:, :, None, None])
        h = F.gelu(h).permute(0, 2, 3, 1)
        return self.head(self.ln(h).mean((1, 2)))


def test_deeplift_is_exact_on_hand_written_gates_and_norms() -> None:
    torch.manual_seed(1)
    model = _Gated().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    base = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    a = cnnlens.explain(model, x, "deeplift", target=1, baseline=base).attribution
    with torch.no_grad():
        delta = model(x)[:, 1] - model(base)[:, 1]
    torch.testing.assert_close(a.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)
    # the gradient × Δx is far from it: the rules matter here
    g = cnnlens.explain(model, x, "input_x_gradient", target=1).attribution
    assert not torch.allclose(g.flatten(1).sum(1), delta, rtol=1e-2)


def test_inplace_add_into_an_activation_output() -> None:
    # EfficientNet-V2's fused blocks end with SiLU and add the skip in place
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1).double()

        def forward(self, x: Tensor) -> Tensor:
            out = F.silu(self.conv(x))
            out += x
            return out.mean((2, 3))

    x, block = torch.randn(2, 3, 5, 5, dtype=torch.float64), Block()
    for method in ("deeplift", "lrp", "guided_backprop", "deconvnet"):
        a = cnnlens.explain(block, x, method, target=0).attribution
        assert bool(torch.isfinite(a).all()), method
    a = cnnlens.explain(block, x, "deeplift", target=0).attribution
    with torch.no_grad():
        delta = block(x)[:, 0] - block(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(a.flatten(1).sum(1), delta, rtol=1e-9, atol=1e-12)


def test_lrp_gate_is_held_constant() -> None:
    # y_c = sum_hw x_c * s_c with s = sigmoid(fc(mean(x))) broadcast over x: relevance
    # flows through the signal x only, the gate is held constant (Arras et al. 2017), so
    # R(x_0) = x_0 * s_0 exactly and nothing reaches x through the gate's branch.
    class SE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(2, 2).double()

        def gate(self, x: Tensor) -> Tensor:
            return torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]

        def forward(self, x: Tensor) -> Tensor:
            return (x * self.gate(x)).sum((2, 3))

    model = SE()
    x = torch.rand(1, 2, 3, 3, dtype=torch.float64) + 0.1
    rules = make_composite("epsilon_plus", stabilizer=1e-12)
    rel = relevance(model, x, resolve_target(0, 1), rules).relevance
    with torch.no_grad():
        s = model.gate(x)
    expected = torch.zeros_like(x)
    expected[0, 0] = x[0, 0] * s[0, 0]
    torch.testing.assert_close(rel, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", [nn.SiLU, nn.GELU, nn.Hardswish, nn.Tanh, nn.ELU])
def test_lrp_passes_activations_as_zennit(activation: type[nn.Module]) -> None:
    zennit_composites = peer("zennit.composites")
    from zennit.attribution import Gradient

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        activation(),
        nn.Conv2d(6, 6, 3, padding=1),
        activation(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    ours = relevance(model, x, resolve_target(2, 1), make_composite("epsilon_plus")).relevance
    with Gradient(model=model, composite=zennit_composites.EpsilonPlus()) as attributor:
        _, theirs = attributor(x, lambda out: F.one_hot(torch.tensor([2]), 4) * out)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12 * float(theirs.abs().max()))


# --------------------------------------------------------------------------- guided


class _GuidedSiLU(torch.autograd.Function):
    """A stateless reference: SiLU forward, backward max(f'(x)·g, 0) (guided) or
    max(g, 0) (deconvnet), written out by hand."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, deconv: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.deconv = deconv
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        if ctx.deconv:
            return g.clamp(min=0), None
        s = torch.sigmoid(x)
        return (g * (s * (1 + x * (1 - s)))).clamp(min=0), None


class _Unrolled(nn.Module):
    def __init__(self, reference: bool, deconv: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1, self.c2 = nn.Conv2d(3, 5, 3).double(), nn.Conv2d(5, 4, 3).double()
        self.head = nn.Linear(4, 3).double()
        self.reference, self.deconv = reference, deconv

    def act(self, x: Tensor) -> Tensor:
        return _GuidedSiLU.apply(x, self.deconv) if self.reference else F.silu(x)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.c2(self.act(self.c1(x))))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_guided_rules_at_smooth_activations_match_a_stateless_reference(method: str) -> None:
    deconv = method == "deconvnet"
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    got = cnnlens.explain(_Unrolled(False), x, method, target=1).attribution
    xr = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_Unrolled(True, deconv)(xr)[:, 1].sum(), xr)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    plain = cnnlens.explain(_Unrolled(False), x, "saliency", target=1).attribution
    assert not torch.allclose(got, plain, rtol=1e-3)
