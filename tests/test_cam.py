"""CAM, Grad-CAM and variants: exact identities, hand-computed values, agreement with the
formula on separately captured tensors, batches, targets, an untouched model, the cat photo,
and the CAM conversion (cam_model) on VGG16 with a real dataset."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError, explain
from cnnlens.attribution.cam import CamModel

from .peers import peer

GRADIENT_CAMS = ("gradcam", "gradcam_pp", "layercam")


# ---------------------------------------------------------------------------------------
# helpers


def captured(
    model: nn.Module, x: Tensor, layer: nn.Module, classes: list[int], *, call: int = -1
) -> tuple[Tensor, Tensor]:
    """Activation and gradient of the summed class scores at ``layer`` (its ``call``-th
    call), captured with the test's own hooks on a forward pass from an input that
    requires grad — independent of cnnlens's machinery."""
    outputs: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out.retain_grad()
        outputs.append(out)
        return out

    handle = layer.register_forward_hook(hook)
    try:
        logits = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    act = outputs[call]
    logits[torch.arange(len(classes)), torch.tensor(classes)].sum().backward()
    assert act.grad is not None
    for p in model.parameters():
        p.grad = None
    return act.detach(), act.grad.detach()


def gradcam_formula(act: Tensor, grad: Tensor) -> Tensor:
    return F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1))


class Tiny(nn.Module):
    """A = conv(x) with channel weights (2, -1); y0 = Σ A0²/2 + Σ A1, y1 = Σ A0·A1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv(x)
        y0 = (a[:, 0] ** 2).sum(dim=(1, 2)) / 2 + a[:, 1].sum(dim=(1, 2))
        y1 = (a[:, 0] * a[:, 1]).sum(dim=(1, 2))
        return torch.stack([y0, y1], dim=1)


TINY_X = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64).view(1, 1, 2, 2)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def vgg16() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


@pytest.fixture(scope="module")
def lite0() -> cnnlens.LoadedModel:
    return cnnlens.load_model("efficientnet_lite0")


# ---------------------------------------------------------------------------------------
# CAM (Zhou et al. 2016)


@pytest.mark.parametrize(
    ("arch", "layer"),
    [("resnet18", "layer4"), ("densenet121", None), ("efficientnet_b0", None)],
)
def test_cam_mean_plus_bias_is_the_logit(arch: str, layer: str | None) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    e = explain(model, x, "cam", layer=layer, target=[3, 917])
    with torch.no_grad():
        logits = model(x)
    fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert e.attribution.shape == (2, 2, 2)
    expected = logits[[0, 1], [3, 917]]
    got = e.attribution.mean(dim=(1, 2)) + fc.bias[[3, 917]]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # signed (no rectifier): DenseNet's F.relu map times signed weights has both signs
    assert e.kind == "cam" and bool((e.attribution < 0).any())


def test_cam_on_efficientnet_lite0_mean_plus_bias_is_the_logit(
    lite0: cnnlens.LoadedModel,
) -> None:
    model = lite0.module.double()
    try:
        x = torch.randn(1, 3, 96, 96, dtype=torch.float64)
        e = explain(model, x, "cam")
        with torch.no_grad():
            logits = model(x)
        c = int(logits.argmax())
        assert e.targets is not None and int(e.targets[0]) == c
        fc = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        torch.testing.assert_close(
            e.attribution.mean(dim=(1, 2)) + fc.bias[c], logits[:, c], rtol=1e-12, atol=1e-12
        )
    finally:
        model.float()


def test_cam_is_gradcam_times_positions_on_a_gap_head(resnet: nn.Module) -> None:
    # With GAP + linear, ∂y/∂A_k(x, y) = w_k / (h w): Grad-CAM = ReLU(CAM) / (h w).
    model = resnet.double()
    try:
        x = torch.randn(1, 3, 96, 96, dtype=torch.float64)
        cam = explain(model, x, "cam", target=5).attribution
        grad = explain(model, x, "gradcam", target=5).attribution
        torch.testing.assert_close(grad, F.relu(cam) / cam[0].numel(), rtol=1e-10, atol=1e-12)
    finally:
        model.float()


@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_cam_without_gap_head_points_to_cam_model(arch: str, vgg16: nn.Module) -> None:
    model = vgg16 if arch == "vgg16" else torchvision.models.alexnet(weights=None).eval()
    with pytest.raises(InputError, match=r"cam_model") as info:
        explain(model, torch.randn(1, 3, 64, 64), "cam")
    assert "\n" not in str(info.value)


def test_cam_on_a_layer_that_is_not_pooled_raises(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match="global average"):
        explain(resnet, torch.randn(1, 3, 64, 64), "cam", layer="layer3")


class _ShiftedHead(nn.Module):
    """GAP + linear on a small feature extractor, then one output changed: the model's
    output for ``shifted`` is not the linear layer's, every other output is."""

    def __init__(self, shifted: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 100)
        self.shifted = shifted

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.features(x).mean(dim=(2, 3)))
        bump = torch.zeros_like(out)
        bump[:, self.shifted] = 1.0
        return out + bump


