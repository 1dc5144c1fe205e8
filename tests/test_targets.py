"""Ready-made callable targets: segmentation (class logits inside a mask) and detection
(score of the box that best overlaps a given box), by hand and with Grad-CAM on real
torchvision segmentation and detection architectures (random weights)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import detection, segmentation

from cnnlens import DetectionTarget, InputError, SegmentationTarget, ZeroAttributionWarning, explain
from cnnlens.targets import resolve_target


def captured(
    model: nn.Module, x: Tensor, layer: nn.Module, score: Any
) -> tuple[Tensor, Tensor, Any]:
    """Last-call activation at ``layer`` and the gradient of ``score(output).sum()`` with
    respect to it, with the test's own hooks (input requiring grad)."""
    outputs: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out.retain_grad()
        outputs.append(out)
        return out

    handle = layer.register_forward_hook(hook)
    try:
        output = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    score(output).sum().backward()
    act = outputs[-1]
    assert act.grad is not None
    model.zero_grad(set_to_none=True)
    return act.detach(), act.grad.detach(), output


def gradcam_formula(act: Tensor, grad: Tensor) -> Tensor:
    return F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1))


# ---------------------------------------------------------------------------------------
# Segmentation


def test_segmentation_target_sums_class_logits_inside_the_mask() -> None:
    out = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1:3, 2:4] = True
    got = SegmentationTarget(2, mask)(out)
    torch.testing.assert_close(got, out[:, 2, 1:3, 2:4].sum(dim=(1, 2)))
    torch.testing.assert_close(SegmentationTarget(2, mask)({"out": out, "aux": out}), got)
    soft = torch.rand(2, 4, 5, dtype=torch.float64)  # one weighted mask per item
    torch.testing.assert_close(SegmentationTarget(0, soft)(out), (out[:, 0] * soft).sum(dim=(1, 2)))


@pytest.mark.parametrize(
    ("category", "mask", "output", "message"),
    [
        (1, torch.ones(3, 3), torch.zeros(1, 2, 4, 5), "mask is"),
        (5, torch.ones(4, 5), torch.zeros(1, 2, 4, 5), "out of range"),
        (1, torch.ones(3, 4, 5), torch.zeros(2, 2, 4, 5), "items"),
        (1, torch.ones(4, 5), torch.zeros(2, 4, 5), "classes, H, W"),
        (1, torch.ones(4, 5), {"aux": torch.zeros(1, 2, 4, 5)}, "'out'"),
    ],
)
def test_segmentation_target_errors(category: int, mask: Tensor, output: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        SegmentationTarget(category, mask)(output)


def test_segmentation_target_rejects_bad_arguments() -> None:
    with pytest.raises(InputError, match="category"):
        SegmentationTarget(-1, torch.ones(2, 2))
    with pytest.raises(InputError, match="mask"):
        SegmentationTarget(0, torch.ones(2))


@pytest.fixture(scope="module")
def segmenter() -> nn.Module:
    torch.manual_seed(0)
    return segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5
    ).eval()


def test_gradcam_with_segmentation_target_on_deeplabv3(
    segmenter: nn.Module, untouched: Any
) -> None:
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1.0
    target = SegmentationTarget(3, mask)
    layer = segmenter.get_submodule("backbone.16")
    snap = untouched.take(segmenter)
    e = explain(segmenter, x, "gradcam", target=target, layer="backbone.16")
    snap.assert_same(segmenter)
    assert e.targets is None and e.attribution.shape == (2, 4, 4)
    act, grad, _ = captured(segmenter, x, layer, target)
    expected = gradcam_formula(act, grad)
    torch.testing.assert_close(
        e.attribution, expected, rtol=1e-4, atol=1e-6 * float(expected.max())
    )
    assert float(e.attribution.amax()) > 0
    # an empty mask scores a constant 0: no gradient, an all-zero map, said in a warning
    with pytest.warns(ZeroAttributionWarning, match="identically zero"):
        empty = explain(
            segmenter, x, "gradcam", target=SegmentationTarget(3, torch.zeros(64, 64)), layer=layer
        )
    assert float(empty.attribution.abs().amax()) == 0.0


def test_scorecam_with_segmentation_target(segmenter: nn.Module) -> None:
    mask = torch.zeros(64, 64)
    mask[:32] = 1.0
    e = explain(
        segmenter,
        torch.randn(1, 3, 64, 64),
        "scorecam",
        target=SegmentationTarget(1, mask),
        layer="backbone.4.block.0",  # after a ReLU, 72 channels: quick
        batch_size=16,
        progress=False,
    )
    assert e.attribution.shape[0] == 1 and float(e.attribution.amax()) > 0


# ---------------------------------------------------------------------------------------
# Detection


def fake_detections() -> list[dict[str, Tensor]]:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [22, 22, 38, 41]])
    return [
        {
            "boxes": boxes,
            "labels": torch.tensor([1, 2, 3]),
            "scores": torch.tensor([0.9, 0.5, 0.7], requires_grad=True),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "scores": torch.zeros(0, requires_grad=True),
        },
    ]


