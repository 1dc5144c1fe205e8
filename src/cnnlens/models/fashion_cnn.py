"""(being written) The small CNN trained on Fashion-MNIST, shipped as model spec ``fashion_cnn``."""

from __future__ import annotations

from ._loaded import LoadedModel


def load_fashion_cnn(*, pretrained: bool = True, device: str = "cpu") -> LoadedModel:
    raise NotImplementedError("being written")
