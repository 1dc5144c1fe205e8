"""Dataset-scale analysis: data sources, the feature store, nearest neighbours in feature
and pixel space, embedding maps and maximally activating patches.

Nothing here draws or saves pictures; the feature store writes its own arrays when asked
to persist (``out=``).
"""

from __future__ import annotations

from ._embed import EMBED_METHODS, embed
from ._nearest import pixel_nearest
from ._patches import Patch, top_patches
from ._sources import FashionMNIST, ImageFolder, fashion_mnist, open_dataset
from ._store import FeatureStore, extract_features

__all__ = [
    "EMBED_METHODS",
    "FashionMNIST",
    "FeatureStore",
    "ImageFolder",
    "Patch",
    "embed",
    "extract_features",
    "fashion_mnist",
    "open_dataset",
    "pixel_nearest",
    "top_patches",
]
