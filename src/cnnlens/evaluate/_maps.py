"""From an explanation to the per-pixel map that an evaluation ranks or compares.

Two readings of one attribution, both (B, H, W) at input resolution:

- *signed*: the evidence for (+) or against (−) the target: the attribution summed over
  channels (input-space methods, occlusion) or the layer map upsampled (CAM family);
- *abs*: its magnitude, the largest absolute value over channels (Simonyan et al.'s map for
  gradients) or the absolute layer map.

Which one a metric uses by default follows the method: attributions that decompose the
score into signed contributions (input × gradient, integrated gradients, DeepLIFT, LRP,
occlusion, CAM) rank by the signed value, so the strongest evidence *against* the class is
not removed first; gradient-type maps (saliency, SmoothGrad, deconvnet, guided
backpropagation, Guided Grad-CAM) rank by magnitude: their sign says which way a pixel
would have to move, not whether it supports the class. Grad-CAM-type maps are
non-negative, so both readings agree.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from ..attribution.api import Explanation
from ..errors import InputError

__all__ = [
    "Rank",
    "abs_map",
    "as_maps",
    "default_rank",
    "method_name",
    "ranking_map",
    "signed_map",
]

Rank = Literal["signed", "abs"]

# Gradient-type maps: the magnitude is the explanation (see the module docstring).
_SENSITIVITY_METHODS = frozenset(
    {"saliency", "smoothgrad", "deconvnet", "guided_backprop", "guided_gradcam"}
)


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]


def _plain(maps: Tensor) -> Tensor:
    maps = maps.detach()
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise InputError(f"a plain map must be (B, H, W), got {tuple(maps.shape)}")
    return maps


def signed_map(explanation: Explanation) -> Tensor:
    """(B, H, W): the attribution summed over channels, at input resolution."""
    a = explanation.attribution.detach()
    maps = a.sum(dim=1) if a.dim() == 4 else a
    return _resize(maps, explanation.input_size)


def abs_map(explanation: Explanation) -> Tensor:
    """(B, H, W): the largest absolute attribution over channels, at input resolution."""
    a = explanation.attribution.detach().abs()
    maps = a.amax(dim=1) if a.dim() == 4 else a
    return _resize(maps, explanation.input_size)


def default_rank(explanation: Explanation | Tensor) -> Rank:
    """``"abs"`` for gradient-type methods, ``"signed"`` for the others and for plain maps
    (a plain map is ranked as given)."""
    if isinstance(explanation, Explanation) and explanation.method in _SENSITIVITY_METHODS:
        return "abs"
    return "signed"


def ranking_map(
    explanation: Explanation | Tensor, size: tuple[int, int], rank: Rank | None = None
) -> tuple[Tensor, Rank]:
    """The map to rank pixels by (higher: more important), and the ranking used."""
    chosen = default_rank(explanation) if rank is None else rank
    if chosen not in ("signed", "abs"):
        raise InputError(f"rank must be 'signed' or 'abs', got {rank!r}")
    if isinstance(explanation, Explanation):
        maps = signed_map(explanation) if chosen == "signed" else abs_map(explanation)
    elif isinstance(explanation, Tensor):
        maps = _plain(explanation)
        maps = maps if chosen == "signed" else maps.abs()
    else:
        raise InputError(
            f"expected an Explanation or a (B, H, W) tensor, got {type(explanation).__name__}"
        )
    return _resize(maps, size), chosen


def as_maps(explanation: Explanation | Tensor, size: tuple[int, int]) -> Tensor:
    """An explanation's heatmap (or a plain map) as (B, H, W) at ``size``."""
    if isinstance(explanation, Explanation):
        return _resize(explanation.heatmap(), size)
    if isinstance(explanation, Tensor):
        return _resize(_plain(explanation), size)
    raise InputError(
        f"expected an Explanation or a (B, H, W) tensor, got {type(explanation).__name__}"
    )


def method_name(explanation: Explanation | Tensor) -> str:
    """The method behind a map, for the result's record (``"map"`` for a plain tensor)."""
    return explanation.method if isinstance(explanation, Explanation) else "map"
