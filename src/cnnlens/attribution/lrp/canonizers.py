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
from typing import Any

import torch
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
    """``layer`` followed by the batch norm ``bn`` as one affine layer, or ``None`` when the
    batch norm's channels are not the layer's outputs."""
    _, mean, var, weight, bias, eps = bn
    out_channels = layer.weight.shape[0]
    if mean.numel() != out_channels:
        return None
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    folded_weight = layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
    folded_bias = shift if layer.bias is None else layer.bias * scale + shift
    return layer.with_params(folded_weight, folded_bias, name)
