"""Canonization for the computation only: a BatchNorm in eval mode right after an affine
layer is the same affine map as one layer with folded parameters,

    BN(W x + b) = (s W) x + (s (b - mean) + beta),   s = gamma / sqrt(var + eps),

and LRP rules must see that one layer (a rule applied to W alone and then to the BN would
treat the BN's scale and shift as a separate layer with its own, sign-flipping
redistribution). The folded parameters are new tensors; the user's modules are never written
to. Residual sums need no rewrite: the driver intercepts the addition itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import Tensor

from ._affine import Affine

__all__ = ["BatchNormCall", "batch_norm_call", "fold_batch_norm"]

BatchNormCall = tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, float]
"""input, running mean, running variance, weight, bias, eps of an eval-mode batch norm."""


def batch_norm_call(bound: Mapping[str, Any]) -> BatchNormCall | None:
    """The parts of an ``F.batch_norm`` call (its arguments by name) that uses running
    statistics (eval mode), or ``None`` for a batch norm that normalizes with batch
    statistics."""
    x, mean, var = bound.get("input"), bound.get("running_mean"), bound.get("running_var")
    if bound.get("training", False) or not isinstance(x, Tensor):
        return None
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        return None
    weight, bias = bound.get("weight"), bound.get("bias")
    return (
        x,
        mean,
        var,
        weight if isinstance(weight, Tensor) else None,
        bias if isinstance(bias, Tensor) else None,
        float(bound.get("eps", 1e-5)),
    )


def fold_batch_norm(layer: Affine, bn: BatchNormCall, name: str) -> Affine | None:
    """``layer`` followed by the batch norm ``bn`` as one affine layer (its folded
    parameters are made when a rule first asks, see :class:`~._affine.Affine`), or ``None``
    when the batch norm's channels are not the layer's outputs."""
    _, mean, var, weight, bias, eps = bn
    if mean.numel() != layer.weight.shape[0] or layer.norm is not None:
        return None
    return replace(layer, name=name, norm=(mean, var, weight, bias, eps))
