"""The evaluation metrics against their reference implementations: captum.metrics
(infidelity, sensitivity_max) and pytorch-grad-cam (ROAD's noisy linear imputation)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import cnnlens
from cnnlens.evaluate import infidelity, max_sensitivity, road
from cnnlens.evaluate._perturbation import gaussian_perturbation
from cnnlens.evaluate._road import linear_imputation

from .peers import peer


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("method", ["integrated_gradients", "gradcam"])
def test_infidelity_equals_captum(method: str, normalize: bool) -> None:
    metrics = peer("captum.metrics")
    model = net()
    x = torch.randn(3, 3, 12, 12)
    e = cnnlens.explain(model, x, method, target=[0, 2, 4])
    ours = infidelity(model, x, e, samples=7, seed=5, noise=0.2, normalize=normalize)
    # captum needs input-shaped attributions: the layer map upsampled and shared by
    # the channels, as ours uses it.
    attribution = e.attribution if method != "gradcam" else upsampled(e).expand_as(x)
    torch.manual_seed(5)
    theirs = metrics.infidelity(
        model,
        gaussian_perturbation(0.2),
        x,
        attribution,
        target=[0, 2, 4],
        n_perturb_samples=7,
        normalize=normalize,
    )
    torch.testing.assert_close(ours.values, theirs, rtol=1e-5, atol=1e-5)
    assert ours.normalized is normalize and ours.method == method


def upsampled(e: cnnlens.Explanation) -> Tensor:
    return torch.nn.functional.interpolate(
        e.attribution[:, None], size=e.input_size, mode="bilinear", align_corners=False
    )


def test_infidelity_with_the_same_custom_perturbation_equals_captum() -> None:
    metrics = peer("captum.metrics")
    model = net()
    x = torch.randn(2, 3, 12, 12)
    e = cnnlens.explain(model, x, "saliency")

    def squares(inputs: Tensor) -> tuple[Tensor, Tensor]:
        # Yeh et al.'s square removal: a random 4 x 4 patch set to zero.
        keep = torch.ones_like(inputs)
        for i in range(inputs.shape[0]):
            y, x0 = torch.randint(0, 9, (2,)).tolist()
            keep[i, :, y : y + 4, x0 : x0 + 4] = 0
        return inputs * (1 - keep), inputs * keep

    ours = infidelity(model, x, e, perturbation=squares, samples=5, seed=2, normalize=False)
    torch.manual_seed(2)
    theirs = metrics.infidelity(
        model, squares, x, e.attribution, target=e.targets, n_perturb_samples=5
    )
    torch.testing.assert_close(ours.values, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "gradcam"])
def test_max_sensitivity_equals_captum(method: str) -> None:
    metrics = peer("captum.metrics")
    model = net()
    x = torch.randn(2, 3, 12, 12)
    ours = max_sensitivity(model, x, method, samples=6, seed=4, radius=0.1)

    def explanation(inputs: Tensor | tuple[Tensor], target: Tensor) -> tuple[Tensor]:
        # captum passes the unperturbed inputs as a tuple, expects tuples back, and calls
        # this under no_grad.
        (x_,) = inputs if isinstance(inputs, tuple) else (inputs,)
        with torch.enable_grad():
            return (cnnlens.explain(model, x_, method, target=target).attribution,)

    targets = model(x).argmax(1)
    torch.manual_seed(4)
    theirs = metrics.sensitivity_max(
        explanation, x, perturb_radius=0.1, n_perturb_samples=6, target=targets
    )
    torch.testing.assert_close(ours.values, theirs, rtol=1e-5, atol=1e-5)


# pytorch-grad-cam hands torch tensors to numpy functions, which NumPy 2 warns about.
third_party_numpy = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


@third_party_numpy
def test_imputation_equals_pytorch_grad_cam() -> None:
    road_module = peer("pytorch_grad_cam.metrics.road")
    image = torch.randn(3, 24, 20)
    removed = torch.rand(24, 20) < 0.6
    theirs = road_module.NoisyLinearImputer(noise=0.0)(image, (~removed).float())
    torch.testing.assert_close(linear_imputation(image, removed), theirs, rtol=1e-5, atol=1e-5)


def grad_cam_road(
    model: nn.Module, x: Tensor, cams: np.ndarray, targets: list[int], softmax: bool
) -> np.ndarray:
    """pytorch-grad-cam's ROADCombined, built from its parts with noise 0."""
    pc = peer("pytorch_grad_cam.metrics.perturbation_confidence")
    road_module = peer("pytorch_grad_cam.metrics.road")
    outputs = peer("pytorch_grad_cam.utils.model_targets")
    make: Callable[[int], object] = (
        outputs.ClassifierOutputSoftmaxTarget if softmax else outputs.ClassifierOutputTarget
    )
    scores = []
    for remove in (pc.RemoveLeastRelevantFirst, pc.RemoveMostRelevantFirst):
        per_percentile = []
        for percentile in range(10, 100, 10):
            metric = pc.PerturbationConfidenceMetric(
                remove(percentile, road_module.NoisyLinearImputer(noise=0.0))
            )
            per_percentile.append(metric(x, cams, [make(t) for t in targets], model))
        scores.append(np.mean(np.float32(per_percentile), axis=0))
    return (scores[0] - scores[1]) / 2


@third_party_numpy
@pytest.mark.parametrize("score", ["logit", "probability"])
def test_road_equals_pytorch_grad_cam(score: str) -> None:
    model = net()
    x = torch.randn(2, 3, 20, 20)
    # Ten plateaus of 40 pixels: percentile thresholds and pixel counts select the same
    # pixels (on continuous maps the two conventions can differ by one pixel).
    levels = torch.stack([torch.randperm(400).view(20, 20) // 40 for _ in range(2)]).float() / 9
    ours = road(model, x, levels, target=[1, 3], noise=0.0, score=score)
    theirs = grad_cam_road(model, x, levels.numpy(), [1, 3], softmax=score == "probability")
    torch.testing.assert_close(ours.values, torch.from_numpy(theirs), rtol=1e-5, atol=1e-5)


def test_a_missing_reference_fails_where_references_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CNNLENS_REQUIRE_REFERENCES", raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing on CI"):
        peer("cnnlens_no_such_reference")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        peer("cnnlens_no_such_reference")
    monkeypatch.setenv("CNNLENS_REQUIRE_REFERENCES", "1")  # what `make test` sets
    with pytest.raises(pytest.fail.Exception):
        peer("cnnlens_no_such_reference")
