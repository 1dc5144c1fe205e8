"""Cascading model-parameter randomization (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps"): randomize the weights layer by layer from the top down and watch how
much the explanation changes. A map that stays the same is not explaining the model."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._modules import as_module, layer_name
from .._progress import track
from .._trace import trace_calls
from ..attribution.api import Explanation, explain
from ..errors import InputError
from ..targets import TargetSpec

__all__ = ["RandomizationResult", "randomization_test", "spearman", "ssim"]


@dataclass(frozen=True)
class RandomizationResult:
    """``steps[i]`` names the layers randomized so far (cumulative, top first);
    ``spearman`` and ``ssim`` are (steps, B) similarities between the original map and the
    map after step i. ``maps`` (steps + 1, B, H, W): the original heatmap, then each step's."""

    method: str
    steps: list[list[str]]
    spearman: Tensor
    ssim: Tensor
    maps: Tensor

    def mean(self) -> dict[str, list[float]]:
        return {
            "spearman": self.spearman.mean(dim=1).tolist(),
            "ssim": self.ssim.mean(dim=1).tolist(),
        }


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps' absolute values."""
    from scipy.stats import spearmanr

    x = a.detach().abs().flatten().double().cpu().numpy()
    y = b.detach().abs().flatten().double().cpu().numpy()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def ssim(a: Tensor, b: Tensor) -> float:
    """Structural similarity of two maps, each scaled to [0, 1]."""
    from skimage.metrics import structural_similarity

    def unit(m: Tensor) -> np.ndarray:
        x = m.detach().abs().double().cpu().numpy()
        span = np.ptp(x)
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)

    return float(structural_similarity(unit(a), unit(b), data_range=1.0))  # type: ignore[no-untyped-call]


def _parameterized_layers(module: nn.Module, inputs: Tensor) -> list[nn.Module]:
    """Modules holding their own parameters, in the order the forward pass uses them."""
    seen: list[nn.Module] = []
    for call in trace_calls(module, inputs[:1]):
        m = call.module
        if any(True for _ in m.parameters(recurse=False)) and all(m is not s for s in seen):
            seen.append(m)
    return seen


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(
                    torch.randn(p.shape, generator=generator, dtype=p.dtype) * (2.0 / fan_in) ** 0.5
                )
            else:
                p.copy_(
                    torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.1
                    + (1.0 if "weight" in _name_of(module, p) else 0.0)
                )


def _name_of(module: nn.Module, param: Tensor) -> str:
    for name, p in module.named_parameters(recurse=False):
        if p is param:
            return name
    return ""


def randomization_test(
    model: Any,
    inputs: Tensor,
    method: str,
    *,
    target: TargetSpec = None,
    stages: int = 8,
    randomization_seed: int = 0,
    progress: bool | None = None,
    **options: Any,
) -> RandomizationResult:
    """Explain ``inputs`` with ``method`` on the model, then on copies whose parameterized
    layers are randomized cumulatively from the output down, in ``stages`` groups.

    The targets stay those of the original model (as in the paper). The user's model is
    never modified: the randomization happens on a deep copy. ``randomization_seed`` seeds
    the new weights; other keyword options go to the method (e.g. SmoothGrad's ``seed``).
    """
    module = as_module(model)
    if stages < 1:
        raise InputError(f"stages must be at least 1, got {stages}")
    original = explain(module, inputs, method, target=target, **options)
    targets = original.targets if original.targets is not None else target
    work = copy.deepcopy(module)
    layers = list(reversed(_parameterized_layers(work, inputs)))
    if not layers:
        raise InputError("the model has no parameters to randomize")
    groups = [list(g) for g in np.array_split(np.arange(len(layers)), min(stages, len(layers)))]
    generator = torch.Generator().manual_seed(randomization_seed)
    names: list[list[str]] = []
    done: list[str] = []
    maps = [original.heatmap()]
    rho: list[list[float]] = []
    sim: list[list[float]] = []
    layer_option = options.pop("layer", None)
    for group in track(groups, f"randomizing ({method})", enabled=progress, unit="stage"):
        for i in group:
            _randomize(layers[i], generator)
            done.append(layer_name(work, layers[i]))
        names.append(list(done))
        kwargs: dict[str, Any] = dict(options)
        if layer_option is not None:
            kwargs["layer"] = (
                layer_option if isinstance(layer_option, str) else layer_name(module, layer_option)
            )
        randomized: Explanation = explain(work, inputs, method, target=targets, **kwargs)
        heat = randomized.heatmap()
        maps.append(heat)
        rho.append([spearman(a, b) for a, b in zip(maps[0], heat, strict=True)])
        sim.append([ssim(a, b) for a, b in zip(maps[0], heat, strict=True)])
    return RandomizationResult(
        method=method,
        steps=names,
        spearman=torch.tensor(rho),
        ssim=torch.tensor(sim),
        maps=torch.stack(maps),
    )
