"""Deconvnet and guided backpropagation: hand-computed values on tiny networks, every kind of
rectifier call, ReLU6, and agreement with references built by other mechanisms on
torchvision's ResNet (shared ReLU modules) and DenseNet (functional ReLU)."""

from __future__ import annotations

import copy
import types
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.densenet as tv_densenet
from torch import Tensor, nn
from torchvision.models import densenet121, resnet18, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck

import cnnlens
from cnnlens._hooks import RectifierMode, RectifierRule
from cnnlens.attribution.rectifiers import DeconvnetRule, GuidedRule

# --------------------------------------------------------------------------------------
# Tiny two-layer network, worked by hand
#
#   x = (1, 2, 3)
#   W1 = [[1, -1, 0], [0, 1, 1], [-1, 0, 2]], b1 = (0, -1, 0)
#   h = W1 x + b1 = (-1, 4, 5)          forward mask [h > 0] = (0, 1, 1)
#   class 0 score = w2 . relu(h), w2 = (2, -3, 1), so dscore/drelu = g = (2, -3, 1)
#
#   gradient:  W1^T (g * mask)        = W1^T (0, -3, 1) = (-1, -3, -1)
#   deconvnet: W1^T max(g, 0)          = W1^T (2, 0, 1)  = ( 1, -2,  2)
#   guided:    W1^T (max(g, 0) * mask) = W1^T (0, 0, 1)  = (-1,  0,  2)
# --------------------------------------------------------------------------------------

W1 = [[1.0, -1.0, 0.0], [0.0, 1.0, 1.0], [-1.0, 0.0, 2.0]]
X = [1.0, 2.0, 3.0]
W2 = [[2.0, -3.0, 1.0], [1.0, 1.0, 1.0]]
HAND = {
    "saliency": [-1.0, -3.0, -1.0],
    "deconvnet": [1.0, -2.0, 2.0],
    "guided_backprop": [-1.0, 0.0, 2.0],
}


