"""Faithfulness and sanity metrics: which map can be trusted.

Every function returns a frozen result holding the numbers, the curves or samples behind
them (tensors) and what was used: the method, the pixel ranking, the baseline or
perturbation.
"""

from __future__ import annotations

from ._deletion import DeletionInsertion, deletion_insertion
from ._perturbation import Infidelity, MaxSensitivity, infidelity, max_sensitivity
from ._pointing import PointingGame, pointing_game
from ._randomization import (
    DataRandomization,
    RandomizationResult,
    data_randomization_test,
    randomization_test,
)
from ._road import Road, road
from ._trust import METRICS, TrustRow, TrustTable, trust_table

__all__ = [
    "METRICS",
    "DataRandomization",
    "DeletionInsertion",
    "Infidelity",
    "MaxSensitivity",
    "PointingGame",
    "RandomizationResult",
    "Road",
    "TrustRow",
    "TrustTable",
    "data_randomization_test",
    "deletion_insertion",
    "infidelity",
    "max_sensitivity",
    "pointing_game",
    "randomization_test",
    "road",
    "trust_table",
]
