"""Filters, layer activations and the factorization lens."""

from __future__ import annotations

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import cnnlens
from cnnlens.behaviour._inspect import check_channels, mid_feature_layer, top_channels
from cnnlens.render._behaviour import factor_legend, factor_overlay, filter_tiles, rgb_filter_tiles


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg11(weights=None).eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def test_activations_equal_truncated_sequential(vgg: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    for index in (0, 3, 9):
        got = cnnlens.activations(vgg, x, f"features.{index}")
        with torch.no_grad():
            expected = vgg.features[: index + 1](x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)


def test_activations_resnet_stage_matches_manual_forward(
    resnet: nn.Module, untouched: type
) -> None:
    x = torch.randn(1, 3, 64, 64)
    snap = untouched.take(resnet, x)
    got = cnnlens.activations(resnet, x, "layer2")
    with torch.no_grad():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        expected = resnet.layer2(resnet.layer1(h))
    torch.testing.assert_close(got, expected)
    snap.assert_same(resnet, x)


def test_activations_of_a_shared_module_are_its_last_call(resnet: nn.Module) -> None:
    x = torch.randn(1, 3, 64, 64)
    shared = resnet.layer4[1].relu  # called twice per block
    got = cnnlens.activations(resnet, x, shared)
    with torch.no_grad():
        expected = resnet.layer4(
            resnet.layer3(
                resnet.layer2(
                    resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x)))))
                )
            )
        )
    torch.testing.assert_close(got, expected)


def test_activations_bad_input_and_layer(resnet: nn.Module) -> None:
    with pytest.raises(cnnlens.InputError, match="closest"):
        cnnlens.activations(resnet, torch.randn(1, 3, 32, 32), "layer9")
    with pytest.raises(cnnlens.InputError, match=r"\(B, C, H, W\)"):
        cnnlens.activations(resnet, torch.randn(3, 32, 32), "layer1")


def test_filters_are_a_copy_of_the_weights(resnet: nn.Module) -> None:
    w = cnnlens.filters(resnet)
    assert w.shape == (64, 3, 7, 7)
    torch.testing.assert_close(w, resnet.conv1.weight)
    w.zero_()
    assert resnet.conv1.weight.abs().sum() > 0
    deeper = cnnlens.filters(resnet, "layer1.0.conv1")
    assert deeper.shape == (64, 64, 3, 3)
    with pytest.raises(
        cnnlens.InputError, match=r"layer1\.0\.bn1 is a BatchNorm2d, not a 2-D conv"
    ):
        cnnlens.filters(resnet, "layer1.0.bn1")
    # A block: the message names the convolutions inside it, ready for --layer.
    with pytest.raises(cnnlens.InputError, match=r"in it: layer1\.0\.conv1, layer1\.0\.conv2$"):
        cnnlens.filters(resnet, "layer1.0")


def test_filters_of_depthwise_convolution() -> None:
    model = torchvision.models.mobilenet_v2(weights=None)
    w = cnnlens.filters(model, "features.1.conv.0.0")
    assert w.shape == (32, 1, 3, 3)
    tiles = filter_tiles(w[:, 0], scale=4)
    assert len(tiles) == 32
    assert tiles[0].size == (12, 12)


def test_rgb_tiles_put_zero_at_grey() -> None:
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0, 0, 0] = 1.0
    w[0, 1, 0, 0] = -1.0
    tiles = rgb_filter_tiles(w, scale=1)
    px = tiles[0].getpixel((1, 1))
    assert px == (128, 128, 128)  # zero weight -> grey
    corner = tiles[0].getpixel((0, 0))
    assert isinstance(corner, tuple)
    assert corner[0] == 255
    assert corner[1] == 0


def test_top_channels_agree_with_sorting() -> None:
    maps = torch.rand(2, 10, 4, 4)
    _, ids = top_channels(maps, 3, by="max")
    for b in range(2):
        order = maps[b].flatten(1).amax(dim=1).argsort(descending=True)[:3]
        assert ids[b].tolist() == order.tolist()
    with pytest.raises(cnnlens.InputError):
        top_channels(maps, 3, by="median")
    with pytest.raises(cnnlens.InputError, match="out of range"):
        check_channels([3, 99], 10)


def test_factorization_is_non_negative_and_improves_with_k(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    errors = []
    for k in (1, 3, 8):
        f = cnnlens.factorize(resnet, x, "layer2", k)
        assert f.maps.shape == (2, k, 8, 8)
        assert f.loadings.shape == (k, 128)
        assert bool((f.maps >= 0).all())
        assert bool((f.loadings >= 0).all())
        assert not f.clipped_negative  # after a ReLU
        errors.append(f.error)
        # the error reported is the error of maps x loadings
        acts = cnnlens.activations(resnet, x, "layer2")
        direct = float((f.reconstruction() - acts).norm())
        assert direct == pytest.approx(f.error, rel=1e-3)
    assert errors[0] > errors[1] > errors[2]


def test_factorization_of_signed_layer_says_so(resnet: nn.Module) -> None:
    f = cnnlens.factorize(resnet, torch.randn(1, 3, 64, 64), "layer2.0.bn1", 2)
    assert f.clipped_negative
    with pytest.raises(cnnlens.InputError):
        cnnlens.factorize(resnet, torch.randn(1, 3, 64, 64), "layer2", 0)


def test_factor_overlay_and_legend_sizes() -> None:
    image = Image.new("RGB", (50, 40), "white")
    maps = torch.rand(3, 5, 6)
    out = factor_overlay(image, maps)
    assert out.size == (50, 40)
    legend = factor_legend(torch.tensor([[1, 2], [3, 4], [5, 6]]))
    assert legend.height > 3 * 20


def test_mid_feature_layer_is_about_a_sixteenth_of_the_input(resnet: nn.Module) -> None:
    layer = mid_feature_layer(resnet, torch.randn(1, 3, 224, 224))
    assert cnnlens.activations(resnet, torch.randn(1, 3, 224, 224), layer).shape[-1] == 14