class _Call(nn.Module):
    """Apply a rectifier given as a function (functional forms, not modules)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


RECTIFIERS: dict[str, Callable[[], nn.Module]] = {
    "nn.ReLU": nn.ReLU,
    "nn.ReLU(inplace)": lambda: nn.ReLU(inplace=True),
    "F.relu": lambda: _Call(F.relu),
    "F.relu(inplace)": lambda: _Call(lambda x: F.relu(x, inplace=True)),
    "F.relu_": lambda: _Call(F.relu_),
    "torch.relu": lambda: _Call(torch.relu),
    "torch.relu_": lambda: _Call(torch.relu_),
    "Tensor.relu": lambda: _Call(lambda x: x.relu()),
    "Tensor.relu_": lambda: _Call(lambda x: x.relu_()),
    "F.hardtanh(0, inf)": lambda: _Call(lambda x: F.hardtanh(x, 0.0, float("inf"))),
    # in place with the returned value ignored: the input itself must be rectified
    "x.relu_() unused": lambda: _Call(lambda x: (x.relu_(), x)[1]),
    "F.relu(inplace) unused": lambda: _Call(lambda x: (F.relu(x, inplace=True), x)[1]),
}


def _two_layer(rectifier: nn.Module, b1: list[float], w2: list[list[float]]) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 3), rectifier, nn.Linear(3, 2)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(W1))
        net[1].bias.copy_(torch.tensor(b1))
        net[3].weight.copy_(torch.tensor(w2))
        net[3].bias.zero_()
    return net


def _x() -> Tensor:
    # (1, 3, 1, 1): a "picture" with three channels and one pixel.
    return torch.tensor(X, dtype=torch.float64).view(1, 3, 1, 1)


@pytest.mark.parametrize("kind", list(RECTIFIERS))
@pytest.mark.parametrize("method", list(HAND))
def test_hand_computed_two_layer(kind: str, method: str) -> None:
    net = _two_layer(RECTIFIERS[kind](), [0.0, -1.0, 0.0], W2)
    got = cnnlens.explain(net, _x(), method, target=0).attribution
    assert got.dtype == torch.float64
    assert got.flatten().tolist() == HAND[method]


# --------------------------------------------------------------------------------------
# ReLU6 with values above 6, worked by hand
#
#   b1 = (0, -1, 3): h = (-1, 4, 8); lower mask [h > 0] = (0, 1, 1), upper pass [h < 6] = (1, 1, 0)
#   w2 = (2, 3, 5): g = (2, 3, 5); after the upper clip: g' = g * (1, 1, 0) = (2, 3, 0)
#
#   gradient:  W1^T (g' * lower)        = W1^T (0, 3, 0) = ( 0, 3, 3)
#   deconvnet: W1^T max(g', 0)          = W1^T (2, 3, 0) = ( 2, 1, 3)
#   guided:    W1^T (max(g', 0) * lower) = W1^T (0, 3, 0) = ( 0, 3, 3)
#   With w2 = (2, -3, 5): g' = (2, -3, 0)
#   gradient:  W1^T (0, -3, 0) = (0, -3, -3); deconvnet: W1^T (2, 0, 0) = (2, -2, 0);
#   guided: W1^T (0, 0, 0) = (0, 0, 0)
# --------------------------------------------------------------------------------------

RELU6: dict[str, Callable[[], nn.Module]] = {
    "nn.ReLU6": nn.ReLU6,
    "nn.ReLU6(inplace)": lambda: nn.ReLU6(inplace=True),
    "F.relu6": lambda: _Call(F.relu6),
    "F.hardtanh(0, 6)": lambda: _Call(lambda x: F.hardtanh(x, 0.0, 6.0)),
    "nn.Hardtanh(0, 6)": lambda: nn.Hardtanh(0.0, 6.0),
}
HAND6 = {
    (2.0, 3.0, 5.0): {
        "saliency": [0.0, 3.0, 3.0],
        "deconvnet": [2.0, 1.0, 3.0],
        "guided_backprop": [0.0, 3.0, 3.0],
    },
    (2.0, -3.0, 5.0): {
        "saliency": [0.0, -3.0, -3.0],
        "deconvnet": [2.0, -2.0, 0.0],
        "guided_backprop": [0.0, 0.0, 0.0],
    },
}


@pytest.mark.parametrize("kind", list(RELU6))
@pytest.mark.parametrize("w2", list(HAND6))
def test_relu6_upper_clip_passes_as_autograd(kind: str, w2: tuple[float, ...]) -> None:
    net = _two_layer(RELU6[kind](), [0.0, -1.0, 3.0], [list(w2), [1.0, 1.0, 1.0]])
    x = _x()
    with torch.no_grad():
        assert net[:2](x).flatten().tolist() == [-1.0, 4.0, 8.0]  # one value above 6
    for method, expected in HAND6[w2].items():
        if any(expected):
            got = cnnlens.explain(net, x, method, target=0).attribution
        else:  # an all-zero result is right here, and says so
            with pytest.warns(cnnlens.ZeroAttributionWarning):
                got = cnnlens.explain(net, x, method, target=0).attribution
        assert got.flatten().tolist() == expected, method
    # the true gradient through ReLU6 is autograd's
    xr = x.clone().requires_grad_()
    (auto,) = torch.autograd.grad(net(xr)[0, 0], xr)
    assert auto.flatten().tolist() == HAND6[w2]["saliency"]


def test_rules_elementwise() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 3.0, 4.0])
    g = torch.tensor([1.0, -1.0, 2.0, -3.0, 5.0, 0.0])
    assert GuidedRule().backward(x, g).tolist() == [0.0, 0.0, 0.0, 0.0, 5.0, 0.0]
    assert DeconvnetRule().backward(x, g).tolist() == [1.0, 0.0, 2.0, 0.0, 5.0, 0.0]
    # the rules must not write into the incoming gradient
    assert g.tolist() == [1.0, -1.0, 2.0, -3.0, 5.0, 0.0]


def test_default_rule_is_the_true_gradient() -> None:
    # The base RectifierRule (which gets the rectifier's input, computed out of place)
    # reproduces autograd through every ReLU of a ResNet.
    model = resnet18(weights=None).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(model(x)[0, 5], x)
    mode = RectifierMode(RectifierRule())
    with mode:
        out = model(x)
    (got,) = torch.autograd.grad(out[0, 5], x)
    assert mode.calls == 17
    torch.testing.assert_close(got, auto, rtol=1e-12, atol=1e-14)


def test_shared_module_called_twice() -> None:
    # One ReLU instance used at two places: each call must use its own forward mask.
    relu = nn.ReLU(inplace=True)
    lin1, lin2 = nn.Linear(4, 4).double(), nn.Linear(4, 4).double()
    head = nn.Linear(4, 3).double()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin1, self.lin2, self.relu, self.head = lin1, lin2, relu, head

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.relu(self.lin2(self.relu(self.lin1(x.flatten(1))))))

    x = torch.randn(2, 4, 1, 1, dtype=torch.float64)
    with pytest.warns(cnnlens.ZeroAttributionWarning, match=r"items \[1\]"):  # right by hand
        got = cnnlens.explain(Net(), x, "guided_backprop", target=[0, 2]).attribution.flatten(1)

    # by hand: explicit matrix products with the guided rule at each call
    h1 = x.flatten(1) @ lin1.weight.T + lin1.bias
    h2 = h1.clamp(min=0) @ lin2.weight.T + lin2.bias
    for i, c in enumerate([0, 2]):
        g2 = head.weight[c] * ((h2[i] > 0) & (head.weight[c] > 0))
        g1 = g2 @ lin2.weight
        g1 = g1 * ((h1[i] > 0) & (g1 > 0))
        torch.testing.assert_close(got[i], g1 @ lin1.weight, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------
# Real architectures. References use another mechanism: module-level backward hooks on
# a copy in which every ReLU call has its own (non in-place) module.
# --------------------------------------------------------------------------------------


class _GuidedHook:
    """Classic guided backprop by a full backward hook on an nn.ReLU: the true ReLU
    gradient, then only positive values."""

    def __call__(
        self, module: nn.Module, grad_input: tuple[Tensor, ...], grad_output: tuple[Tensor, ...]
    ) -> tuple[Tensor, ...]:
        del module, grad_output
        return (grad_input[0].clamp(min=0),)


class _BasicDistinct(nn.Module):
    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.block = block
        block.relu = nn.Identity()  # the shared module is no longer called
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = self.relu1(b.bn1(b.conv1(x)))
        out = b.bn2(b.conv2(out))
        return self.relu2(out + identity)


class _BottleneckDistinct(nn.Module):
    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.block = block
        block.relu = nn.Identity()  # the shared module is no longer called
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = self.relu1(b.bn1(b.conv1(x)))
        out = self.relu2(b.bn2(b.conv2(out)))
        out = b.bn3(b.conv3(out))
        return self.relu3(out + identity)


def _distinct_relu_copy(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet in which every ReLU call has its own module."""
    copied = copy.deepcopy(model)
    copied.relu = nn.ReLU()
    for stage in (copied.layer1, copied.layer2, copied.layer3, copied.layer4):
        for i, block in enumerate(stage):
            stage[i] = (
                _BottleneckDistinct(block)
                if isinstance(block, Bottleneck)
                else _BasicDistinct(block)
            )
    return copied


