"""(being written) Faithfulness and sanity metrics."""

from __future__ import annotations

from typing import Any


def deletion_insertion(model: Any, inputs: Any, explanation: Any, *, steps: int = 32) -> Any:
    raise NotImplementedError("being written")


def randomization_test(model: Any, inputs: Any, method: str, **options: Any) -> Any:
    raise NotImplementedError("being written")


def pointing_game(heatmap: Any, box: Any, *, tolerance: int = 15) -> Any:
    raise NotImplementedError("being written")
