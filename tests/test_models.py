"""load_model: the bundled EfficientNet-Lite0, torchvision names, model files, predict()."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

import cnnlens
from cnnlens import InputError, LoadedModel, ModelLoadError, load_model, sample_image
from cnnlens.models import available_models
from cnnlens.models._load import (
    EFFICIENTNET_LITE0_PREPROCESSING,
    _efficientnet_lite0_state,
    imagenet_labels,
    torchvision_models,
    torchvision_weights_path,
)
from cnnlens.models._predict import predict
from cnnlens.models.efficientnet_lite0 import STAGES, EfficientNetLite0, MBConvBlock, SamePad2d

from .peers import peer

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model("efficientnet_lite0")


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch hub's cache pointed at an empty folder, whatever the machine has cached."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


# --------------------------------------------------------------------------- EfficientNet-Lite0


def test_packaged_weights_fit_strictly() -> None:
    state = _efficientnet_lite0_state()
    model = EfficientNetLite0()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(state) == len(model.state_dict()) == 296
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def test_architecture_matches_lite_design() -> None:
    model = EfficientNetLite0()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
    # stem + head + one after each depthwise conv (16) + one after each expansion (15)
    assert len(relus) == 2 + 16 + 15
    assert len({id(m) for m in relus}) == len(relus), "a ReLU6 module is shared"
    assert not any(isinstance(m, (nn.ReLU, nn.SiLU, nn.Sigmoid)) for m in model.modules())
    assert not any("_se" in name for name, _ in model.named_modules()), "no squeeze-excitation"
    blocks = [m for m in model.modules() if isinstance(m, MBConvBlock)]
    assert len(blocks) == sum(s.repeats for s in STAGES) == 16
    assert sum(b.has_residual for b in blocks) == 16 - len(STAGES)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(type(m) is nn.Conv2d and m.padding == (0, 0) for m in convs)


def _tf_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),  # the odd pixel goes bottom/right
        (225, 3, 2, (1, 1)),
        (14, 5, 2, (1, 2)),
        (7, 5, 1, (2, 2)),
        (9, 3, 1, (1, 1)),
        (1, 5, 2, (2, 2)),
    ],
)
def test_same_padding_is_tensorflows(
    size: int, kernel: int, stride: int, expected: tuple[int, int]
) -> None:
    pad = SamePad2d(kernel, stride)
    assert _tf_same(size, kernel, stride) == expected
    assert pad.padding_for(size, size + 1)[2:] == expected
    x = torch.randn(1, 2, size, size, dtype=torch.float64)
    out = pad(x)
    assert out.shape[-1] == size + sum(expected)
    top, bottom = expected
    assert torch.equal(out[..., top : top + size, top : top + size], x)
    assert out.shape[-2] == top + size + bottom
    assert torch.count_nonzero(out[..., top + size :, :]) == 0
    conv = F.conv2d(out, torch.ones(1, 2, kernel, kernel, dtype=torch.float64), stride=stride)
    assert conv.shape[-1] == math.ceil(size / stride)


def _reference_forward(state: dict[str, Tensor], x: Tensor) -> Tensor:
    """EfficientNet-Lite0 written as plain functional float64 code from the weights alone."""

    def conv(x: Tensor, key: str, stride: int = 1, groups: int = 1) -> Tensor:
        w = state[f"{key}.weight"]
        k = w.shape[-1]
        ph, pw = _tf_same(x.shape[-2], k, stride), _tf_same(x.shape[-1], k, stride)
        return F.conv2d(F.pad(x, (*pw, *ph)), w, stride=stride, groups=groups)

    def bn(x: Tensor, key: str) -> Tensor:
        mean, var = state[f"{key}.running_mean"], state[f"{key}.running_var"]
        scale = state[f"{key}.weight"] / torch.sqrt(var + 1e-3)
        shift = state[f"{key}.bias"] - mean * scale
        return x * scale[:, None, None] + shift[:, None, None]

    def relu6(x: Tensor) -> Tensor:
        return x.clamp(0.0, 6.0)

    h = relu6(bn(conv(x, "_conv_stem", 2), "_bn0"))
    index = 0
    for stage in STAGES:
        for i in range(stage.repeats):
            key = f"_blocks.{index}"
            stride = stage.stride if i == 0 else 1
            inp = h
            if f"{key}._expand_conv.weight" in state:
                h = relu6(bn(conv(h, f"{key}._expand_conv"), f"{key}._bn0"))
            h = relu6(bn(conv(h, f"{key}._depthwise_conv", stride, h.shape[1]), f"{key}._bn1"))
            h = bn(conv(h, f"{key}._project_conv"), f"{key}._bn2")
            if stride == 1 and inp.shape == h.shape:
                h = h + inp
            index += 1
    h = relu6(bn(conv(h, "_conv_head"), "_bn1")).mean(dim=(2, 3))
    return h @ state["_fc.weight"].T + state["_fc.bias"]


def test_forward_matches_functional_reference_in_float64() -> None:
    state = {k: v.double() for k, v in _efficientnet_lite0_state().items()}
    model = EfficientNetLite0().double().eval()
    model.load_state_dict(state)
    # An odd, non-square size exercises the asymmetric TF padding at every stride.
    x = torch.randn(2, 3, 69, 83, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
        want = _reference_forward(state, x)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_forward_matches_timm_tf_efficientnet_lite0() -> None:
    """timm's independent TF-ported EfficientNet-Lite0 (where installed) with the same
    weights, mapped by order and shape, gives the same logits in float64."""
    timm = peer("timm")
    ours = EfficientNetLite0().double().eval()
    ours.load_state_dict(_efficientnet_lite0_state())
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).double().eval()
    mapped = {}
    for (k1, v1), (k2, v2) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert v1.shape == v2.shape, (k1, k2)
        mapped[k2] = v1
    ref.load_state_dict(mapped, strict=True)
    x = torch.randn(1, 3, 97, 131, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)


def test_residual_only_where_shapes_agree() -> None:
    torch.manual_seed(0)
    for stage in STAGES:
        for stride, cin in ((stage.stride, stage.cin), (1, stage.cout)):
            block = MBConvBlock(cin, stage.cout, stage.kernel, stride, stage.expand).eval()
            # With the projection's BN zeroed, the block's output is its shortcut alone.
            nn.init.zeros_(block._bn2.weight)
            nn.init.zeros_(block._bn2.bias)
            x = torch.randn(1, cin, 8, 8)
            with torch.no_grad():
                out = block(x)
            if stride == 1 and cin == stage.cout:
                assert torch.equal(out, x)
            else:
                assert out.shape == (1, stage.cout, 8 // stride, 8 // stride)
                assert torch.count_nonzero(out) == 0


def test_lite0_calls_chelsea_a_cat(lite0: LoadedModel) -> None:
    top = predict(lite0, sample_image("cat"), top=5)
    assert top[0].index in CAT_CLASSES
    assert top[0].probability > 0.3
    assert sum(p.index in CAT_CLASSES for p in top[:3]) == 3


def test_lite0_calls_coffee_espresso(lite0: LoadedModel) -> None:
    top = predict(lite0, sample_image("coffee"), top=3)
    assert top[0].label == "espresso"
    assert top[0].probability > 0.5


def test_lite0_loaded_model_contract(lite0: LoadedModel) -> None:
    assert lite0.name == "efficientnet_lite0"
    assert lite0.input_size == (224, 224)
    assert len(lite0.labels) == 1000
    assert lite0.labels[281] == "tabby" and lite0.labels[967] == "espresso"
    assert not any(m.training for m in lite0.module.modules())
    assert isinstance(lite0.module, EfficientNetLite0)


def test_lite0_preprocessing_as_trained(lite0: LoadedModel) -> None:
    image = sample_image("cat")  # 451 x 300
    x = lite0.preprocess(image)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    resized = image.resize((int(451 * 256 / 300), 256), Image.Resampling.BICUBIC)
    left, top = (resized.width - 224) // 2, (256 - 224) // 2
    crop = resized.crop((left, top, left + 224, top + 224))
    expected = TF.to_tensor(crop) * 2.0 - 1.0  # mean = std = 0.5
    # Tolerance for torchvision's resize vs Pillow's rounding: a couple of grey levels.
    assert (x[0] - expected).abs().max() < 2.5 * 2 / 255
    assert (x[0] - expected).abs().mean() < 0.5 / 255
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert EFFICIENTNET_LITE0_PREPROCESSING.interpolation == InterpolationMode.BICUBIC


def test_deprocess_gives_back_the_crop_the_model_saw(lite0: LoadedModel) -> None:
    image = sample_image("cat")
    x = lite0.preprocess(image)
    seen = lite0.deprocess(x)
    assert seen.size == (224, 224) and seen.mode == "RGB"
    assert torch.equal(
        TF.pil_to_tensor(seen), TF.pil_to_tensor(lite0.preprocessing.crop_image(image))
    )
    # Its pixels, normalized, are the model's input.
    assert torch.allclose(TF.to_tensor(seen) * 2 - 1, x[0], atol=1e-6)


def test_batch_preprocess(lite0: LoadedModel) -> None:
    x = lite0.preprocess([sample_image("cat"), sample_image("coffee")])
    assert x.shape == (2, 3, 224, 224)


def test_random_weights_are_not_the_packaged_ones() -> None:
    torch.manual_seed(0)
    model = load_model("efficientnet_lite0", pretrained=False)
    assert not torch.equal(
        model.module.state_dict()["_conv_stem.weight"],
        _efficientnet_lite0_state()["_conv_stem.weight"],
    )
    assert not any(m.training for m in model.module.modules())


def test_models_do_not_share_weights() -> None:
    a, b = load_model("efficientnet_lite0"), load_model("efficientnet_lite0")
    with torch.no_grad():
        a.module._fc.bias.add_(1.0)
    assert not torch.equal(a.module._fc.bias, b.module._fc.bias)
    assert torch.equal(b.module._fc.bias, _efficientnet_lite0_state()["_fc.bias"])


# --------------------------------------------------------------------------- names, devices


def test_available_models_lists_named_specs() -> None:
    names = available_models()
    assert names[:2] == ["efficientnet_lite0", "fashion_cnn"]
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)
    assert "resnet50" in names and "vgg16" in names
    assert not any("fasterrcnn" in n or "fcn_" in n for n in names), "classifiers only"


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ModelLoadError, match="efficientnet_lite0") as info:
        load_model("efficientnet_lite")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="resnet18"):
        load_model("resnt18")
    with pytest.raises(ModelLoadError, match="unknown model"):
        load_model("zzzz")


def test_arch_is_only_for_files() -> None:
    with pytest.raises(InputError, match="arch"):
        load_model("efficientnet_lite0", arch="resnet18")


def test_fashion_cnn_spec_dispatches() -> None:
    model = load_model("fashion_cnn", pretrained=False)
    assert model.name == "fashion_cnn"
    assert len(model.labels) == 10
    assert model.preprocess(sample_image("cat")).shape == (1, 1, 28, 28)


def test_labels_override() -> None:
    model = load_model("squeezenet1_1", pretrained=False, labels=["a"] * 1000)
    assert model.labels == ["a"] * 1000


def test_device_moves_module_and_inputs() -> None:
    model = load_model("squeezenet1_1", pretrained=False, device="meta")
    assert all(p.device.type == "meta" for p in model.module.parameters())
    assert model.preprocess(sample_image("coffee")).device.type == "meta"
    cpu = load_model("squeezenet1_1", pretrained=False, device=torch.device("cpu"))
    assert cpu.preprocess(sample_image("coffee")).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_unavailable_or_bad_device_is_input_error() -> None:
    with pytest.raises(InputError, match="CUDA is not available"):
        load_model("squeezenet1_1", pretrained=False, device="cuda")
    with pytest.raises(InputError, match="device 'gpu0'"):
        load_model("squeezenet1_1", pretrained=False, device="gpu0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device() -> None:
    model = load_model("efficientnet_lite0", device="cuda")
    x = model.preprocess(sample_image("cat"))
    assert x.is_cuda and next(model.module.parameters()).is_cuda
    assert predict(model, x)[0].index in CAT_CLASSES


# --------------------------------------------------------------------------- torchvision

ALL_TORCHVISION = sorted(torchvision.models.list_models(module=torchvision.models))


@pytest.mark.parametrize("name", ALL_TORCHVISION)
def test_every_torchvision_classifier_is_accepted(name: str, empty_hub: Path) -> None:
    assert name in torchvision_models()
    path = torchvision_weights_path(name)
    assert path is not None and path.parent == empty_hub / "checkpoints"
    # No cached weights: a clear one-line error, without building the network.
    with pytest.raises(ModelLoadError, match="missing offline") as info:
        load_model(name)
    message = str(info.value)
    assert name in message and "pretrained=False" in message and "\n" not in message
    assert not empty_hub.joinpath("checkpoints").exists() or not any(
        empty_hub.joinpath("checkpoints").iterdir()
    ), "something was downloaded"


@pytest.mark.parametrize(
    ("name", "size", "resize"),
    [
        ("resnet18", 224, 256),
        ("mobilenet_v3_small", 224, 256),
        ("squeezenet1_1", 224, 256),
        ("shufflenet_v2_x0_5", 224, 256),
    ],
)
def test_torchvision_random_weights_offline(name: str, size: int, resize: int) -> None:
    model = load_model(name, pretrained=False)
    assert model.name == name and len(model.labels) == 1000
    assert model.input_size == (size, size) and model.preprocessing.resize == resize
    assert not any(m.training for m in model.module.modules())
    with torch.no_grad():
        out = model.module(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)


def test_torchvision_preprocessing_follows_the_weights() -> None:
    # inception_v3 is trained at 299 (resize 342): taken from the weights' metadata,
    # without building the network.
    from cnnlens.models._load import _torchvision_preprocessing

    prep = _torchvision_preprocessing("inception_v3")
    assert prep.crop == (299, 299) and prep.resize == 342
    assert _torchvision_preprocessing("vit_h_14").crop == (518, 518)
    assert _torchvision_preprocessing("resnet50").resize == 232  # DEFAULT is IMAGENET1K_V2


def test_torchvision_pretrained_from_local_cache(empty_hub: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.squeezenet1_1(weights=None)
    path = torchvision_weights_path("squeezenet1_1")
    assert path is not None
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = load_model("squeezenet1_1")
    for key, value in reference.state_dict().items():
        assert torch.equal(model.module.state_dict()[key], value), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), reference.eval()(x))


# --------------------------------------------------------------------------- files


class TinyNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def _outputs_equal(a: nn.Module, b: nn.Module, size: int = 32) -> None:
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_torchscript_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated")  # TorchScript, upstream
        torch.jit.script(net).save(str(path))
    model = load_model(path)
    assert model.name == "tiny"
    assert model.labels == []  # ten outputs: no ImageNet names, indices instead
    assert model.label(3) == "3"
    _outputs_equal(model.module, net)
    assert not model.module.training
    assert model.preprocess(sample_image("cat")).shape == (1, 3, 224, 224)


def test_torchscript_with_1000_outputs_gets_imagenet_labels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet(classes=1000)
    path = tmp_path / "big.ts"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*is deprecated")
        torch.jit.trace(net, torch.randn(1, 3, 16, 16)).save(str(path))
    model = load_model(str(path))
    assert model.labels == list(imagenet_labels())


def test_state_dict_with_arch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None)
    path = tmp_path / "squeeze.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(ModelLoadError, match="arch=") as info:
        load_model(path)
    assert str(path) in str(info.value)
    model = load_model(path, arch="squeezenet1_1")
    assert model.name == "squeeze" and len(model.labels) == 1000
    _outputs_equal(model.module, net, 64)


def test_state_dict_of_lite0_with_arch(tmp_path: Path) -> None:
    path = tmp_path / "lite.pth"
    torch.save(dict(_efficientnet_lite0_state()), path)
    model = load_model(path, arch="efficientnet_lite0")
    assert model.preprocessing == EFFICIENTNET_LITE0_PREPROCESSING
    assert predict(model, sample_image("cat"))[0].index in CAT_CLASSES


def test_state_dict_fine_tuned_head_and_checkpoint_wrappers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=7)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel names
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": state}, path)
    model = load_model(path, arch="resnet18")
    assert model.labels == []
    _outputs_equal(model.module, net, 64)


def test_state_dict_for_wrong_or_unknown_arch(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    torch.save(TinyNet().state_dict(), path)
    with pytest.raises(ModelLoadError, match="does not fit arch='resnet18'") as info:
        load_model(path, arch="resnet18")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="resnet18"):
        load_model(path, arch="resnet81")


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 5))
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(ModelLoadError, match="trust_pickle=True") as info:
        load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    model = load_model(path, trust_pickle=True)
    _outputs_equal(model.module, net)
    assert model.labels == []


def test_bad_model_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    listed = tmp_path / "list.pt"
    torch.save([1, 2, 3], listed)
    cases = {
        tmp_path / "missing.pt": "no such model file",
        tmp_path: "is a directory",
        empty: "empty file",
        text: "not a PyTorch model file",
        listed: "neither a module nor a state dict",
    }
    for path, reason in cases.items():
        with pytest.raises(ModelLoadError, match=reason) as info:
            load_model(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- predict


def test_predict_image_and_tensor_agree(lite0: LoadedModel, untouched: type) -> None:
    image = sample_image("cat")
    x = lite0.preprocess(image)
    snap = untouched.take(lite0.module, x)
    from_image = predict(lite0, image, top=4)
    from_tensor = predict(lite0, x[0], top=4)
    snap.assert_same(lite0.module, x)
    assert [p.index for p in from_image] == [p.index for p in from_tensor]
    assert [p.rank for p in from_image] == [1, 2, 3, 4]
    probs = [p.probability for p in from_image]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    with torch.no_grad():
        logits = lite0.module(x)[0]
    assert from_image[0].logit == pytest.approx(float(logits.max()), rel=1e-5)
    assert from_image[0].probability == pytest.approx(float(logits.softmax(0).max()), rel=1e-5)


def test_predict_restores_training_flag() -> None:
    model = load_model("squeezenet1_1", pretrained=False)
    model.module.train()
    predict(model, torch.randn(1, 3, 64, 64), top=1)
    assert all(m.training for m in model.module.modules())


def test_predict_bad_arguments(lite0: LoadedModel) -> None:
    with pytest.raises(InputError, match="top"):
        predict(lite0, sample_image("cat"), top=0)
    with pytest.raises(InputError, match="one picture"):
        predict(lite0, torch.zeros(2, 3, 224, 224))
    flat = LoadedModel(module=nn.Conv2d(3, 2, 1), name="conv", labels=[])
    with pytest.raises(InputError, match="class scores"):
        predict(flat, torch.zeros(1, 3, 8, 8))
    more = predict(load_model("squeezenet1_1", pretrained=False), torch.zeros(1, 3, 64, 64), 2000)
    assert len(more) == 1000


def test_load_model_signature() -> None:
    import inspect

    assert cnnlens.load_model is load_model
    params = inspect.signature(load_model).parameters
    assert next(iter(params)) == "spec"
    assert {"pretrained", "device", "arch", "trust_pickle", "labels"} <= set(params)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(params.values())[1:])


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
