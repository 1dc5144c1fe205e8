"""Smoke case for the harness: a ResNet-18 forward pass against itself (its ratio, ideally
1.00, shows the noise level of the machine), and cnnlens.layers() on it for scale."""

from __future__ import annotations

import torch
import torchvision

import cnnlens
from harness import Case


def cases() -> list[Case]:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 224, 224)

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    def forward_inference_mode() -> object:
        with torch.inference_mode():
            return model(x)

    return [
        Case(
            "resnet18 forward vs itself",
            forward,
            forward,
            repeats=5,
            competitors={"torch.inference_mode": forward_inference_mode},
        ),
        Case(
            "cnnlens.layers(resnet18) with receptive fields",
            lambda: cnnlens.layers(model),
            forward,
            repeats=3,
            floor_name="one forward pass",
        ),
    ]
