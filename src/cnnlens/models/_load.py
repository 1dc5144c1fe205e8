"""(being written) load_model for efficientnet_lite0, torchvision names and files."""

from __future__ import annotations

from ._loaded import LoadedModel


def load_model(spec: str, *, pretrained: bool = True, device: str = "cpu") -> LoadedModel:
    raise NotImplementedError("being written")


def available_models() -> list[str]:
    raise NotImplementedError("being written")
