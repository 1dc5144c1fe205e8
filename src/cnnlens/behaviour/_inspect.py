"""Looking at one model on one image: filter weights, layer activations and the
factorization lens (NMF of a layer's activations, Olah et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._guard import guard, require_eager, unwrap
from .._hooks import Recorder
from .._modules import resolve_layer
from .._trace import ModuleCall, trace_calls
from ..errors import InputError

__all__ = [
    "Factorization",
    "activations",
    "factorize",
    "filters",
    "first_convolution",
    "mid_feature_layer",
    "prefer_rectified",
    "top_channels",
]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def first_convolution(model: nn.Module) -> nn.Conv2d:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise InputError("the model has no nn.Conv2d layer")


def filters(model: Any, layer: nn.Module | str | None = None) -> Tensor:
    """The weights (out, in / groups, kh, kw) of a convolution (default: the first one).

    A copy: changing it does not change the model. For grouped and depthwise convolutions
    filter ``o`` sees input channels ``(o // (out / groups)) * (in / groups) + i``.
    """
    module = unwrap(model)
    require_eager(module, "filters")
    conv = first_convolution(module) if layer is None else resolve_layer(module, layer)
    if not isinstance(conv, nn.Conv2d):
        name = layer if isinstance(layer, str) else "the layer"
        inside = [n for n, m in conv.named_modules() if n and isinstance(m, nn.Conv2d)][:3]
        hint = (
            f"; the convolutions in it: {', '.join(f'{name}.{n}' for n in inside)}"
            if inside and isinstance(layer, str)
            else ""
        )
        raise InputError(f"{name} is a {type(conv).__name__}, not a 2-D convolution{hint}")
    return conv.weight.detach().clone()


def _layer_output(module: nn.Module, inputs: Tensor, layer: nn.Module) -> Tensor:
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise InputError(f"inputs must be a (B, C, H, W) tensor, got {shape}")
    with (
        guard(module, needs="layer activations"),
        Recorder([layer], detach=True) as recorder,
        torch.inference_mode(),
    ):
        module(inputs)
        if not recorder.records[layer]:
            raise InputError(f"layer {type(layer).__name__} was not called in the forward pass")
        out = recorder.last(layer)
    if out.dim() == 2:
        out = out[:, :, None, None]
    if out.dim() != 4:
        raise InputError(f"the layer's output has shape {tuple(out.shape)}, not (B, C, h, w)")
    return out.clone()


def activations(model: Any, inputs: Tensor, layer: nn.Module | str) -> Tensor:
    """The feature maps (B, C, h, w) of ``layer`` for ``inputs`` (its last call if the
    module runs several times). A (B, C) output is returned as (B, C, 1, 1)."""
    with guard(model, needs="layer activations") as module:
        return _layer_output(module, inputs, resolve_layer(module, layer))


def top_channels(maps: Tensor, n: int, *, by: str = "mean") -> tuple[Tensor, Tensor]:
    """The ``n`` most active channels of each item: (values (B, n), indices (B, n)).

    ``by`` is ``"mean"`` or ``"max"`` over positions."""
    if by not in ("mean", "max"):
        raise InputError(f"by must be 'mean' or 'max', got {by!r}")
    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    flat = maps.flatten(2)
    score = flat.mean(dim=2) if by == "mean" else flat.amax(dim=2)
    values, indices = score.topk(min(n, score.shape[1]), dim=1)
    return values, indices


def check_channels(channels: list[int], available: int) -> None:
    bad = [c for c in channels if not 0 <= c < available]
    if bad:
        raise InputError(
            f"channel(s) {bad} out of range: the layer has {available} channels (0-{available - 1})"
        )


def mid_feature_layer(model: nn.Module, inputs: Tensor) -> nn.Module:
    """A sensible default for looking at hidden units: the deepest module whose feature map
    is at least 1/16 of the input side (14x14 for 224 pixels, where object parts live)."""
    side = min(inputs.shape[-2:])
    candidates = [
        c
        for c in trace_calls(model, inputs[:1])
        if c.output_shape is not None and len(c.output_shape) == 4 and c.output_shape[1] > 3
    ]
    if not candidates:
        raise InputError("the model has no module with a 4-D (B, C, H, W) output")
    big = [c for c in candidates if min(c.output_shape[-2:]) * 16 >= side]  # type: ignore[index]
    return prefer_rectified(big or candidates)[-1].module


_RECTIFIERS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish)


def prefer_rectified(calls: list[ModuleCall]) -> list[ModuleCall]:
    """The calls of activation modules when there are any (their outputs are the units one
    looks at, and non-negative for the NMF), else all calls."""
    rectified = [c for c in calls if isinstance(c.module, _RECTIFIERS)]
    return rectified or calls


@dataclass(frozen=True)
class Factorization:
    """NMF of a layer's (positions x channels) activations into k factors.

    ``maps`` (B, k, h, w): how strongly each factor is present at each position.
    ``loadings`` (k, C): each factor's channel profile. Both non-negative, and
    ``maps`` x ``loadings`` approximates the (rectified) activations.
    ``clipped_negative``: the layer had negative activations and only the positive part
    was factorized. ``error``: the Frobenius reconstruction error."""

    maps: Tensor
    loadings: Tensor
    clipped_negative: bool
    error: float

    def strongest_channels(self, n: int = 5) -> Tensor:
        """(k, n) channel ids with the largest loading in each factor."""
        return self.loadings.topk(min(n, self.loadings.shape[1]), dim=1).indices

    def reconstruction(self) -> Tensor:
        """(B, C, h, w) activations rebuilt from the factors."""
        return torch.einsum("bkhw,kc->bchw", self.maps, self.loadings)


def factorize(
    model: Any,
    inputs: Tensor,
    layer: nn.Module | str,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 400,
) -> Factorization:
    """Factorize ``layer``'s activations for one or several images into ``k`` non-negative
    factors shared by all the images (scikit-learn NMF, seeded)."""
    from sklearn.decomposition import NMF

    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    acts = activations(model, inputs, layer).double()
    batch, channels, height, width = acts.shape
    if k > channels:
        raise InputError(f"k={k} is more than the layer's {channels} channels")
    clipped = bool((acts < 0).any())
    matrix = acts.clamp(min=0).permute(0, 2, 3, 1).reshape(-1, channels).cpu().numpy()
    nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter, tol=1e-5)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # Not converging within max_iter still gives a usable factorization.
        warnings.simplefilter("ignore", ConvergenceWarning)
        weights = nmf.fit_transform(matrix)
    loadings = np.asarray(nmf.components_)
    maps = torch.from_numpy(weights).float().view(batch, height, width, k).permute(0, 3, 1, 2)
    return Factorization(
        maps=maps.contiguous().to(acts.device),
        loadings=torch.from_numpy(loadings).float().to(acts.device),
        clipped_negative=clipped,
        error=float(nmf.reconstruction_err_),
    )
