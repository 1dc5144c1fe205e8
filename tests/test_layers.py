"""layers() and receptive_field(): values derived by hand, brute-force gradients, errors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens import InputError, receptive_field
from cnnlens.cli import main
from cnnlens.models import LoadedModel, Preprocessing
from cnnlens.models.efficientnet_lite0 import EfficientNetLite0, SamePad2d

# --------------------------------------------------------------------------- helpers


def support_box(model: nn.Module, layer: nn.Module, size: int, y: int, x: int) -> tuple[int, ...]:
    """Bounding box of the input pixels on which unit (y, x) of ``layer`` depends, by the
    gradient of ``model`` itself (float64); call only for models without cancellations."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        inp = torch.rand(1, 3, size, size, dtype=torch.float64, requires_grad=True)
        model(inp)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(captured[-1][0, :, y, x].sum(), inp)
    nonzero = grad[0].abs().sum(0) != 0
    rows = torch.nonzero(nonzero.any(1)).flatten()
    cols = torch.nonzero(nonzero.any(0)).flatten()
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def positive(model: nn.Module) -> nn.Module:
    """Float64, eval, every parameter in [0.5, 1.5]: gradients cannot cancel."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    return model


class Branchy(nn.Module):
    """Two branches of different reach (one TF-SAME padded) joined by a sum and a
    concatenation, average pooling with ceil_mode: no rectifier, positive weights."""

    def __init__(self, dilation: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pad = SamePad2d(5, 2)
        self.wide = nn.Conv2d(4, 4, 5, stride=2)
        self.dilated = nn.Conv2d(4, 4, 3, stride=2, padding=dilation, dilation=dilation)
        self.pool = nn.AvgPool2d(3, stride=2, ceil_mode=True)
        self.head = nn.Conv2d(8, 4, (1, 3), padding=(0, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        a = self.wide(self.pad(h))
        b = self.dilated(h)
        y = torch.cat([a + b, F.avg_pool2d(b, 1)], 1)
        return self.head(self.pool(y))


# --------------------------------------------------------------------------- hand-derived


def test_vgg16_conv5_3_and_pool5() -> None:
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    model = nn.Sequential(OrderedDict(features=features))
    conv5_3 = receptive_field(model, "features.28", 96)
    assert conv5_3.size == (196, 196) and conv5_3.stride == (16, 16)
    # Unit 0 is centred on (16 - 1) / 2 after four unpadded 2x2 poolings.
    assert conv5_3.center(0, 0) == (7.5, 7.5)
    pool5 = receptive_field(model, "features.30", 96)
    assert pool5.size == (212, 212) and pool5.stride == (32, 32)
    assert pool5.center(0, 0) == (15.5, 15.5)
    assert receptive_field(model, "features.0", 96).size == (3, 3)
    assert receptive_field(model, "features.4", 96).size == (6, 6)  # conv, conv, pool


# ResNet-18 by hand: 7x7/2 pad 3, 3x3/2 pad 1 pool, then +2 * stride per 3x3 conv. The
# start of unit 0 moves by -pad * stride each layer. Blocks take the larger branch.
RESNET18 = {
    "conv1": (7, 2, -3),
    "maxpool": (11, 4, -5),
    "layer1.0.conv1": (19, 4, -9),
    "layer1": (43, 4, -21),
    "layer2.0.conv1": (51, 8, -25),
    "layer2.0.downsample": (43, 8, -21),
    "layer2": (99, 8, -49),
    "layer3": (211, 16, -105),
    "layer4.0.conv1": (243, 32, -121),
    "layer4": (435, 32, -217),
}


@pytest.mark.parametrize("size", [64, 224])
def test_resnet18_by_hand(size: int) -> None:
    model = torchvision.models.resnet18(weights=None)
    infos = {info.name: info for info in cnnlens.layers(model, size)}
    for name, (extent, stride, start) in RESNET18.items():
        rf = infos[name].receptive_field
        assert rf is not None, name
        assert (rf.size, rf.stride, rf.start) == ((extent,) * 2, (stride,) * 2, (start,) * 2), name
    assert infos["avgpool"].receptive_field is None
    assert infos["fc"].receptive_field is None
    assert infos["layer1.0.relu"].calls == 2  # the shared ReLU of a BasicBlock
    rf = infos["layer4"].receptive_field
    assert rf is not None and rf.box(0, 0) == (0, 0, min(size, 218), min(size, 218))


def test_densenet121_largest_path() -> None:
    # conv0 7/2, pool 3/2, then 3x3 convs: 6 at stride 4, 12 at 8, 24 at 16, 16 at 32, and
    # a 2x2/2 average pool between blocks: 11 + 48 + 4 + 192 + 8 + 768 + 16 + 1024 = 2071.
    model = torchvision.models.densenet121(weights=None)
    rf = receptive_field(model, "features.norm5", 64)
    assert rf.size == (2071, 2071) and rf.stride == (32, 32)
    first = receptive_field(model, "features.denseblock1.denselayer1", 64)
    assert first.size == (19, 19) and first.stride == (4, 4)


def test_inception_v3_concatenated_branches() -> None:
    # Stem to 31 px at stride 8; InceptionA's deepest branch (two 3x3) +32 each; 6a +32;
    # InceptionC's 7x1/1x7 pairs +192 each; 7a's 7x1 then 3x3/2 +128; InceptionE's 3x3 then
    # 1x3/3x1 +128 each: 1311, the published figure for Mixed_7c.
    model = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=False)
    fields = {info.name: info.receptive_field for info in cnnlens.layers(model, 299)}
    expected = {
        "maxpool2": (31, 8),
        "Mixed_5b": (63, 8),
        "Mixed_6a": (159, 16),
        "Mixed_6e": (927, 16),
        "Mixed_7a": (1055, 32),
        "Mixed_7b": (1183, 32),
        "Mixed_7c": (1311, 32),
        "Mixed_7c.branch_pool": (1247, 32),  # a shallower branch: smaller than the block
    }
    for name, (size, stride) in expected.items():
        rf = fields[name]
        assert rf is not None and rf.size == (size, size) and rf.stride == (stride, stride), name


def test_efficientnet_lite0_same_padding_depends_on_size() -> None:
    model = EfficientNetLite0()
    # TF SAME, 3x3 stride 2: even input pads 0 top / 1 bottom, odd input 1 / 1.
    infos = {info.name: info.receptive_field for info in cnnlens.layers(model, 64)}
    even = infos["_conv_stem"]
    odd = receptive_field(model, "_conv_stem", 65)
    assert even is not None and even.size == odd.size == (3, 3) and even.stride == (2, 2)
    assert even.start == (0, 0) and odd.start == (-1, -1)
    assert even.box(31, 31) == (62, 62, 64, 64)
    # Stem 3; stride 2: 3x3 dw +4; stride 4: 3x3 +8 and 3x3/2 +8 ... the published 851.
    head = infos["_head_relu"]
    assert head is not None and head.size == (851, 851) and head.stride == (32, 32)
    assert infos["_blocks.15"] == head
    assert infos["_avg_pooling"] is None and infos["_fc"] is None


# --------------------------------------------------------------------------- brute force


def test_boxes_equal_gradient_support_of_branchy_net() -> None:
    model = positive(Branchy())
    for size in (37, 40):
        for layer in ("wide", "dilated", "pool", "head"):
            rf = receptive_field(model, layer, size)
            h, w = rf.output_size
            for y, x in {(0, 0), (h // 2, w // 2), (h - 1, w - 1), (0, w - 1)}:
                module = getattr(model, layer)
                assert rf.box(y, x) == support_box(model, module, size, y, x), (layer, y, x)


def test_dilated_box_is_the_window_extent() -> None:
    # A dilated window has holes; the box is its extent. At the border the last tap may
    # fall in the padding, so there the dependencies only lie inside the box.
    model = positive(Branchy(dilation=2))
    rf = receptive_field(model, "dilated", 40)
    # Stem 3x3/2, then taps 2 stem units apart span 5 of them: (5 - 1) * 2 + 3.
    assert rf.size == (11, 11) and rf.stride == (4, 4)
    assert rf.box(4, 4) == support_box(model, model.dilated, 40, 4, 4)
    top, left, bottom, right = rf.box(9, 9)
    t, lf, b, r = support_box(model, model.dilated, 40, 9, 9)
    assert (top, left) == (t, lf) and b <= bottom and r <= right


@pytest.mark.parametrize(
    ("build", "layer"),
    [
        (lambda: torchvision.models.resnet18(weights=None), "layer3.1"),
        (EfficientNetLite0, "_blocks.9"),
    ],
)
def test_boxes_contain_real_gradient_support(build: object, layer: str) -> None:
    # With rectifiers and max pooling the real support can only be smaller than the box.
    model = build().double().eval()  # type: ignore[operator]
    rf = receptive_field(model, layer, 96)
    module = dict(model.named_modules())[layer]
    h, w = rf.output_size
    for y, x in [(0, 0), (h // 2, w // 2), (h - 1, w - 1)]:
        top, left, bottom, right = rf.box(y, x)
        t, lf, b, r = support_box(model, module, 96, y, x)
        assert top <= t and left <= lf and b <= bottom and r <= right


# --------------------------------------------------------------------------- API


def test_layers_listing_and_untouched(untouched: type) -> None:
    model = torchvision.models.resnet18(weights=None)
    calls: list[int] = []
    model.layer1.register_forward_hook(lambda *_: calls.append(1))
    probe = torch.rand(1, 3, 64, 64)
    snap = untouched.take(model, probe)
    calls.clear()
    infos = cnnlens.layers(model, (64, 48))
    assert len(calls) == 1  # only the dry forward pass ran the user's hook, not the probe
    snap.assert_same(model, probe)
    names = [info.name for info in infos]
    assert names == [n for n, _ in model.named_modules() if n]
    by_name = {info.name: info for info in infos}
    assert by_name["conv1"].type == "Conv2d"
    assert by_name["conv1"].output_shape == (64, 32, 24)
    assert by_name["conv1"].parameters == 64 * 3 * 7 * 7
    assert by_name["layer4"].output_shape == (512, 2, 2)
    assert by_name["fc"].output_shape == (1000,)
    rf = by_name["layer2"].receptive_field
    assert rf is not None and rf.input_size == (64, 48) and rf.output_size == (8, 6)
    plain = cnnlens.layers(model, 64, receptive_fields=False)
    assert all(info.receptive_field is None for info in plain)


def test_loaded_model_default_size() -> None:
    module = torchvision.models.resnet18(weights=None).eval()
    loaded = LoadedModel(module, "r18", [], Preprocessing(crop=(80, 64), resize=80))
    rf = receptive_field(loaded, "layer1")
    assert rf.input_size == (80, 64) and rf.output_size == (20, 16)
    infos = cnnlens.layers(loaded, receptive_fields=False)
    assert infos[0].output_shape == (64, 40, 32)


def test_errors() -> None:
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(InputError, match=r"unknown layer 'layer5'.*layer4"):
        receptive_field(model, "layer5", 64)
    with pytest.raises(InputError, match="no spatial receptive field"):
        receptive_field(model, "avgpool", 64)
    with pytest.raises(InputError, match="no spatial receptive field"):
        receptive_field(model, model.fc, 64)
    with pytest.raises(InputError, match="input_size"):
        receptive_field(model, "layer1", (0, 64))
    with pytest.raises(InputError, match="input_size"):
        cnnlens.layers(model, "big")  # type: ignore[arg-type]
    rf = receptive_field(model, "layer1", 64)
    with pytest.raises(InputError, match="outside"):
        rf.box(16, 0)
    with pytest.raises(InputError, match="int"):
        rf.box(1.5, 0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="does not run"):
        cnnlens.layers(nn.Linear(3, 2), 8)


def test_cli_layers(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["layers", "--model", "resnet18", "--random-weights", "-r", "--size", "64", "64"])
    out = capsys.readouterr().out
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("layer4 "))
    assert line.split()[-2:] == ["435", "32"]
    assert "512x2x2" in line
    assert main(["layers", "--model", "resnet18", "--random-weights", "--size", "0", "3"]) == 2
    err = capsys.readouterr().err
    assert "--size" in err and "at least 1" in err and len(err.strip().splitlines()) == 1
