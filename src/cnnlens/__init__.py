"""cnnlens: open up convolutional networks.

Decision explanation (:func:`explain`), model behaviour (filters, activations, the
factorization lens, feature visualization), dataset-scale analysis (feature store, nearest
neighbours, embeddings, maximally activating patches) and faithfulness metrics, for any
``torch.nn.Module``.
"""

from __future__ import annotations

from . import datasets
from ._boxes import Box
from ._coverage import Coverage, CoverageEntry, coverage
from .attribution.api import METHODS, Explanation, explain
from .attribution.cam import cam_model
from .behaviour import Factorization, activations, factorize, filters, visualize
from .dataset import FeatureStore, embed, extract_features, pixel_nearest, top_patches
from .errors import (
    CnnlensWarning,
    CompletenessWarning,
    InputError,
    ModelLoadError,
    RuleWarning,
    ZeroAttributionWarning,
)
from .evaluate import (
    data_randomization_test,
    deletion_insertion,
    infidelity,
    max_sensitivity,
    pointing_game,
    randomization_test,
    road,
    trust_table,
)
from .images import load_image, sample_image, sample_images
from .layers import LayerInfo, ReceptiveField, layers, receptive_field
from .models import LoadedModel, load_model
from .targets import DetectionTarget, SegmentationTarget

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Box",
    "CnnlensWarning",
    "CompletenessWarning",
    "Coverage",
    "CoverageEntry",
    "DetectionTarget",
    "Explanation",
    "Factorization",
    "FeatureStore",
    "InputError",
    "LayerInfo",
    "LoadedModel",
    "ModelLoadError",
    "ReceptiveField",
    "RuleWarning",
    "SegmentationTarget",
    "ZeroAttributionWarning",
    "activations",
    "cam_model",
    "coverage",
    "data_randomization_test",
    "datasets",
    "deletion_insertion",
    "embed",
    "explain",
    "extract_features",
    "factorize",
    "filters",
    "infidelity",
    "layers",
    "load_image",
    "load_model",
    "max_sensitivity",
    "pixel_nearest",
    "pointing_game",
    "randomization_test",
    "receptive_field",
    "road",
    "sample_image",
    "sample_images",
    "top_patches",
    "trust_table",
    "visualize",
]