def test_cam_checks_the_head_on_the_target_outputs() -> None:
    # The head check compares the target classes' outputs and a spread of others (not the
    # whole classifier again). Output 37 is not among the spread of 32 over 100.
    model = _ShiftedHead(37).eval()
    x = torch.randn(2, 3, 12, 12)
    with pytest.raises(InputError, match="global average"):
        explain(model, x, "cam", layer="features", target=37)
    with pytest.raises(InputError, match="global average"):
        explain(model, x, "cam", layer="features", target=[5, 37])
    # for another class the output is the linear layer's: CAM is its exact decomposition
    cam = explain(model, x, "cam", layer="features", target=5).attribution
    logits = model(x)[:, 5]
    torch.testing.assert_close(cam.mean(dim=(1, 2)) + model.fc.bias[5], logits.detach())
    # a shift on one of the spread outputs is caught whatever the target
    with pytest.raises(InputError, match="global average"):
        explain(_ShiftedHead(0).eval(), x, "cam", layer="features", target=5)


def test_cam_refuses_callable_targets(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match="gradcam"):
        explain(resnet, torch.randn(1, 3, 64, 64), "cam", target=lambda out: out[:, 0])


# ---------------------------------------------------------------------------------------
# Grad-CAM and its variants: hand-computed values


def test_gradcam_hand_computed() -> None:
    model = Tiny().double()
    # class 0: α = (mean A0, 1) = (2.5, 1) -> ReLU(2.5 A0 + A1) = [[4, 8], [12, 0]]
    # class 1: α = (mean A1, mean A0) = (-1.25, 2.5) -> [[0, 0], [0, 5]]
    e0 = explain(model, TINY_X, "gradcam", target=0, layer="conv")
    e1 = explain(model, TINY_X, "gradcam", target=1, layer="conv")
    torch.testing.assert_close(e0.attribution[0], torch.tensor([[4.0, 8.0], [12.0, 0.0]]).double())
    torch.testing.assert_close(e1.attribution[0], torch.tensor([[0.0, 0.0], [0.0, 5.0]]).double())


def test_layercam_hand_computed() -> None:
    # class 0: ReLU(g0) A0 + ReLU(g1) A1 = [[2,4],[6,0]]·A0 + A1 = [[3, 14], [33, 1]]
    e = explain(Tiny().double(), TINY_X, "layercam", target=0, layer="conv")
    torch.testing.assert_close(e.attribution[0], torch.tensor([[3.0, 14.0], [33.0, 1.0]]).double())


def test_gradcam_pp_hand_computed() -> None:
    # channel 0: g = A0 = (2, 4, 6, -2), Σ A0 = 10, α = 1 / (2 + 10 g), w0 = Σ α ReLU(g)
    # channel 1: g = 1, Σ A1 = -5, α = 1 / (2 - 5) = -1/3 everywhere, w1 = -4/3
    w0 = 2 / 22 + 4 / 42 + 6 / 62
    w1 = -4 / 3
    a0 = torch.tensor([[2.0, 4.0], [6.0, -2.0]]).double()
    a1 = torch.tensor([[-1.0, -2.0], [-3.0, 1.0]]).double()
    e = explain(Tiny().double(), TINY_X, "gradcam_pp", target=0, layer="conv")
    torch.testing.assert_close(e.attribution[0], F.relu(w0 * a0 + w1 * a1))


