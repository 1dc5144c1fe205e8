"""The hook engine: Recorder, RectifierMode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from cnnlens._guard import guard
from cnnlens._hooks import (
    Recorder,
    RectifierMode,
    RectifierRule,
    count_hooks,
)


@pytest.fixture
def resnet() -> nn.Module:
    return torchvision.models.resnet18(weights=None).double().eval()


@pytest.fixture
def image() -> Tensor:
    return torch.randn(2, 3, 32, 32, dtype=torch.float64)


def no_hooks_anywhere(model: nn.Module) -> bool:
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            if getattr(m, attr):
                return False
    return all(not p._backward_hooks for p in model.parameters()) and count_hooks(model) == 0


def tail(model: nn.Module, h: Tensor) -> Tensor:
    """ResNet-18 from the output of layer2 on."""
    h = model.layer4(model.layer3(h))
    return model.fc(torch.flatten(model.avgpool(h), 1))


# --------------------------------------------------------------------------- Recorder


def test_records_every_call_of_a_shared_module(resnet: nn.Module, image: Tensor) -> None:
    block = resnet.layer1[0]
    with torch.no_grad(), Recorder([block.relu, resnet.relu, block.bn1]) as rec:
        resnet(image)
    assert len(rec.records[block.relu]) == 2
    assert len(rec.records[resnet.relu]) == 1
    with torch.no_grad():
        stem = resnet.maxpool(F.relu(resnet.bn1(resnet.conv1(image))))
        pre1 = block.bn1(block.conv1(stem))
        first = F.relu(pre1)
        second = F.relu(block.bn2(block.conv2(first)) + stem)
    torch.testing.assert_close(rec.records[block.relu][0], first)
    torch.testing.assert_close(rec.records[block.relu][1], second)
    torch.testing.assert_close(rec.last(block.relu), second)
    # bn1's output is rectified in place by ReLU(inplace=True) afterwards: the record keeps
    # the values before the rectifier, negatives included.
    record = rec.records[block.bn1][0]
    assert (record < 0).any()
    torch.testing.assert_close(record, pre1)
    assert no_hooks_anywhere(resnet)


def test_gradient_wrt_record_is_gradient_wrt_layer_output(resnet: nn.Module, image: Tensor) -> None:
    with Recorder([resnet.layer2]) as rec:
        score = resnet(image)[:, 7].sum()
    (grad,) = torch.autograd.grad(score, rec.last(resnet.layer2))
    with torch.no_grad():
        h = resnet.layer2(
            resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(image)))))
        )
    h.requires_grad_(True)
    (expected,) = torch.autograd.grad(tail(resnet, h)[:, 7].sum(), h)
    torch.testing.assert_close(grad, expected)
    assert grad.abs().sum() > 0


def test_gradient_wrt_record_modified_in_place_downstream(resnet: nn.Module, image: Tensor) -> None:
    # torchvision's BasicBlock does `out = bn2(...); out += identity; out = relu(out)` in
    # place: the gradient for bn2's record must be the gradient for bn2's output.
    block = resnet.layer2[1]
    with Recorder([block.bn2]) as rec:
        score = resnet(image)[:, 3].sum()
    (grad,) = torch.autograd.grad(score, rec.last(block.bn2))
    with torch.no_grad():
        x = resnet.layer2[0](
            resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(image)))))
        )
        bn2 = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    bn2.requires_grad_(True)
    out = F.relu(bn2 + x)
    (expected,) = torch.autograd.grad(tail(resnet, out)[:, 3].sum(), bn2)
    torch.testing.assert_close(grad, expected)


def test_detached_records_and_hooks_removed_on_error(resnet: nn.Module, image: Tensor) -> None:
    seen: list[Tensor] = []

    def fail() -> None:
        with Recorder([resnet.layer1], detach=True) as rec:
            resnet(image)
            seen.append(rec.last(resnet.layer1))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail()
    assert not seen[0].requires_grad
    assert no_hooks_anywhere(resnet)
    with Recorder([resnet.fc]) as rec, pytest.raises(RuntimeError, match="not called"):
        rec.last(resnet.fc)
    assert no_hooks_anywhere(resnet)


def test_non_tensor_output_is_a_clear_error() -> None:
    class Pair(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return x, x

    pair = Pair()
    model = nn.Sequential(pair)
    with pytest.raises(TypeError, match="Pair"), Recorder([pair]):
        model(torch.ones(1))
    assert no_hooks_anywhere(model)


def test_model_left_untouched(resnet: nn.Module, image: Tensor, untouched: type) -> None:
    resnet.fc.weight.grad = torch.ones_like(resnet.fc.weight)
    resnet.layer1[0].conv1.weight.requires_grad_(False)
    snap = untouched.take(resnet, image)
    x = image.clone().requires_grad_(True)
    with (
        guard(resnet),
        Recorder([resnet.layer3]) as rec,
        RectifierMode(RectifierRule()),
    ):
        score = resnet(x)[:, 0].sum()
        torch.autograd.grad(score, [x, rec.last(resnet.layer3)])
    snap.assert_same(resnet, image)


# --------------------------------------------------------------------------- RectifierMode


class Counting(RectifierRule):
    """Counts backward calls and multiplies the true gradient by ``factor``."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.calls = 0

    def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
        self.calls += 1
        return super().backward(x, grad_out) * self.factor


