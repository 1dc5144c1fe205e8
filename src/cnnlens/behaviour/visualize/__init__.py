"""(being written) Feature visualization by gradient ascent."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def visualize(
    model: Any, objective: Any, *, steps: int = 256, seed: int = 0, **regularizers: Any
) -> Tensor:
    raise NotImplementedError("being written")
