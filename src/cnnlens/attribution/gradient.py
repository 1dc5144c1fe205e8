"""Gradient methods: saliency, SmoothGrad, deconvnet, guided backpropagation,
input × gradient and integrated gradients.

Every method takes gradients with respect to the input only, with
``torch.autograd.grad`` (``explain`` has already turned parameter gradients off), so the
cost of one explanation is one forward and one input backward pass. Methods that evaluate
several copies per item (SmoothGrad, integrated gradients) batch the copies, ``batch_size``
rows per pass, and fix class targets from the clean input first.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .._engine import Engine, RuleSet
from .._progress import progress as progress_bar
from ..errors import CompletenessWarning, InputError
from ..targets import Target
from .api import MethodFn, MethodResult, MethodSpec
from .rectifiers import DECONVNET, GUIDED

__all__ = [
    "COMPLETENESS_TOLERANCE",
    "DEFAULT_STEPS",
    "MAX_ADAPTIVE_STEPS",
    "METHODS",
    "PATH_RULES",
    "completeness_gap",
    "deconvnet",
    "guided_backprop",
    "input_gradient",
    "input_x_gradient",
    "integrated_gradients",
    "path_points",
    "saliency",
    "smoothgrad",
    "warn_if_plain",
]

_DEFAULT_ROWS = 16

DEFAULT_STEPS = 64
"""Integrated gradients' first number of path points (Gauss–Legendre) when adapting."""

MAX_ADAPTIVE_STEPS = 1024
"""The most path points integrated gradients adapts to by default before it warns
(``max_steps``). 512 left 1.5 % and 3.8 % gaps on the rough paths of random MobileNet-v2
and RegNetY-400MF (whose scores rise and fall along the path, 4× and 8× their net change);
1024 closes both (docs/architectures.md)."""