def test_gradcam_pp_and_layercam_agree_with_pytorch_grad_cam(resnet: nn.Module) -> None:
    """Their map for the same activations and gradients (captured here), before their
    min-max scaling and resizing. Scores are scaled by 1000 so that their ε = 1e-6 in
    Grad-CAM++'s denominator is negligible against the squared gradients."""
    pgc = peer("pytorch_grad_cam")
    x = torch.randn(2, 3, 64, 64)
    acts, grads = captured(resnet, x, resnet.layer3, [1, 2])
    grads = grads * 1000

    def score(out: Tensor) -> Tensor:
        return 1000 * out[[0, 1], [1, 2]]

    for method, cls in (("gradcam_pp", pgc.GradCAMPlusPlus), ("layercam", pgc.LayerCAM)):
        ours = explain(resnet, x, method, target=score, layer="layer3").attribution
        theirs = cls(model=resnet, target_layers=[resnet.layer3])
        try:
            raw = theirs.get_cam_image(x, resnet.layer3, None, acts.numpy(), grads.numpy(), False)
        finally:
            theirs.activations_and_grads.release()
        expected = F.relu(torch.as_tensor(raw, dtype=acts.dtype))
        torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4 * float(expected.max()))


# ---------------------------------------------------------------------------------------
# Grad-CAM on real architectures


def test_gradcam_on_vgg16_is_the_formula_on_captured_tensors(vgg16: nn.Module) -> None:
    model = vgg16
    x = torch.randn(2, 3, 64, 64)
    layer = model.features[29]
    act, grad = captured(model, x, layer, [7, 400])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", cnnlens.ZeroAttributionWarning)
        e = explain(model, x, "gradcam", target=[7, 400], layer="features.29")
    assert e.layer == "features.29" and e.attribution.shape == (2, 4, 4)
    # On this random VGG16 the ReLU removes item 1's whole map: said, not silent.
    zero = [i for i in range(2) if not bool(e.attribution[i].any())]
    assert len(caught) == (1 if zero else 0)
    if zero:
        assert "identically zero" in str(caught[0].message)
    torch.testing.assert_close(e.attribution, gradcam_formula(act, grad), rtol=1e-4, atol=1e-7)
    assert float(e.attribution.amax()) > 0
    heat = e.heatmap()
    assert heat.shape == (2, 64, 64) and float(heat.amin()) >= 0 and float(heat.amax()) == 1.0


def test_default_layer_is_the_last_feature_map(resnet: nn.Module) -> None:
    e = explain(resnet, torch.randn(1, 3, 64, 64), "gradcam")
    assert e.layer == "layer4"


def test_shared_layer_uses_its_last_call() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            return self.fc(x.mean(dim=(2, 3)))

    model = Shared().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    act, grad = captured(model, x, model.relu, [0, 2], call=-1)
    first, _ = captured(model, x, model.relu, [0, 2], call=0)
    e = explain(model, x, "gradcam", target=[0, 2], layer="relu")
    torch.testing.assert_close(e.attribution, gradcam_formula(act, grad))
    assert not torch.allclose(first, act)
    cam = explain(model, x, "cam", target=[0, 2], layer="relu")  # the head averages call 2
    torch.testing.assert_close(
        cam.attribution.mean(dim=(1, 2)) + model.fc.bias[[0, 2]],
        model(x)[[0, 1], [0, 2]].detach(),
    )


def test_backward_stops_at_the_layer() -> None:
    calls = {"backward": 0}

    class Count(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Tensor) -> Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: Any, g: Tensor) -> Tensor:
            calls["backward"] += 1
            return g

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3)
            self.conv2 = nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            x = Count.apply(torch.relu(self.conv1(x)))
            return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))

    model = Net().eval()
    x = torch.randn(2, 3, 10, 10)
    for method in GRADIENT_CAMS:
        explain(model, x, method, layer="conv2")
    assert calls["backward"] == 0
    # guided Grad-CAM does need the input gradient (guided backpropagation)
    explain(model, x, "guided_gradcam", layer="conv2")
    assert calls["backward"] == 1


