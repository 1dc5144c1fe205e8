"""(being written) filters, activations, factorize."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Factorization:
    maps: Tensor
    loadings: Tensor


def filters(model: Any, layer: Any = None) -> Tensor:
    raise NotImplementedError("being written")


def activations(model: Any, inputs: Tensor, layer: Any) -> Tensor:
    raise NotImplementedError("being written")


def factorize(model: Any, inputs: Tensor, layer: Any, k: int) -> Factorization:
    raise NotImplementedError("being written")
