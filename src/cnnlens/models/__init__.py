"""Models: ``load_model`` and ``LoadedModel``."""

from __future__ import annotations

from ._load import available_models, load_model
from ._loaded import LoadedModel, Preprocessing

__all__ = ["LoadedModel", "Preprocessing", "available_models", "load_model"]
