"""(being written) layers() and receptive_field()."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReceptiveField:
    size: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class LayerInfo:
    name: str


def layers(model: Any, input_size: tuple[int, int] | None = None) -> list[LayerInfo]:
    raise NotImplementedError("being written")


def receptive_field(
    model: Any, layer: Any, input_size: tuple[int, int] = (224, 224)
) -> ReceptiveField:
    raise NotImplementedError("being written")
