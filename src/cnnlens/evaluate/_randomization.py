"""Sanity checks for saliency maps (Adebayo et al. 2018): a map that explains the model
must change when the model does.

- *Model-parameter randomization*: randomize the trained weights from the top layer down,
  cumulatively (``mode="cascading"``) or one group of layers at a time with the others
  trained (``mode="independent"``), and compare each map with the original one.
- *Data randomization*: compare the maps of the model with those of the same architecture
  trained on permuted labels (:func:`data_randomization_test`).

Maps are compared with the paper's four measures (:mod:`._similarity`): Spearman rank
correlation of the absolute maps and of the signed maps, SSIM and HOG correlation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .._guard import guard
from .._modules import layer_name
from .._progress import track
from .._trace import trace_calls
from ..attribution.api import Explanation, explain
from ..errors import InputError
from ..targets import TargetSpec
from ._maps import abs_map, signed_map
from ._similarity import SIMILARITIES, hog_similarity, spearman, ssim

__all__ = [
    "DataRandomization",
    "MapComparison",
    "Mode",
    "RandomizationResult",
    "data_randomization_test",
    "randomization_test",
]

Mode = Literal["cascading", "independent"]


def _similarities(original: Explanation, other: Explanation) -> dict[str, list[float]]:
    """Per item, the four similarities between two explanations of the same inputs."""
    a_abs, b_abs = abs_map(original), abs_map(other)
    a_signed, b_signed = signed_map(original), signed_map(other)
    return {
        "spearman_abs": [spearman(a, b) for a, b in zip(a_abs, b_abs, strict=True)],
        "spearman_signed": [
            spearman(a, b, absolute=False) for a, b in zip(a_signed, b_signed, strict=True)
        ],
        "ssim": [ssim(a, b) for a, b in zip(a_abs, b_abs, strict=True)],
        "hog": [hog_similarity(a, b) for a, b in zip(a_abs, b_abs, strict=True)],
    }


@dataclass(frozen=True)
class MapComparison:
    """Similarities between original maps and changed ones, with the maps compared.

    ``spearman`` (Spearman rank correlation of the absolute maps), ``spearman_signed``,
    ``ssim`` and ``hog``: one value per comparison and item. ``maps`` / ``signed_maps``:
    the absolute maps (largest magnitude over channels) and the signed maps (sum over
    channels), the original first."""

    method: str
    spearman: Tensor
    spearman_signed: Tensor
    ssim: Tensor
    hog: Tensor
    maps: Tensor = field(repr=False)
    signed_maps: Tensor = field(repr=False)

    def similarity(self, name: str) -> Tensor:
        """One measure by name: ``"spearman_abs"``, ``"spearman_signed"``, ``"ssim"``, ``"hog"``."""
        if name not in SIMILARITIES:
            raise InputError(f"unknown similarity {name!r}; one of {', '.join(SIMILARITIES)}")
        return self.spearman if name == "spearman_abs" else getattr(self, name)


@dataclass(frozen=True)
class RandomizationResult(MapComparison):
    """Model-parameter randomization of one method: similarities (steps, B) between the
    original map and the map after step i; ``maps`` (steps + 1, B, H, W).

    ``steps[i]`` names the layers randomized at step i (top first; cumulative in cascading
    mode, only that group in independent mode)."""

    mode: str = "cascading"
    steps: list[list[str]] = field(default_factory=list)

    def mean(self) -> dict[str, list[float]]:
        """Each measure averaged over the items, per step."""
        return {name: self.similarity(name).mean(dim=1).tolist() for name in SIMILARITIES}


@dataclass(frozen=True)
class DataRandomization(MapComparison):
    """Data randomization of one method: similarities (B,) between the maps of the trained
    model and of the model trained on permuted labels, for the same targets; ``maps`` and
    ``signed_maps`` (2, B, H, W): the trained model's, then the permuted-label model's."""


def _parameterized_layers(module: nn.Module, inputs: Tensor) -> list[nn.Module]:
    """Modules holding their own parameters, in the order the forward pass uses them."""
    seen: list[nn.Module] = []
    for call in trace_calls(module, inputs[:1]):
        m = call.module
        if any(True for _ in m.parameters(recurse=False)) and all(m is not s for s in seen):
            seen.append(m)
    return seen


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    """New weights for the module's own parameters: He-normal for weight matrices and
    kernels, N(1, 0.1²) for normalization scales, N(0, 0.1²) for biases."""
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if p.dim() > 1:
                p.copy_(noise * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(noise * 0.1 + (1.0 if "weight" in name else 0.0))


def _groups(count: int, stages: int) -> list[list[int]]:
    """Layer indices (0 = top) per step: the top layer alone first, as the paper starts
    with the logits, then the others in ``stages - 1`` contiguous groups."""
    rest = np.arange(1, count)
    parts = (
        [list(g) for g in np.array_split(rest, min(stages - 1, len(rest)))] if stages > 1 else []
    )
    return [[0], *[[int(i) for i in g] for g in parts if len(g)]]


def randomization_test(
    model: Any,
    inputs: Tensor,
    method: str,
    *,
    mode: Mode = "cascading",
    target: TargetSpec = None,
    stages: int = 8,
    randomization_seed: int = 0,
    progress: bool | None = None,
    **options: Any,
) -> RandomizationResult:
    """Explain ``inputs`` with ``method`` on the model, then on a copy whose parameterized
    layers are randomized from the output down in ``stages`` steps: the top layer alone,
    then the others in ``stages - 1`` groups. ``mode="cascading"`` keeps each step's
    randomization for the next (Adebayo et al.'s cascading test); ``"independent"``
    randomizes each group alone, the other layers keeping their trained weights.

    The targets stay those of the original model (as in the paper). The user's model is
    never modified: the randomization happens on a deep copy. ``randomization_seed`` seeds
    the new weights; other keyword options go to the method (e.g. SmoothGrad's ``seed``;
    a ``layer`` is given by name so that it resolves in the copy).
    """
    if stages < 1:
        raise InputError(f"stages must be at least 1, got {stages}")
    if mode not in ("cascading", "independent"):
        raise InputError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    with guard(model, needs="randomization_test") as module:
        if isinstance(options.get("layer"), nn.Module):
            options["layer"] = layer_name(module, options["layer"])
        original = explain(module, inputs, method, target=target, **options)
        work = copy.deepcopy(module)
    targets: TargetSpec = original.targets if original.targets is not None else target
    layers = list(reversed(_parameterized_layers(work, inputs)))
    if not layers:
        raise InputError("the model has no parameters to randomize")
    generator = torch.Generator().manual_seed(randomization_seed)
    names: list[list[str]] = []
    abs_maps, signed_maps = [abs_map(original)], [signed_map(original)]
    measures: dict[str, list[list[float]]] = {name: [] for name in SIMILARITIES}
    for group in track(
        _groups(len(layers), stages),
        f"randomizing ({method}, {mode})",
        enabled=progress,
        unit="stage",
    ):
        saved = [copy.deepcopy(layers[i].state_dict()) for i in group]
        for i in group:
            _randomize(layers[i], generator)
        step = [layer_name(work, layers[i]) for i in group]
        names.append(step if mode == "independent" or not names else [*names[-1], *step])
        randomized = explain(work, inputs, method, target=targets, **options)
        if mode == "independent":
            for i, state in zip(group, saved, strict=True):
                layers[i].load_state_dict(state)
        abs_maps.append(abs_map(randomized))
        signed_maps.append(signed_map(randomized))
        for name, values in _similarities(original, randomized).items():
            measures[name].append(values)
    return RandomizationResult(
        method=method,
        mode=mode,
        steps=names,
        spearman=torch.tensor(measures["spearman_abs"]),
        spearman_signed=torch.tensor(measures["spearman_signed"]),
        ssim=torch.tensor(measures["ssim"]),
        hog=torch.tensor(measures["hog"]),
        maps=torch.stack(abs_maps),
        signed_maps=torch.stack(signed_maps),
    )


def data_randomization_test(
    model: Any,
    random_model: Any,
    inputs: Tensor,
    method: str,
    *,
    target: TargetSpec = None,
    **options: Any,
) -> DataRandomization:
    """Compare ``method``'s maps on ``model`` with those on ``random_model``, the same
    architecture trained on permuted labels (for the bundled Fashion-MNIST CNN:
    ``load_model("fashion_cnn_permuted")``). Both explain the trained model's targets."""
    original = explain(model, inputs, method, target=target, **options)
    targets: TargetSpec = original.targets if original.targets is not None else target
    randomized = explain(random_model, inputs, method, target=targets, **options)
    measures = {name: torch.tensor(v) for name, v in _similarities(original, randomized).items()}
    return DataRandomization(
        method=method,
        spearman=measures["spearman_abs"],
        spearman_signed=measures["spearman_signed"],
        ssim=measures["ssim"],
        hog=measures["hog"],
        maps=torch.stack([abs_map(original), abs_map(randomized)]),
        signed_maps=torch.stack([signed_map(original), signed_map(randomized)]),
    )
