"""The small CNN trained on Fashion-MNIST, shipped as model spec ``fashion_cnn``.

Three conv-BN-ReLU stages (the first two followed by 2x2 max pooling), global average
pooling and one linear layer, so every method works on it, CAM included. Weights come from
``scripts/train_fashion_cnn.py`` (seeded) and are package data (``assets/fashion_cnn.pt``).

``fashion_cnn_permuted`` is the same network trained (``--permute-labels``) on the first
1000 training pictures with their labels randomly permuted (80 epochs): it memorized them
(100% of those permuted labels) and knows nothing else (9.3% test accuracy, chance level),
the model of Adebayo et al.'s data-randomization test.

Layer names: ``features.conv1`` ... ``features.relu3`` (28x28, 14x14, 7x7 feature maps),
``pool``, ``classifier``.
"""

from __future__ import annotations

from collections import OrderedDict
from importlib import resources

import torch
from torch import Tensor, nn

from ..dataset._sources import FASHION_MNIST_CLASSES
from ..errors import ModelLoadError
from ._loaded import LoadedModel, Preprocessing

__all__ = [
    "FASHION_CNN_PREPROCESSING",
    "FashionCNN",
    "load_fashion_cnn",
]

# Mean and standard deviation of Fashion-MNIST's training pixels (in [0, 1]).
_MEAN = 0.2860
_STD = 0.3530
FASHION_CNN_PREPROCESSING = Preprocessing(
    crop=(28, 28), resize=28, mean=(_MEAN, _MEAN, _MEAN), std=(_STD, _STD, _STD), grayscale=True
)
WEIGHTS_FILE = "fashion_cnn.pt"
PERMUTED_WEIGHTS_FILE = "fashion_cnn_permuted.pt"


def _stage(index: int, cin: int, cout: int, *, pool: bool) -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = [
        (f"conv{index}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)),
        (f"bn{index}", nn.BatchNorm2d(cout)),
        (f"relu{index}", nn.ReLU()),
    ]
    if pool:
        layers.append((f"pool{index}", nn.MaxPool2d(2)))
    return layers


class FashionCNN(nn.Module):
    """(B, 1, 28, 28) normalized pictures to (B, 10) logits."""

    def __init__(self, width: int = 24, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                _stage(1, 1, width, pool=True)
                + _stage(2, width, 2 * width, pool=True)
                + _stage(3, 2 * width, 4 * width, pool=False)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def load_fashion_cnn(
    *, pretrained: bool = True, device: str = "cpu", permuted_labels: bool = False
) -> LoadedModel:
    """The shipped Fashion-MNIST CNN (``pretrained=False``: random weights), in eval mode;
    ``permuted_labels``: the copy trained on permuted labels."""
    module = FashionCNN()
    if pretrained:
        weights = PERMUTED_WEIGHTS_FILE if permuted_labels else WEIGHTS_FILE
        asset = resources.files("cnnlens").joinpath("assets", weights)
        try:
            with resources.as_file(asset) as path:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise ModelLoadError(f"fashion_cnn weights missing or unreadable ({exc})") from None
        module.load_state_dict(state)
    module.eval()
    module.to(device)
    return LoadedModel(
        module=module,
        name="fashion_cnn_permuted" if permuted_labels else "fashion_cnn",
        labels=list(FASHION_MNIST_CLASSES),
        preprocessing=FASHION_CNN_PREPROCESSING,
    )
