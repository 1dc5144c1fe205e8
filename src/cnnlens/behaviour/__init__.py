"""Model behaviour: filters, activations, the factorization lens, feature visualization."""

from __future__ import annotations

from ._inspect import Factorization, activations, factorize, filters
from .visualize import visualize

__all__ = ["Factorization", "activations", "factorize", "filters", "visualize"]
