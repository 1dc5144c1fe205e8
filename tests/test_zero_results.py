"""Identically-zero results: one check in ``explain`` warns for every method, naming the items,
the layer and what to try."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens import ZeroAttributionWarning

D = torch.float64


class NegativeMaps(nn.Module):
    """Feature maps that are negative everywhere (``-relu``), a GAP + linear head with positive
    weights: every ReLU-rectified class activation map is zero, the signed CAM is not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.features = nn.Identity()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.rand(3, 4) + 0.1)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.features(-torch.relu(self.conv(x)) - 0.1)
        return self.fc(maps.mean(dim=(2, 3)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return NegativeMaps().to(D).eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "scorecam", "layercam"])
def test_rectified_cams_that_vanish_say_why_and_what_to_try(method: str) -> None:
    x = torch.randn(2, 3, 8, 8, dtype=D)
    options = {"progress": False} if method == "scorecam" else {}
    with pytest.warns(ZeroAttributionWarning) as caught:
        e = cnnlens.explain(_model(), x, method, layer="features", target=0, **options)
    assert not bool(e.attribution.any())
    message = str(caught[0].message)
    assert message.startswith(f"{method}: the result is identically zero for every item")
    assert "at layer 'features'" in message and "'cam'" in message and "layer=" in message


def test_the_signed_cam_of_the_same_layer_is_not_zero() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=D)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroAttributionWarning)
        e = cnnlens.explain(_model(), x, "cam", layer="features", target=0)
    assert bool((e.attribution < 0).all())


def test_only_the_zero_items_are_named() -> None:
    # saliency of a model that ignores item 1 (its input is zeroed inside the model)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).to(D).eval()
    x = torch.randn(3, 3, 2, 2, dtype=D)
    x[1] = 0
    with pytest.warns(ZeroAttributionWarning, match=r"input_x_gradient: .* for items \[1\]: "):
        e = cnnlens.explain(model, x, "input_x_gradient", target=0)
    assert bool(e.attribution[0].any()) and not bool(e.attribution[1].any())


def test_no_warning_for_a_result_with_any_nonzero_value() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).to(D).eval()
    x = torch.zeros(1, 3, 2, 2, dtype=D)
    x[0, 0, 0, 0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroAttributionWarning)
        cnnlens.explain(model, x, "input_x_gradient", target=0)


def test_the_warning_points_at_the_callers_line() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).to(D).eval()
    with pytest.warns(ZeroAttributionWarning) as caught:
        cnnlens.explain(model, torch.zeros(1, 3, 2, 2, dtype=D), "input_x_gradient", target=0)
    assert caught[0].filename == __file__
