"""(being written) Dataset-scale analysis."""

from __future__ import annotations

from typing import Any


class FeatureStore:
    @classmethod
    def open(cls, path: Any) -> FeatureStore:
        raise NotImplementedError("being written")


def extract_features(
    model: Any, dataset: Any, layer: Any, *, batch_size: int = 64, out: Any = None
) -> FeatureStore:
    raise NotImplementedError("being written")


def pixel_nearest(dataset: Any, image: Any, k: int) -> Any:
    raise NotImplementedError("being written")


def embed(features: Any, method: str = "tsne", *, dims: int = 2, seed: int = 0) -> Any:
    raise NotImplementedError("being written")


def top_patches(model: Any, dataset: Any, layer: Any, *, channels: Any = None, k: int = 9) -> Any:
    raise NotImplementedError("being written")