class EveryRectifier(nn.Module):
    """A chain through every rectifier form: each one sees the whole signal."""

    def __init__(self) -> None:
        super().__init__()
        self.inplace = nn.ReLU(inplace=True)
        self.plain = nn.ReLU()
        self.six = nn.ReLU6()
        self.lin = nn.Linear(4, 4).double()

    def forward(self, x: Tensor) -> Tensor:
        x = self.inplace(x * 1.0)
        x = self.plain(x)
        x = F.relu(x)
        x = torch.relu(x)
        x = (x * 1.0).relu_()
        x = self.six(x)
        x = F.hardtanh(x, 0.0, 5.0)
        x = F.hardtanh(x, -1.0, 5.0)  # not a rectifier: lower bound below 0
        return self.lin(x)


def test_rectifier_mode_intercepts_every_form() -> None:
    model = EveryRectifier()
    x = torch.rand(3, 4, dtype=torch.float64) + 0.1  # all rectifiers active
    x.requires_grad_(True)
    plain = model(x)
    (true_grad,) = torch.autograd.grad(plain.sum(), x)
    rule = Counting(2.0)
    with RectifierMode(rule) as mode:
        out = model(x)
    assert mode.calls == 7
    torch.testing.assert_close(out, plain)  # forward values unchanged
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert rule.calls == 7
    torch.testing.assert_close(grad, true_grad * 2.0**7)


def test_rectifier_rule_sees_the_input_and_can_block() -> None:
    class Block(RectifierRule):
        def backward(self, x: Tensor, grad_out: Tensor) -> Tensor:
            return torch.zeros_like(grad_out)

    model = EveryRectifier()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    with RectifierMode(Block()):
        out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))
    # The default rule is the true gradient, negative inputs included.
    with RectifierMode(RectifierRule()):
        out = model(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (expected,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_rectifier_mode_ends_with_its_context_even_on_error() -> None:
    mode = RectifierMode(Counting(1.0))

    # (only calls on tensors that depend on the input, i.e. require grad, are intercepted)
    x = torch.ones(2, requires_grad=True)

    def fail() -> None:
        with mode:
            F.relu(x)
            raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        fail()
    F.relu(x)
    torch.relu(x)
    assert mode.calls == 1


def test_rectifier_mode_on_resnet_keeps_outputs(resnet: nn.Module, image: Tensor) -> None:
    with torch.no_grad():
        expected = resnet(image)
        with RectifierMode(RectifierRule()) as mode:
            out = resnet(image)
    torch.testing.assert_close(out, expected)
    assert mode.calls == 1 + 8 * 2  # stem + two per BasicBlock (shared module)
    assert no_hooks_anywhere(resnet)
