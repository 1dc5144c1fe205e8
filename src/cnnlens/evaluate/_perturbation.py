"""Infidelity and max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of
Explanations"), computed as captum.metrics computes them.

Both draw random perturbations. A perturbation function sees every item repeated
``samples`` times (``repeat_interleave``, as captum calls it) and draws from torch's global
generator, seeded with ``seed`` inside :func:`torch.random.fork_rng`, so the caller's random
state is left alone and the same function and seed give captum's numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._guard import unwrap
from ..attribution.api import Explanation, check_inputs, explain
from ..errors import InputError
from ..targets import TargetSpec
from ._maps import method_name, signed_map
from ._scoring import check_score, copy_scores, evaluation_target

__all__ = [
    "Infidelity",
    "MaxSensitivity",
    "gaussian_perturbation",
    "infidelity",
    "max_sensitivity",
    "uniform_perturbation",
]

InfidelityPerturbation = Callable[[Tensor], tuple[Tensor, Tensor]]
SensitivityPerturbation = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Infidelity:
    """``values`` (B,): mean over perturbations I of (β·attributionᵀI − (f(x) − f(x − I)))²
    (lower is better). ``attribution_dot`` and ``score_drops`` (B, samples) are the two
    terms per perturbation; ``beta`` (B,) the scale applied to the attribution (the least-
    squares one when ``normalized``, else 1)."""

    values: Tensor
    attribution_dot: Tensor
    score_drops: Tensor
    beta: Tensor
    normalized: bool
    method: str
    perturbation: str
    samples: int
    seed: int
    score: str


@dataclass(frozen=True)
class MaxSensitivity:
    """``values`` (B,): the largest relative change ‖e(x̃) − e(x)‖ / ‖e(x)‖ (Frobenius norm)
    of the explanation over perturbed inputs x̃ (lower is better); ``sensitivities``
    (B, samples) are all of them."""

    values: Tensor
    sensitivities: Tensor
    method: str
    perturbation: str
    samples: int
    seed: int


def gaussian_perturbation(noise: float) -> InfidelityPerturbation:
    """Yeh et al.'s noisy-baseline perturbation: I ~ N(0, noise²) per value, x̃ = x − I."""

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        perturbation = torch.randn(inputs.shape, dtype=inputs.dtype).to(inputs.device) * noise
        return perturbation, inputs - perturbation

    return perturb


def uniform_perturbation(radius: float) -> SensitivityPerturbation:
    """captum's default for sensitivity: x̃ = x + U(−radius, radius) per value."""

    def perturb(inputs: Tensor) -> Tensor:
        noise = torch.empty(inputs.shape, dtype=torch.float32).uniform_(-radius, radius)
        return inputs + noise.to(inputs.device, inputs.dtype)

    return perturb


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block, restoring the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def input_attribution(explanation: Explanation | Tensor, inputs: Tensor) -> Tensor:
    """The attribution as a tensor broadcastable to ``inputs``: input-space attributions as
    they are; layer maps and single-channel maps upsampled and shared by every channel."""
    if isinstance(explanation, Explanation):
        a = explanation.attribution.detach()
        if a.shape != inputs.shape:
            a = signed_map(explanation)[:, None]
    elif isinstance(explanation, Tensor):
        a = explanation.detach()
        if a.dim() == 3:
            a = a[:, None]
    else:
        raise InputError(
            f"expected an Explanation or an attribution tensor, got {type(explanation).__name__}"
        )
    a = a.to(inputs.device, inputs.dtype)
    try:
        return a.expand_as(inputs)
    except RuntimeError:
        raise InputError(
            f"attribution {tuple(a.shape)} does not match inputs {tuple(inputs.shape)}"
        ) from None


def _check_samples(samples: int) -> None:
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples}")