def _hook_reference(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """Guided backprop by backward hooks on every nn.ReLU of ``model``."""
    model = model.eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for m in relus:
        assert not m.inplace
    handles = [m.register_full_backward_hook(_GuidedHook()) for m in relus]
    try:
        xr = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(xr)[:, target].sum(), xr)
    finally:
        for h in handles:
            h.remove()
    return grad


def _calls_per_module(model: nn.Module, x: Tensor) -> list[int]:
    """How many times each nn.ReLU module of ``model`` is called in one forward pass."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    calls = dict.fromkeys(relus, 0)

    def count(module: nn.Module, *_: object) -> None:
        calls[module] += 1

    handles = [m.register_forward_hook(count) for m in relus]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return list(calls.values())


def _count_calls(model: nn.Module, x: Tensor) -> tuple[int, int]:
    """(rectifier calls intercepted by RectifierMode, nn.ReLU module calls) in one forward."""
    calls = [0]

    def count(*_: object) -> None:
        calls[0] += 1

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        mode = RectifierMode(GuidedRule())
        with torch.no_grad(), mode:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return mode.calls, calls[0]


@pytest.mark.parametrize(
    ("factory", "relu_calls"),
    [(resnet18, 1 + 8 * 2), (resnet50, 1 + 16 * 3)],
)
def test_resnet_shared_relu_equals_distinct_module_copy(
    factory: Callable[..., nn.Module], relu_calls: int, untouched: type
) -> None:
    model = factory(weights=None).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    snap = untouched.take(model, x)
    intercepted, module_calls = _count_calls(model, x)
    assert intercepted == module_calls == relu_calls
    target = 7
    got = cnnlens.explain(model, x, "guided_backprop", target=target).attribution
    snap.assert_same(model, x)

    distinct = _distinct_relu_copy(model)
    per_module = _calls_per_module(distinct, x)
    assert len(per_module) == relu_calls and set(per_module) == {1}
    reference = _hook_reference(distinct, x, target)
    torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-13)
    # and it is not the plain gradient
    plain = cnnlens.explain(model, x, "saliency", target=target).attribution
    assert not torch.allclose(got, plain, rtol=1e-3, atol=1e-6 * float(plain.abs().max()))
    assert (got != plain).float().mean() > 0.5


def test_densenet_functional_relu_is_guided(
    monkeypatch: pytest.MonkeyPatch, untouched: type
) -> None:
    model = densenet121(weights=None).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    snap = untouched.take(model, x)
    target = 3

    # every call is intercepted: all nn.ReLU module calls plus DenseNet's final F.relu
    intercepted, module_calls = _count_calls(model, x)
    assert module_calls == 1 + 58 * 2 + 3
    assert intercepted == module_calls + 1

    got = cnnlens.explain(model, x, "guided_backprop", target=target).attribution
    snap.assert_same(model, x)

    # reference: a copy with non in-place ReLU modules carrying guided backward hooks, and
    # torchvision's functional F.relu swapped (in densenet's namespace) for a guided one
    reference_model = copy.deepcopy(model)
    for module in list(reference_model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.ReLU())
    modules_only = _hook_reference(reference_model, x, target)

    class _GuidedReluFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx: torch.autograd.function.FunctionCtx, t: Tensor) -> Tensor:
            ctx.save_for_backward(t)
            return t.clamp(min=0)

        @staticmethod
        def backward(ctx: torch.autograd.function.FunctionCtx, g: Tensor) -> Tensor:
            (t,) = ctx.saved_tensors  # type: ignore[attr-defined]
            return g.clamp(min=0) * (t > 0).to(g.dtype)

    def guided_relu(t: Tensor, inplace: bool = False) -> Tensor:
        del inplace
        out: Tensor = _GuidedReluFn.apply(t)
        return out

    patched_f = types.SimpleNamespace(**{**vars(F), "relu": guided_relu})
    monkeypatch.setattr(tv_densenet, "F", patched_f)
    reference = _hook_reference(reference_model, x, target)
    monkeypatch.undo()

    torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-13)
    # the functional ReLU matters: guiding only the modules gives another result
    assert not torch.allclose(got, modules_only, rtol=1e-3, atol=0.0)
    plain = cnnlens.explain(model, x, "saliency", target=target).attribution
    assert not torch.allclose(got, plain, rtol=1e-3, atol=0.0)


def test_no_rectifier_warns() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2), nn.Dropout(), nn.Linear(2, 2)).double()
    x = _x()
    with pytest.warns(UserWarning, match="no rectifier or activation call"):
        got = cnnlens.explain(net, x, "guided_backprop", target=1).attribution
    plain = cnnlens.explain(net, x, "saliency", target=1).attribution
    torch.testing.assert_close(got, plain)


class _Boom(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", ["deconvnet", "guided_backprop"])
def test_error_inside_forward_leaves_nothing(method: str, untouched: type) -> None:
    net = _two_layer(nn.ReLU(inplace=True), [0.0, -1.0, 0.0], W2)
    snap = untouched.take(net, _x())
    failing = nn.Sequential(*net, _Boom())
    with pytest.raises(RuntimeError, match="boom"):
        cnnlens.explain(failing, _x(), method, target=0)
    snap.assert_same(net, _x())
    assert torch.overrides._get_current_function_mode_stack() == []
    # rectifiers behave normally again
    got = cnnlens.explain(net, _x(), "saliency", target=0).attribution
    assert got.flatten().tolist() == HAND["saliency"]


def test_efficientnet_lite0_relu6_guided(untouched: type) -> None:
    # The default model: 33 ReLU6 modules. Reference: classic guided backprop by full
    # backward hooks on each (autograd's ReLU6 gradient g·[0 < x < 6], then only positive
    # values): the upper clip passes the gradient as autograd does, the lower is guided.
    loaded = cnnlens.load_model("efficientnet_lite0")
    model = loaded.module.double()
    x = loaded.preprocess(cnnlens.sample_image("cat").resize((112, 112))).double()
    x = F.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False)
    snap = untouched.take(model, x)
    relu6 = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
    assert len(relu6) == 33 and all(not m.inplace for m in relu6)

    above_six = [0]

    def count_above(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        above_six[0] += int((inputs[0] > 6).sum())

    counting = [m.register_forward_pre_hook(count_above) for m in relu6]
    try:
        mode = RectifierMode(GuidedRule())
        with torch.no_grad(), mode:
            model(x)
    finally:
        for h in counting:
            h.remove()
    assert mode.calls == 33
    assert above_six[0] > 100  # the upper clip is exercised

    target = 281
    got = cnnlens.explain(model, x, "guided_backprop", target=target).attribution
    snap.assert_same(model, x)
    handles = [m.register_full_backward_hook(_GuidedHook()) for m in relu6]
    try:
        xr = x.clone().requires_grad_()
        (reference,) = torch.autograd.grad(model(xr)[0, target], xr)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, reference, rtol=1e-10, atol=1e-13)
    plain = cnnlens.explain(model, x, "saliency", target=target).attribution
    assert not torch.allclose(got, plain, rtol=1e-3, atol=0.0)
