"""Objectives to maximize, composable with ``+``, ``-`` and ``*`` (as in lucid).

An :class:`Objective` maps a :class:`Context` — the model's output for the batch and the
activations of the layers it asked for — to one score per image, shape (N,). Sums,
differences and scalings are objectives too; the layers they need are the union of their
parts'. Higher is better.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError

__all__ = [
    "Context",
    "Objective",
    "ObjectiveSpec",
    "as_objective",
    "channel",
    "class_logit",
    "diversity",
    "neuron",
]


@dataclass(frozen=True)
class Context:
    """What an objective sees at one step: the model ``output`` for the (transformed) batch,
    the recorded ``activations`` by layer name (last call of each), and the untransformed
    pixel ``images`` (N, 3, H, W) in [0, 1]."""

    output: Any
    activations: Mapping[str, Tensor]
    images: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    def activation(self, layer: str) -> Tensor:
        return self.activations[layer]


def _per_item(value: Any, n: int, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise InputError(f"objective {what} returned {type(value).__name__}, not a tensor")
    if value.dim() == 0:
        return value.expand(n)
    if value.dim() != 1 or value.shape[0] != n:
        raise InputError(
            f"objective {what} must give one score per image ({n}), got shape {tuple(value.shape)}"
        )
    return value


class Objective:
    """A score per image, ``fn(context) -> Tensor (N,)``; ``layers`` are the dotted names of
    the modules whose outputs ``fn`` reads from ``context.activations``."""

    def __init__(
        self,
        fn: Callable[[Context], Tensor],
        *,
        layers: frozenset[str] = frozenset(),
        name: str = "objective",
    ) -> None:
        self.fn = fn
        self.layers = layers
        self.name = name

    def __call__(self, context: Context) -> Tensor:
        return _per_item(self.fn(context), context.batch_size, self.name)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other: ObjectiveSpec | float) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            constant = float(other)
            return Objective(
                lambda c: self(c) + constant, layers=self.layers, name=f"{self.name} + {other}"
            )
        right = as_objective(other)
        return Objective(
            lambda c: self(c) + right(c),
            layers=self.layers | right.layers,
            name=f"{self.name} + {right.name}",
        )

    def __radd__(self, other: float) -> Objective:
        # sum([...]) starts from 0.
        return self + other

    def __neg__(self) -> Objective:
        return self * -1.0

    def __sub__(self, other: ObjectiveSpec | float) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return self + (-float(other))
        return self + (-as_objective(other))

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, other: float) -> Objective:
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        factor = float(other)
        return Objective(
            lambda c: factor * self(c), layers=self.layers, name=f"{factor:g} * {self.name}"
        )

    def __rmul__(self, other: float) -> Objective:
        return self * other

    def __truediv__(self, other: float) -> Objective:
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        return self * (1.0 / float(other))


ObjectiveSpec = int | str | Objective | Callable[[Any], Tensor]


def _logits(output: Any) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InputError(
            f"a class objective needs a (batch, classes) output, got {shape}; "
            "pass a callable objective"
        )
    return output


def class_logit(index: int) -> Objective:
    """The model's raw score (logit) for class ``index``, S_c in Simonyan et al. 2013."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InputError(f"class index must be a non-negative int, got {index!r}")

    def fn(c: Context) -> Tensor:
        logits = _logits(c.output)
        if index >= logits.shape[1]:
            raise InputError(f"class {index} is out of range for {logits.shape[1]} outputs")
        return logits[:, index]

    return Objective(fn, name=f"class {index}")


def _channel_of(c: Context, layer: str, index: int) -> Tensor:
    act = c.activation(layer)
    if act.dim() < 2:
        raise InputError(f"layer {layer!r} output has shape {tuple(act.shape)}: no channels")
    if not 0 <= index < act.shape[1]:
        raise InputError(f"channel {index} is out of range: {layer!r} has {act.shape[1]}")
    return act[:, index]


def channel(layer: str, index: int) -> Objective:
    """The mean activation of channel ``index`` of ``layer`` (its output) over positions."""

    def fn(c: Context) -> Tensor:
        return _channel_of(c, layer, index).flatten(1).mean(dim=1)

    return Objective(fn, layers=frozenset({layer}), name=f"{layer}:{index}")


def neuron(layer: str, index: int, y: int | None = None, x: int | None = None) -> Objective:
    """The activation of channel ``index`` of ``layer`` at one position (default: the
    centre of the feature map)."""

    def fn(c: Context) -> Tensor:
        act = _channel_of(c, layer, index)
        if act.dim() != 3:
            raise InputError(f"a neuron objective needs a 4-D feature map at {layer!r}")
        h, w = act.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        if not (0 <= yy < h and 0 <= xx < w):
            raise InputError(f"position ({yy}, {xx}) is outside {layer!r}'s {h}x{w} map")
        return act[:, yy, xx]

    where = "centre" if y is None and x is None else f"({y}, {x})"
    return Objective(fn, layers=frozenset({layer}), name=f"{layer}:{index}@{where}")


def diversity(layer: str) -> Objective:
    """Diversity across the batch (lucid): for image n, minus the mean cosine similarity
    between its Gram matrix of ``layer``'s channels and those of the other images. Zero for
    a batch of one. Add it with a weight: ``class_logit(1) + 0.1 * diversity("features.6")``.
    """

    def fn(c: Context) -> Tensor:
        act = c.activation(layer)
        n = act.shape[0]
        if n < 2:
            return act.sum() * 0.0
        flat = act.flatten(2)
        grams = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1)
        similarity = grams @ grams.T
        others = similarity.sum(dim=1) - similarity.diagonal()
        return -others / (n - 1)

    return Objective(fn, layers=frozenset({layer}), name=f"diversity({layer})")


def as_objective(spec: ObjectiveSpec) -> Objective:
    """An :class:`Objective` from a class index, ``"layer:channel"``, an objective, or a
    plain callable ``output -> Tensor (N,)`` (the model output, as for ``explain`` targets)."""
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, bool):
        raise InputError("objective must be a class index, 'layer:channel' or a callable")
    if isinstance(spec, int):
        return class_logit(spec)
    if isinstance(spec, str):
        layer, sep, index = spec.rpartition(":")
        if not sep or not layer or not index.strip().isdigit():
            raise InputError(f"objective {spec!r}: expected 'layer:channel', e.g. 'features.6:12'")
        return channel(layer, int(index))
    if callable(spec):
        user = spec
        name = getattr(user, "__name__", type(user).__name__)
        return Objective(lambda c: user(c.output), name=str(name))
    raise InputError(
        f"objective must be a class index, 'layer:channel' or a callable, got {type(spec).__name__}"
    )
