"""Feature visualization by regularized gradient ascent on the input.

:func:`visualize` is the public entry point; the parts live in their own modules —
:mod:`.param` (pixel and decorrelated Fourier parametrizations), :mod:`.transforms`
(jitter, scale, rotation in one resampling), :mod:`.objectives` (class logit, channel,
neuron, diversity; composable with ``+ - *``) and :mod:`.optimize` (the loop, returning
tensors). Saving and showing is the caller's business (the CLI, :mod:`cnnlens.render`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..._guard import guard
from ..._modules import layer_name
from ..._trace import default_feature_layer
from .objectives import (
    Context,
    Objective,
    ObjectiveSpec,
    as_objective,
    channel,
    class_logit,
    diversity,
    neuron,
)
from .optimize import (
    FAST_STEPS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    Rendering,
    Settings,
    render,
    settings_for,
)

if TYPE_CHECKING:
    from ...models import LoadedModel

__all__ = [
    "FAST_STEPS",
    "RECIPES",
    "Context",
    "Objective",
    "Rendering",
    "Settings",
    "as_objective",
    "channel",
    "class_logit",
    "diversity",
    "neuron",
    "render",
    "resolve_settings",
    "visualize",
]


def _objective_list(objective: ObjectiveSpec | Sequence[ObjectiveSpec]) -> list[Objective]:
    if isinstance(objective, (list, tuple)):
        from ...errors import InputError

        if not objective:
            raise InputError("visualize needs at least one objective")
        return [as_objective(o) for o in objective]
    return [as_objective(objective)]  # type: ignore[arg-type]


def resolve_settings(
    model: nn.Module | LoadedModel, recipe: str = "lucid", **regularizers: Any
) -> Settings:
    """The settings ``visualize`` would use: the recipe, the overrides, and size/mean/std
    from the LoadedModel's preprocessing (or 224×224 and ImageNet statistics)."""
    settings = settings_for(recipe, **regularizers)
    preprocessing = getattr(model, "preprocessing", None)
    size = settings.size or getattr(preprocessing, "crop", None) or (224, 224)
    mean = settings.mean or getattr(preprocessing, "mean", None) or IMAGENET_MEAN
    std = settings.std or getattr(preprocessing, "std", None) or IMAGENET_STD
    grayscale = bool(settings.grayscale or getattr(preprocessing, "grayscale", False))
    return settings_for(
        recipe,
        **{
            **regularizers,
            "size": tuple(size),
            "mean": tuple(mean),
            "std": tuple(std),
            "grayscale": grayscale,
        },
    )


def visualize(
    model: nn.Module | LoadedModel,
    objective: ObjectiveSpec | Sequence[ObjectiveSpec],
    *,
    steps: int = 256,
    seed: int = 0,
    recipe: str = "lucid",
    **regularizers: Any,
) -> Tensor:
    """Images that maximize ``objective``, (1, 3, H, W) in [0, 1] pixel space (or
    (N, 3, H, W) for a list of N objectives, optimized together as one batch).

    ``objective``: a class index (its logit), ``"layer:channel"`` (the channel's mean
    activation), an :class:`Objective` (``class_logit``, ``channel``, ``neuron``,
    ``diversity`` and their ``+ - *`` combinations) or a callable ``output -> Tensor (N,)``.

    ``recipe="lucid"`` (default): decorrelated Fourier parametrization, Adam, random
    jitter/scale/rotation. ``recipe="simonyan"``: Simonyan et al. 2013, gradient ascent on
    the pixels of a blank image maximizing S_c(I) − λ‖I‖² (``l2=λ``), nothing else.
    ``regularizers`` override single settings (see :class:`Settings`): ``param``,
    ``init``, ``lr``, ``l2``, ``tv``, ``jitter``, ``scale``, ``rotate``, ``blur_every``,
    ``blur_sigma``, ``normalize_grad``, ``diversity`` (weight of the batch diversity term),
    ``diversity_layer``, ``size``, ``mean``, ``std``, ``progress`` ...

    Deterministic for a given ``seed`` on the CPU. The model is left as it was: eval mode
    and ``requires_grad`` flags restored, no parameter gradients, no hooks.
    """
    objectives = _objective_list(objective)
    settings = resolve_settings(model, recipe, **regularizers)
    with guard(model) as module:
        if settings.diversity > 0 and len(objectives) > 1:
            layer = settings.diversity_layer
            if layer is None:
                layered = [name for o in objectives for name in sorted(o.layers)]
                if layered:
                    layer = layered[0]
                else:
                    assert settings.size is not None
                    device = next((p.device for p in module.parameters()), torch.device("cpu"))
                    probe = torch.zeros(1, 3, *settings.size, device=device)
                    with torch.no_grad():
                        layer = layer_name(module, default_feature_layer(module, probe))
            term = settings.diversity * diversity(layer)
            objectives = [o + term for o in objectives]
        return render(module, objectives, settings, steps=steps, seed=seed).images
