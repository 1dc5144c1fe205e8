"""Adebayo et al.'s sanity checks on real trained models: data randomization on the bundled
Fashion-MNIST CNNs, and (slow) cascading randomization on the pretrained EfficientNet-Lite0."""

from __future__ import annotations

import pytest
import torch

import cnnlens
from cnnlens.dataset._sources import fashion_mnist_root
from cnnlens.datasets import fashion_mnist
from cnnlens.evaluate import data_randomization_test, randomization_test
from cnnlens.models.fashion_cnn import FASHION_CNN_PREPROCESSING

needs_fashion = pytest.mark.skipif(
    fashion_mnist_root() is None,
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; make system-deps)",
)


def pictures(split: str, count: int) -> torch.Tensor:
    """The first ``count`` pictures, prepared as the model's ``preprocess`` prepares them."""
    pre = FASHION_CNN_PREPROCESSING
    return (fashion_mnist(split).tensors()[:count] - pre.mean[0]) / pre.std[0]


@needs_fashion
def test_permuted_label_model_memorized_its_labels() -> None:
    """The shipped copy was trained as scripts/train_fashion_cnn.py --permute-labels
    --subset 1000 says: it fits the permuted labels of those pictures and nothing else."""
    permuted = cnnlens.load_model("fashion_cnn_permuted")
    labels = torch.from_numpy(fashion_mnist("train").labels[:1000])
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        seen = permuted(pictures("train", 1000)).argmax(1)
        test = permuted(pictures("test", 500)).argmax(1)
    test_labels = torch.from_numpy(fashion_mnist("test").labels[:500])
    assert float((seen == labels).float().mean()) > 0.95
    assert float((test == test_labels).float().mean()) < 0.2


@needs_fashion
def test_data_randomization_changes_gradient_and_gradcam_maps() -> None:
    model = cnnlens.load_model("fashion_cnn")
    permuted = cnnlens.load_model("fashion_cnn_permuted")
    x = pictures("test", 16)
    torch.testing.assert_close(x[:1], model.preprocess(fashion_mnist("test")[0][0]))
    same = data_randomization_test(model, model, x, "saliency")
    assert float(same.spearman.min()) == pytest.approx(1.0)
    for method in ("saliency", "gradcam"):
        result = data_randomization_test(model, permuted, x, method)
        assert float(result.spearman.mean()) < 0.5, method
        assert result.maps.shape == (2, 16, 28, 28)


@pytest.mark.slow
def test_guided_backprop_survives_top_layer_randomization_and_gradcam_does_not() -> None:
    """The paper's finding on the pretrained EfficientNet-Lite0: with the logit layer
    randomized, guided backpropagation's map barely changes, Grad-CAM's does."""
    model = cnnlens.load_model("efficientnet_lite0")
    x = model.preprocess([cnnlens.sample_image(n) for n in ("cat", "coffee")])
    top: dict[str, float] = {}
    for method in ("guided_backprop", "gradcam"):
        result = randomization_test(model, x, method, stages=1)
        assert result.steps == [["_fc"]]
        top[method] = float(result.spearman[0].mean())
    assert top["guided_backprop"] > top["gradcam"]
    assert top["guided_backprop"] > 0.8
