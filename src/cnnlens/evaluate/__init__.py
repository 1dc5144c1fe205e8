"""Faithfulness and sanity metrics: which map can be trusted."""

from __future__ import annotations

from ._metrics import DeletionInsertion, deletion_insertion, pointing_game
from ._randomization import RandomizationResult, randomization_test

__all__ = [
    "DeletionInsertion",
    "RandomizationResult",
    "deletion_insertion",
    "pointing_game",
    "randomization_test",
]