def infidelity(
    model: Any,
    inputs: Tensor,
    explanation: Explanation | Tensor,
    *,
    target: TargetSpec = None,
    perturbation: InfidelityPerturbation | None = None,
    noise: float = 0.1,
    samples: int = 10,
    seed: int = 0,
    normalize: bool = True,
    score: str = "logit",
    batch_size: int = 32,
) -> Infidelity:
    """Infidelity of an explanation (captum.metrics.infidelity with ``n_perturb_samples =
    samples``): how well attributionᵀI predicts the score drop f(x) − f(x − I) under random
    perturbations I.

    ``perturbation``: captum's ``perturb_func`` form, ``inputs -> (I, x − I)``; default
    :func:`gaussian_perturbation` with σ = ``noise`` in input units. ``normalize`` (default
    on, unlike captum) scales the attribution by the least-squares β first, as Yeh et al.
    do, so methods whose maps have arbitrary scale (Grad-CAM, occlusion) can be compared.
    ``score``: the target's logit (captum's forward output) or probability.
    """
    module = unwrap(model)
    inputs = check_inputs(inputs).detach()
    _check_samples(samples)
    kind = check_score(score)
    attribution = input_attribution(explanation, inputs)
    resolved = evaluation_target(module, inputs, target, explanation)
    batch = inputs.shape[0]
    items = torch.arange(batch, device=inputs.device)
    expanded = inputs.repeat_interleave(samples, dim=0)
    perturb = perturbation or gaussian_perturbation(noise)
    with seeded(seed), torch.no_grad():
        shifts, perturbed = perturb(expanded)
    original = copy_scores(module, resolved, inputs, items, kind, batch_size)
    changed = copy_scores(
        module, resolved, perturbed, items.repeat_interleave(samples), kind, batch_size
    )
    drops = (original.repeat_interleave(samples) - changed).view(batch, samples)
    dots = (
        (attribution.repeat_interleave(samples, dim=0) * shifts).flatten(1).sum(1).view(batch, -1)
    )
    if normalize:
        squares = dots.pow(2).sum(1)
        beta = dots.mul(drops).sum(1) / torch.where(squares != 0, squares, 1.0)
    else:
        beta = torch.ones(batch, device=dots.device, dtype=dots.dtype)
    values = (beta[:, None] * dots - drops).pow(2).mean(1)
    return Infidelity(
        values=values,
        attribution_dot=dots,
        score_drops=drops,
        beta=beta,
        normalized=normalize,
        method=method_name(explanation),
        perturbation="custom" if perturbation else f"gaussian(σ={noise})",
        samples=samples,
        seed=seed,
        score=kind,
    )


def max_sensitivity(
    model: Any,
    inputs: Tensor,
    method: str,
    *,
    target: TargetSpec = None,
    perturbation: SensitivityPerturbation | None = None,
    radius: float = 0.02,
    samples: int = 10,
    seed: int = 0,
    batch_size: int = 16,
    options: Mapping[str, Any] | None = None,
) -> MaxSensitivity:
    """Max-sensitivity of ``method`` (captum.metrics.sensitivity_max with
    ``n_perturb_samples = samples``): explain ``inputs``, then ``samples`` perturbed copies
    of each for the same targets, and take the largest relative change of the raw
    attribution. ``perturbation``: ``inputs -> perturbed inputs``; default
    :func:`uniform_perturbation` with ``radius`` (captum's default, 0.02). ``options``: the
    method's own options (a mapping, since SmoothGrad's ``samples`` and ``seed`` would
    collide with this function's)."""
    options = dict(options or {})
    module = unwrap(model)
    inputs = check_inputs(inputs).detach()
    _check_samples(samples)
    original = explain(module, inputs, method, target=target, **options)
    # The original targets for every copy (captum expands ``target`` the same way); a
    # callable target scores any batch as it is.
    targets: TargetSpec = original.targets if original.targets is not None else target
    batch = inputs.shape[0]
    perturb = perturbation or uniform_perturbation(radius)
    with seeded(seed), torch.no_grad():
        perturbed = perturb(inputs.repeat_interleave(samples, dim=0))
    per_copy = targets.repeat_interleave(samples) if isinstance(targets, Tensor) else None
    changed = []
    for first in range(0, perturbed.shape[0], batch_size):
        chunk = slice(first, first + batch_size)
        chunk_targets = targets if per_copy is None else per_copy[chunk]
        changed.append(
            explain(module, perturbed[chunk], method, target=chunk_targets, **options).attribution
        )
    reference = original.attribution.flatten(1)
    difference = torch.cat(changed).flatten(1) - reference.repeat_interleave(samples, dim=0)
    norms = reference.norm(dim=1)
    norms = torch.where(norms == 0, torch.ones_like(norms), norms)
    sensitivities = (difference.norm(dim=1) / norms.repeat_interleave(samples)).view(batch, -1)
    return MaxSensitivity(
        values=sensitivities.amax(dim=1),
        sensitivities=sensitivities,
        method=method,
        perturbation="custom" if perturbation else f"uniform(±{radius})",
        samples=samples,
        seed=seed,
    )