def test_detection_target_picks_the_best_overlapping_box() -> None:
    out = fake_detections()
    # (21, 21, 40, 40): IoU 0.90 with box 1, 0.75 with box 2
    target = DetectionTarget([21.0, 21.0, 40.0, 40.0])
    assert target.best_box(out) == [1, None]
    scores = target(out)
    torch.testing.assert_close(scores, torch.tensor([0.5, 0.0]))
    scores.sum().backward()  # connected to the graph even for the empty item
    assert out[0]["scores"].grad is not None
    assert out[0]["scores"].grad.tolist() == [0.0, 1.0, 0.0]
    # restricted to a label, and to a minimum overlap
    assert DetectionTarget([21.0, 21.0, 40.0, 40.0], label=3).best_box(out) == [2, None]
    assert DetectionTarget([21.0, 21.0, 40.0, 40.0], label=7).best_box(out) == [None, None]
    assert DetectionTarget([0.0, 0.0, 5.0, 5.0], min_iou=0.5).best_box(out) == [None, None]
    assert DetectionTarget([0.0, 0.0, 5.0, 5.0], min_iou=0.2).best_box(out) == [0, None]
    # one box per item
    per_item = DetectionTarget(torch.tensor([[0.0, 0.0, 9.0, 9.0], [1.0, 1.0, 2.0, 2.0]]))
    assert per_item.best_box(out) == [0, None]


def test_detection_target_errors() -> None:
    with pytest.raises(InputError, match="x2 >= x1"):
        DetectionTarget([10.0, 0.0, 5.0, 5.0])
    with pytest.raises(InputError, match="shape"):
        DetectionTarget([1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="3 boxes"):
        DetectionTarget(torch.zeros(3, 4))(fake_detections())
    with pytest.raises(InputError, match="list"):
        DetectionTarget([0.0, 0.0, 1.0, 1.0])(torch.zeros(2, 3))


def test_gradcam_with_detection_target_on_faster_rcnn(untouched: Any) -> None:
    torch.manual_seed(0)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0
    ).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        detections = model(x)
    assert len(detections[0]["boxes"]) > 0
    box = detections[0]["boxes"][3].tolist()
    target = DetectionTarget(box)
    assert target.best_box(detections) == [3]
    layer = model.get_submodule("backbone.body.16")
    snap = untouched.take(model)
    e = explain(model, x, "gradcam", target=target, layer="backbone.body.16")
    snap.assert_same(model)
    act, grad, _ = captured(model, x, layer, target)
    assert e.attribution.shape == act[:, 0].shape
    expected = gradcam_formula(act, grad)
    assert float(expected.amax()) > 0
    torch.testing.assert_close(
        e.attribution, expected, rtol=1e-4, atol=1e-6 * float(expected.max())
    )
    heat = e.heatmap()
    assert heat.shape == (1, 128, 128) and float(heat.amax()) == 1.0
    # the default layer of a detector is the RoI pooling, not a map of the image
    with pytest.raises(InputError, match="feature map"):
        explain(model, x, "gradcam", target=target)


# ---------------------------------------------------------------------------------------
# Resolved targets


def test_callable_targets_must_give_one_score_per_item() -> None:
    resolved = resolve_target(lambda out: out[:, 0], 3)
    assert resolved.score(torch.ones(3, 2)).shape == (3,)
    with pytest.raises(InputError, match="2 scores for 3 items"):
        resolved.score(torch.ones(2, 2))
    rows = torch.tensor([0, 0, 1, 1, 2])  # several copies per item
    assert resolved.score(torch.ones(5, 2), rows).shape == (5,)
    with pytest.raises(InputError, match="1-D"):
        resolve_target(lambda out: out, 3).score(torch.ones(3, 2))
    with pytest.raises(InputError, match="entries"):
        resolve_target([1, 2], 3)


class _RowsOut(nn.Module):
    """A CNN whose output has one row fewer than its input (it drops the last item)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        a = torch.relu(self.conv(x))
        return self.fc(a.mean(dim=(2, 3)))[:-1]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("saliency", {}),
        ("guided_backprop", {}),
        ("deeplift", {}),
        ("lrp", {}),
        ("gradcam", {"layer": "conv"}),
        ("guided_gradcam", {"layer": "conv"}),
        ("occlusion", {"window": 4, "stride": 4}),
    ],
)
def test_every_method_refuses_a_wrong_number_of_scores(method: str, options: Any) -> None:
    # Target.score is the one place that checks the scores against the items, for class
    # targets and callables alike; the methods rely on it.
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = _RowsOut().eval()
    with pytest.raises(InputError, match="2 output rows for 3 items"):
        explain(net, x, method, target=[0, 1, 2], **options)
    with pytest.raises(InputError, match="2 scores for 3 items"):
        explain(net, x, method, target=lambda out: out[:, 0], **options)


@pytest.mark.parametrize("method", ["saliency", "deeplift", "guided_gradcam"])
def test_gradient_methods_refuse_a_score_that_ignores_the_input(method: str) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    options = {"layer": "0"} if method == "guided_gradcam" else {}
    with pytest.raises(InputError, match="does not depend on the input"):
        explain(net.eval(), x, method, target=lambda out: out[:, 0].detach(), **options)