def input_gradient(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    *,
    rules: RuleSet | None = None,
    items: Tensor | None = None,
    strict: bool = False,
) -> tuple[Tensor, int]:
    """The gradient of the target scores w.r.t. ``inputs`` and the number of calls given a
    rule other than the gradient (0 without ``rules``).

    ``items`` maps rows of ``inputs`` to items of the explained batch (see
    :meth:`Target.score`). With ``rules``, the forward pass runs under the interception
    engine with them (``strict``: an operation without a rule is an error).
    """
    x = inputs.detach().requires_grad_()
    mode = Engine(rules, model=module, strict=strict) if rules is not None else None
    with torch.enable_grad():
        with mode if mode is not None else contextlib.nullcontext():
            output = module(x)
        score = target.input_scores(output, items)
        (grad,) = torch.autograd.grad(score.sum(), x, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    return grad, 0 if mode is None else sum(mode.counts.values())


def warn_if_plain(rules: RuleSet, calls: int, *, stacklevel: int) -> None:
    """Warn that a rectifier method gave the plain gradient: no call got its rule."""
    if calls == 0:
        warnings.warn(
            f"{rules.method}: the model made no rectifier or activation call (ReLU, SiLU, "
            "GELU, ...); the result is the plain gradient",
            stacklevel=stacklevel + 1,
        )


def _rectified(
    module: nn.Module, inputs: Tensor, target: Target, rules: RuleSet, strict: bool
) -> Tensor:
    grad, calls = input_gradient(module, inputs, target, rules=rules, strict=strict)
    warn_if_plain(rules, calls, stacklevel=4)
    return grad


def saliency(module: nn.Module, inputs: Tensor, target: Target, layer: nn.Module | None) -> Tensor:
    """Simonyan et al. 2013: the gradient of the score w.r.t. the input."""
    del layer
    return input_gradient(module, inputs, target)[0]


def input_x_gradient(
    module: nn.Module, inputs: Tensor, target: Target, layer: nn.Module | None
) -> Tensor:
    """Shrikumar et al. 2016: the input times the gradient of the score."""
    del layer
    return inputs * input_gradient(module, inputs, target)[0]


def deconvnet(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None,
    *,
    strict: bool = False,
) -> Tensor:
    """Zeiler & Fergus 2014: at every rectifier only positive gradients pass back, whatever
    the rectifier's input was; at other activations max(g, 0) (see :mod:`.rectifiers`)."""
    del layer
    return _rectified(module, inputs, target, DECONVNET, strict)


def guided_backprop(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None,
    *,
    strict: bool = False,
) -> Tensor:
    """Springenberg et al. 2015: at every rectifier the gradient passes back only where the
    rectifier's input was positive and the gradient is positive; at other activations
    max(f'(x)·g, 0) (see :mod:`.rectifiers`)."""
    del layer
    return _rectified(module, inputs, target, GUIDED, strict)


def _int_option(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _float_option(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return result


def _resolve_classes(module: nn.Module, inputs: Tensor, target: Target) -> None:
    """Fix top-class targets from one clean forward pass (before any copies are scored)."""
    if target.is_callable or target.classes is not None:
        return
    with torch.no_grad():
        target.resolve(module(inputs))


def _copies_gradient(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    copies: int,
    make: Callable[[int], Tensor],
    reduce: Callable[[Tensor], Tensor],
    *,
    batch_size: int | None,
    progress: bool | None,
    desc: str,
    weights: Sequence[float] | None = None,
    ids: Tensor | None = None,
) -> Tensor:
    """Sum over ``copies`` of ``reduce(gradient at make(k))`` (times ``weights[k]`` when
    given), where ``make(k)`` gives copy k of every item, (B, C, H, W); copies are batched
    ``batch_size`` rows at a time. ``ids`` names the item of the explained batch that each
    row of ``inputs`` is (default: row i is item i)."""
    b = inputs.shape[0]
    rows = max(b, _DEFAULT_ROWS) if batch_size is None else batch_size
    per_pass = max(1, rows // b)
    total = torch.zeros_like(inputs)
    starts = range(0, copies, per_pass)
    # One pass is quick: a bar only when the copies take several.
    shown = progress if progress is not None else (None if len(starts) > 1 else False)
    with progress_bar(copies, desc, enabled=shown, unit="copy") as bar:
        for start in starts:
            count = min(per_pass, copies - start)
            batch = torch.cat([make(start + k) for k in range(count)])
            owners = torch.arange(b) if ids is None else ids
            items = owners.to(inputs.device).repeat(count)
            grad, _ = input_gradient(module, batch, target, items=items)
            values = reduce(grad).view(count, *inputs.shape)
            if weights is not None:
                scale = torch.tensor(weights[start : start + count], dtype=values.dtype)
                values = values * scale.to(values.device).view(-1, 1, 1, 1, 1)
            total += values.sum(dim=0)
            bar.advance(count)
    return total


def smoothgrad(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None,
    *,
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
    squared: bool = False,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Smilkov et al. 2017: the mean gradient over ``samples`` copies of each input with
    Gaussian noise of σ = ``noise`` × (max − min of that input) added; with ``squared`` the
    mean of the squared gradients.

    The noise is drawn from a generator seeded with ``seed``, the same sequence of noise
    patterns for every item, so an item's result does not depend on the rest of the batch.
    """
    del layer
    samples = _int_option("samples", samples, 1)
    noise = _float_option("noise", noise)
    seed = _int_option("seed", seed, 0)
    if batch_size is not None:
        batch_size = _int_option("batch_size", batch_size, 1)
    _resolve_classes(module, inputs, target)
    lo = inputs.flatten(1).amin(dim=1)
    hi = inputs.flatten(1).amax(dim=1)
    sigma = (noise * (hi - lo)).view(-1, 1, 1, 1)
    # Drawn on the CPU so a seed gives the same noise on every device.
    generator = torch.Generator().manual_seed(seed)

    def make(_k: int) -> Tensor:
        # Drawn in order, one (C, H, W) pattern per copy: the same for any batching.
        pattern = torch.randn(inputs.shape[1:], generator=generator, dtype=inputs.dtype)
        return inputs + sigma * pattern.to(inputs.device)

    def reduce(grad: Tensor) -> Tensor:
        return grad * grad if squared else grad

    total = _copies_gradient(
        module,
        inputs,
        target,
        samples,
        make,
        reduce,
        batch_size=batch_size,
        progress=progress,
        desc="smoothgrad",
    )
    return total / samples


def _baseline_tensor(baseline: object, inputs: Tensor) -> Tensor:
    if isinstance(baseline, str):
        if baseline != "zeros":
            raise InputError(f"baseline must be a number, a tensor or 'zeros', got {baseline!r}")
        return torch.zeros_like(inputs)
    if isinstance(baseline, bool):
        raise InputError("baseline must be a number, a tensor or 'zeros'")
    if isinstance(baseline, (int, float)):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, Tensor):
        try:
            return baseline.detach().to(inputs).expand_as(inputs)
        except RuntimeError:
            raise InputError(
                f"baseline of shape {tuple(baseline.shape)} does not match inputs "
                f"{tuple(inputs.shape)}"
            ) from None
    raise InputError(
        f"baseline must be a number, a tensor or 'zeros', got {type(baseline).__name__}"
    )


PATH_RULES = (
    "gausslegendre",
    "riemann_middle",
    "riemann_trapezoid",
    "riemann_left",
    "riemann_right",
)
"""Quadrature rules for the path integral of integrated gradients (captum's names)."""

COMPLETENESS_TOLERANCE = 0.01
"""Relative completeness gap above which integrated gradients warns (see
:func:`completeness_gap`)."""


def path_points(steps: int, rule: str = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Positions α in [0, 1] along the path and their weights (summing to 1), float64.

    ``gausslegendre``: the ``steps``-point Gauss–Legendre rule mapped to [0, 1] (exact for
    polynomials of degree < 2·steps; no endpoint is evaluated). ``riemann_middle``: α =
    (k + ½)/steps. ``riemann_trapezoid``: ``steps`` evenly spaced points from 0 to 1 (at
    least 2), the end points at half weight. ``riemann_left``/``riemann_right``: k/steps and
    (k + 1)/steps. The same rules and names as captum's ``IntegratedGradients`` (whose
    trapezoid weights are 1/steps at spacing 1/(steps − 1), summing to (steps − 1)/steps;
    these are the trapezoid rule's).
    """
    if rule == "gausslegendre":
        nodes, gauss = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(gauss / 2)
    k = torch.arange(steps, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise InputError("riemann_trapezoid needs steps >= 2")
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    offsets = {"riemann_middle": 0.5, "riemann_left": 0.0, "riemann_right": 1.0}
    if rule not in offsets:
        raise InputError(f"rule must be one of {', '.join(PATH_RULES)}, got {rule!r}")
    return (k + offsets[rule]) / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


def completeness_gap(delta: Tensor, score: Tensor, baseline_score: Tensor) -> Tensor:
    """The relative completeness gap per item: ``|delta| / |score − baseline_score|``, where
    ``delta`` = Σ attributions − (score − baseline_score) (captum's convergence delta), less
    the rounding of the scores themselves (64 ulps of the larger): a score that barely
    changes (a logit of 0.4 changing by 1e-15) is not reported as far from complete because
    of its last bits.

    When the score does not change along the path the denominator is taken as the machine
    epsilon times the scores' magnitude, so an exact zero gap stays 0 and any other gap is
    reported as large rather than divided by zero.
    """
    change = (score - baseline_score).abs()
    scale = torch.finfo(change.dtype).eps * torch.maximum(score.abs(), baseline_score.abs())
    floor = torch.maximum(scale, torch.full_like(scale, torch.finfo(change.dtype).tiny))
    excess = (delta.abs() - 64 * scale).clamp(min=0)
    return excess / torch.maximum(change, floor)


def _endpoint_scores(
    module: nn.Module, inputs: Tensor, base: Tensor, target: Target
) -> tuple[Tensor, Tensor]:
    """The target scores of the inputs and of their baselines (one forward pass each, no
    gradients); fixes top-class targets from the inputs first."""
    with torch.no_grad():
        output = module(inputs)
        target.resolve(output)
        score = target.score(output)
        baseline_score = target.score(module(base))
    return score.detach(), baseline_score.detach()


def _warn_incomplete(gap: Tensor, steps: int, rule: str, adaptive: bool) -> None:
    worst = float(gap.max())
    if worst > COMPLETENESS_TOLERANCE:
        items = [int(i) for i in torch.nonzero(gap > COMPLETENESS_TOLERANCE).flatten()]
        # The adaptive default only pays the larger count for the items still off.
        api = f"max_steps={4 * steps}" if adaptive else f"steps={4 * steps}"
        warnings.warn(
            f"integrated_gradients: the attributions' sum misses score(x) − score(baseline) "
            f"by up to {worst:.1%} (items {items}) with {steps} {rule} steps; "
            f"the path integral is under-resolved: use more steps (e.g. {api} in the "
            f"API, --steps {4 * steps} with cnnlens explain)",
            CompletenessWarning,
            stacklevel=4,
        )


def _path_integral(
    module: nn.Module,
    inputs: Tensor,
    base: Tensor,
    target: Target,
    ids: Tensor,
    steps: int,
    rule: str,
    *,
    batch_size: int | None,
    progress: bool | None,
) -> Tensor:
    """(x − x') × the ``rule``'s weighted sum of gradients at ``steps`` points of the path,
    for the items ``ids`` of the explained batch (rows of ``inputs`` and ``base``)."""
    alphas, weights = path_points(steps, rule)
    positions = alphas.tolist()
    delta = inputs - base

    def make(k: int) -> Tensor:
        return base + positions[k] * delta

    total = _copies_gradient(
        module,
        inputs,
        target,
        steps,
        make,
        lambda grad: grad,
        batch_size=batch_size,
        progress=progress,
        desc="integrated gradients",
        weights=weights.tolist(),
        ids=ids,
    )
    return delta * total


def integrated_gradients(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None,
    *,
    steps: int | None = None,
    max_steps: int = MAX_ADAPTIVE_STEPS,
    rule: str = "gausslegendre",
    baseline: float | str | Tensor = 0.0,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> MethodResult:
    """Sundararajan et al. 2017: (x − x') × the weighted mean gradient at ``steps`` points
    of the straight path from the baseline x' to x, placed and weighted by ``rule`` (see
    :func:`path_points`; default: Gauss–Legendre, as captum).

    Each item's attributions sum to score(x) − score(x') up to the quadrature error
    (completeness). That error is reported with every result: ``extras["delta"]`` is
    Σ attributions − (score(x) − score(x')) per item (captum's convergence delta),
    ``extras["relative_delta"]`` is |delta| / |score(x) − score(x')|
    (:func:`completeness_gap`), ``extras["steps"]`` the number of points used and
    ``extras["score"]`` / ``extras["baseline_score"]`` the two scores.

    ``steps=None`` (the default) adapts: 64 points, doubled (64 → 128 → … → ``max_steps``,
    default 1024) for the items whose relative gap still exceeds 1 %, each item on its own,
    so the result of an item does not depend on the rest of the batch; the doubling only
    costs on rough paths, where the score rises and falls between baseline and input. A
    given ``steps`` is used as is. Either way a :class:`~cnnlens.CompletenessWarning` is
    issued when an item's relative gap exceeds 1 % at the end: a larger ``max_steps`` (or
    ``steps``) then closes it (a random VGG19 needs 4096, see ``docs/architectures.md``).
    Costs two forward passes (the input and the baseline) besides the gradient evaluations.
    """
    del layer
    fixed = steps is not None
    count = _int_option("steps", steps, 1) if steps is not None else DEFAULT_STEPS
    cap = _int_option("max_steps", max_steps, 1)
    if not fixed:
        count = min(count, cap)
    if batch_size is not None:
        batch_size = _int_option("batch_size", batch_size, 1)
    if not isinstance(rule, str):
        raise InputError(f"rule must be one of {', '.join(PATH_RULES)}, got {rule!r}")
    path_points(count, rule)  # checks the rule and steps before any model call
    base = _baseline_tensor(baseline, inputs)
    score, baseline_score = _endpoint_scores(module, inputs, base, target)
    change = (score - baseline_score).to(inputs.dtype)
    attribution = torch.zeros_like(inputs)
    used = torch.zeros(inputs.shape[0], dtype=torch.long)
    todo = torch.arange(inputs.shape[0])
    while True:
        rows = todo.to(inputs.device)
        attribution[rows] = _path_integral(
            module,
            inputs[rows],
            base[rows],
            target,
            todo,
            count,
            rule,
            batch_size=batch_size,
            progress=progress,
        )
        used[todo] = count
        gap = attribution.flatten(1).sum(dim=1) - change
        relative = completeness_gap(gap, score.to(gap.dtype), baseline_score.to(gap.dtype))
        todo = torch.nonzero(relative.cpu() > COMPLETENESS_TOLERANCE).flatten()
        if fixed or len(todo) == 0 or count * 2 > cap:
            break
        count *= 2
    _warn_incomplete(relative, count, rule, adaptive=not fixed)
    return MethodResult(
        attribution,
        {
            "delta": gap,
            "relative_delta": relative,
            "steps": used,
            "score": score,
            "baseline_score": baseline_score,
        },
    )


def _method(fn: Callable[..., Tensor | MethodResult]) -> MethodFn:
    return fn


_COPIES = frozenset({"batch_size", "progress"})
_RECTIFIED_ZERO = (
    "no positive gradient passed every rectifier back to the input; try saliency, which "
    "keeps the negative gradients"
)

METHODS: dict[str, MethodSpec] = {
    "saliency": MethodSpec(
        _method(saliency),
        "input",
        torchscript=True,
        summary="gradient of the score w.r.t. the input (Simonyan 2013)",
    ),
    "smoothgrad": MethodSpec(
        _method(smoothgrad),
        "input",
        torchscript=True,
        options=frozenset({"samples", "noise", "seed", "squared"}) | _COPIES,
        summary="gradient averaged over noisy copies of the input (Smilkov 2017)",
    ),
    "deconvnet": MethodSpec(
        _method(deconvnet),
        "input",
        options=frozenset({"strict"}),
        summary="only positive gradients pass back through rectifiers (Zeiler & Fergus 2014)",
        if_zero=_RECTIFIED_ZERO,
    ),
    "guided_backprop": MethodSpec(
        _method(guided_backprop),
        "input",
        options=frozenset({"strict"}),
        summary="gradients pass rectifiers where input and gradient are positive (Springenberg 2015)",
        if_zero=_RECTIFIED_ZERO,
    ),
    "input_x_gradient": MethodSpec(
        _method(input_x_gradient),
        "input",
        torchscript=True,
        summary="input times gradient (Shrikumar 2016)",
    ),
    "integrated_gradients": MethodSpec(
        _method(integrated_gradients),
        "input",
        torchscript=True,
        options=frozenset({"steps", "max_steps", "rule", "baseline"}) | _COPIES,
        summary="path-integrated gradients from a baseline (Sundararajan 2017)",
    ),
}