@pytest.mark.parametrize("method", [*GRADIENT_CAMS, "cam"])  # scorecam: see its own test
def test_batch_with_per_item_targets_is_each_item_alone(resnet: nn.Module, method: str) -> None:
    x = torch.randn(3, 3, 64, 64)
    together = explain(resnet, x, method, target=[1, 500, 999])
    assert together.targets is not None and together.targets.tolist() == [1, 500, 999]
    for i, c in enumerate([1, 500, 999]):
        alone = explain(resnet, x[i : i + 1], method, target=c)
        torch.testing.assert_close(
            together.attribution[i], alone.attribution[0], rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("method", ["cam", "gradcam", "scorecam", "guided_gradcam"])
def test_wrong_length_targets_raise(resnet: nn.Module, method: str) -> None:
    with pytest.raises(InputError, match="entries"):
        explain(resnet, torch.randn(3, 3, 32, 32), method, target=[1, 2])


def test_callable_target_with_wrong_length_raises(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match="scores"):
        explain(resnet, torch.randn(3, 3, 32, 32), "gradcam", target=lambda out: out[:2, 0])


@pytest.mark.parametrize("method", ["cam", *GRADIENT_CAMS, "scorecam", "guided_gradcam"])
def test_model_is_untouched(untouched: Any, method: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    model.train()  # explain must use eval mode and give the flags back
    model.layer1[0].bn1.eval()
    model.fc.weight.requires_grad_(False)
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    x = torch.randn(2, 3, 32, 32)
    snap = untouched.take(model)
    options: dict[str, Any] = {"progress": False, "batch_size": 256} if method == "scorecam" else {}
    layer = "layer3" if method == "scorecam" else None
    explain(model, x, method, layer=layer, **options)
    snap.assert_same(model)
    with pytest.raises(InputError):  # also after an error
        explain(model, x, method, layer="fc")
    snap.assert_same(model)
    model.eval()
    snap = untouched.take(model, x)
    explain(model, x, method, layer=layer, **options)
    snap.assert_same(model, x)


def test_layer_with_a_non_map_output_raises(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match="feature map"):
        explain(resnet, torch.randn(1, 3, 32, 32), "gradcam", layer="fc")
    with pytest.raises(InputError, match="closest"):
        explain(resnet, torch.randn(1, 3, 32, 32), "gradcam", layer="layer44")


# ---------------------------------------------------------------------------------------
# Guided Grad-CAM and Score-CAM


def _silu_net() -> nn.Module:
    """Rectifiers and other activations above and below the layer (Guided Grad-CAM's one
    forward pass must give Grad-CAM the true gradient through both kinds)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


@pytest.mark.parametrize("net", ["resnet", "silu"])
def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(
    resnet: nn.Module, net: str
) -> None:
    model, layer, size = (resnet, "layer3", 64) if net == "resnet" else (_silu_net(), "2", 16)
    x = torch.randn(2, 3, size, size)
    e = explain(model, x, "guided_gradcam", layer=layer)
    assert e.kind == "input" and e.attribution.shape == x.shape
    assert e.targets is not None
    targets = e.targets.tolist()
    guided = explain(model, x, "guided_backprop", target=targets).attribution
    cam = explain(model, x, "gradcam", target=targets, layer=layer).attribution
    upsampled = F.interpolate(cam[:, None], size=(size, size), mode="bilinear", align_corners=False)
    # relative only: the small net's maps are small
    torch.testing.assert_close(e.attribution, guided * upsampled, rtol=1e-5, atol=0.0)
    assert float(e.attribution.abs().amax()) > 0


def scorecam_slow(model: nn.Module, x: Tensor, layer: nn.Module, c: int) -> Tensor:
    """Score-CAM for one item, one channel at a time, straight from the definition."""
    (act,), _ = captured(model, x, layer, [c])[0], None
    scores = []
    with torch.no_grad():
        for k in range(act.shape[0]):
            up = F.interpolate(act[None, k : k + 1], size=x.shape[-2:], mode="bilinear")
            lo, hi = up.min(), up.max()
            mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
            scores.append(model(x * mask)[0, c])
    w = torch.softmax(torch.stack(scores), dim=0)
    return F.relu((w[:, None, None] * act).sum(dim=0))


def _scorecam_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    ).double()


def test_scorecam_is_the_definition_and_bounded_by_batch_size() -> None:
    torch.manual_seed(0)
    model = _scorecam_model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    seen: list[int] = []
    handle = model[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        e = explain(model, x, "scorecam", target=[1, 3], layer="3", batch_size=2, progress=False)
    finally:
        handle.remove()
    assert max(seen[1:]) <= 2  # after the first (capture) pass, masks go 2 at a time
    for i, c in enumerate([1, 3]):
        torch.testing.assert_close(
            e.attribution[i], scorecam_slow(model, x[i : i + 1], model[3], c)
        )
    again = explain(model, x, "scorecam", target=[1, 3], layer="3", batch_size=7, progress=False)
    torch.testing.assert_close(again.attribution, e.attribution)
    with pytest.raises(InputError, match="batch_size"):
        explain(model, x, "scorecam", layer="3", batch_size=0)


def test_scorecam_runs_the_blank_input_once_per_item_for_dead_channels() -> None:
    """Channels that are zero everywhere (after a ReLU) make all-zero masks: one forward of
    the blanked item stands for all of them, and the result is still the definition."""
    torch.manual_seed(1)
    model = _scorecam_model()
    with torch.no_grad():
        model[2].bias[[0, 2]] = -1e3  # channels 0 and 2 of layer 3 are dead
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    seen: list[int] = []
    handle = model[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        e = explain(model, x, "scorecam", target=[1, 3], layer="3", batch_size=4, progress=False)
    finally:
        handle.remove()
    # the capture pass (2 items), then 2 x 3 masks in batches of 4, then one blank per item
    assert seen == [2, 4, 2, 2]
    for i, c in enumerate([1, 3]):
        torch.testing.assert_close(
            e.attribution[i], scorecam_slow(model, x[i : i + 1], model[3], c)
        )


# ---------------------------------------------------------------------------------------
# The cat photo


def test_gradcam_maximum_is_on_the_cat(lite0: cnnlens.LoadedModel) -> None:
    """The cat photo's crop (the whole crop is cat: the face fills it) beside the coffee
    photo's crop, input 224×448. Cat boxes (top, left, bottom, right): the cat crop is
    (0, 0, 224, 224); the cup in the coffee crop was read off the rendered picture as
    (0, 250, 215, 420). Explaining 'tiger cat' must peak on the cat, 'espresso' on the cup."""
    cat = lite0.preprocess(cnnlens.sample_image("cat"))
    coffee = lite0.preprocess(cnnlens.sample_image("coffee"))
    x = torch.cat([cat, coffee], dim=3)
    boxes = {282: (0, 0, 224, 224), 967: (0, 250, 215, 420)}
    assert lite0.labels[282] == "tiger cat" and lite0.labels[967] == "espresso"
    for method in ("gradcam", "cam"):
        for c, (top, left, bottom, right) in boxes.items():
            heat = explain(lite0, x, method, target=c).heatmap()[0]
            y, x_ = divmod(int(heat.argmax()), heat.shape[1])
            assert top <= y < bottom and left <= x_ < right, (method, c, y, x_)
    # the cat photo alone: its top class is a cat, and the map is not flat
    e = explain(lite0, cat, "gradcam")
    assert e.targets is not None and "cat" in lite0.labels[int(e.targets[0])]
    assert float(e.attribution.std()) > 0


# ---------------------------------------------------------------------------------------
# cam_model: the conversion, shown on VGG16 with scikit-learn's digits


def digits(size: int = 32) -> tuple[Tensor, Tensor]:
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images.expand(-1, 3, -1, -1) - 0.5) / 0.25
    return images.contiguous(), torch.tensor(data.target, dtype=torch.long)


@pytest.fixture(scope="module")
def vgg_cam(vgg16: nn.Module) -> tuple[CamModel, Tensor, Tensor]:
    vgg = vgg16
    images, labels = digits()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:600], order[600:900]
    converted = cnnlens.cam_model(vgg, "features.22", 10, input_size=(32, 32))
    before = {k: v.clone() for k, v in vgg.state_dict().items()}
    converted.fit((images[train], labels[train]), epochs=60, lr=0.01, seed=0, progress=False)
    for k, v in vgg.state_dict().items():
        assert torch.equal(v, before[k]), f"fit changed the backbone's {k}"
    return converted, images[test], labels[test]


def test_cam_model_fits_vgg16_on_digits(vgg_cam: tuple[CamModel, Tensor, Tensor]) -> None:
    converted, images, labels = vgg_cam
    assert converted.history[-1] < converted.history[0]
    accuracy = converted.accuracy((images, labels))
    assert accuracy > 0.8, accuracy  # 10 classes: chance is 0.1


def test_cam_works_on_the_converted_vgg16(vgg_cam: tuple[CamModel, Tensor, Tensor]) -> None:
    converted, images, _ = vgg_cam
    x = images[:4]
    e = explain(converted, x, "cam")
    assert e.layer == "backbone.features.22"  # the default layer is the chosen one
    assert e.attribution.shape == (4, 4, 4)
    converted.double()
    try:
        x64 = x.double()
        e = explain(converted, x64, "cam", target=[0, 3, 5, 9])
        with torch.no_grad():
            logits = converted(x64)
        torch.testing.assert_close(
            e.attribution.mean(dim=(1, 2)) + converted.head.bias[[0, 3, 5, 9]],
            logits[[0, 1, 2, 3], [0, 3, 5, 9]],
            rtol=1e-12,
            atol=1e-12,
        )
    finally:
        converted.float()


def test_cam_model_head_round_trip(
    tmp_path: Path, vgg_cam: tuple[CamModel, Tensor, Tensor]
) -> None:
    converted, images, _ = vgg_cam
    converted.save_head(tmp_path / "head.pt", classes=[str(i) for i in range(10)])
    fresh = cnnlens.cam_model(converted.backbone, "features.22", 10, input_size=(32, 32))
    fresh.load_head(tmp_path / "head.pt")
    with torch.no_grad():
        torch.testing.assert_close(fresh(images[:2]), converted(images[:2]))
    other = cnnlens.cam_model(converted.backbone, "features.15", 10, input_size=(32, 32))
    with pytest.raises(InputError, match=r"features\.22"):
        other.load_head(tmp_path / "head.pt")


def test_cam_model_rejects_bad_arguments(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match="closest"):
        cnnlens.cam_model(resnet, "layer9", 3, input_size=(32, 32))
    with pytest.raises(InputError, match="num_classes"):
        cnnlens.cam_model(resnet, "layer3", 0, input_size=(32, 32))
    with pytest.raises(InputError, match="feature map"):
        cnnlens.cam_model(resnet, "fc", 3, input_size=(32, 32))
    converted = cnnlens.cam_model(resnet, "layer2", 3, input_size=(32, 32))
    with pytest.raises(InputError, match="labels"):
        converted.fit((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])), progress=False)


# ---------------------------------------------------------------------------------------
# CLI


def test_cli_cam_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from cnnlens.cli import main

    images, labels = digits(size=32)
    pixels = ((images[:, 0] * 0.25 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    for digit in (0, 1, 7):
        (tmp_path / "data" / f"d{digit}").mkdir(parents=True)
        for n, i in enumerate((labels == digit).nonzero().flatten()[:6].tolist()):
            Image.fromarray(pixels[i].numpy()).convert("RGB").save(
                tmp_path / "data" / f"d{digit}" / f"{n}.png"
            )
    out = tmp_path / "head.pt"
    argv = ["cam-fit", str(tmp_path / "data"), "--model", "resnet18", "--random-weights"]
    code = main([*argv, "--layer", "layer2", "-o", str(out), "--epochs", "20"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "layer layer2: 128 channels -> 3 classes; 14 training images" in printed
    saved = torch.load(out, weights_only=True)
    assert saved["classes"] == ["d0", "d1", "d7"] and saved["layer"] == "layer2"
    converted = cnnlens.cam_model(
        cnnlens.load_model("resnet18", pretrained=False), "layer2", 3
    ).load_head(out)
    assert converted.head.weight.shape == (3, 128)
    # bad input: exit code 2 and one line
    (tmp_path / "flat").mkdir()
    assert main([*argv[:1], str(tmp_path / "flat"), *argv[2:], "-o", str(out)]) == 2
    assert main([*argv, "--layer", "layer9", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sub-folder" in err and "closest" in err


def test_scorecam_masks_ignore_rounding_noise() -> None:
    """A channel constant up to rounding gives no mask (it would scale rounding noise up to
    [0, 1]), so an item explained alone equals the same item in a batch even where the
    batch changes the last bits of the activations (found on ConvNeXt by the matrix)."""
    from cnnlens.attribution.cam import _unit_range

    flat = torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64)
    noisy = flat.clone()
    noisy[0, 0, 0, 0] += 4e-16  # one ulp-level difference
    assert torch.equal(_unit_range(noisy), torch.zeros_like(noisy))
    assert torch.equal(_unit_range(flat), torch.zeros_like(flat))
    varying = flat.clone()
    varying[0, 0, 0, 0] += 1e-6
    ranged = _unit_range(varying)
    assert float(ranged.max()) == 1.0 and float(ranged.min()) == 0.0
