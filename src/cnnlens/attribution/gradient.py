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
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._engine import Engine, RuleSet
from .._progress import progress as progress_bar
from ..errors import InputError
from ..targets import Target
from .api import MethodFn, MethodSpec
from .rectifiers import DECONVNET, GUIDED

__all__ = [
    "METHODS",
    "deconvnet",
    "guided_backprop",
    "input_gradient",
    "input_x_gradient",
    "integrated_gradients",
    "saliency",
    "smoothgrad",
]

_DEFAULT_ROWS = 16


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
        score = target.score(output, items)
        if score.dim() != 1 or score.shape[0] != x.shape[0]:
            raise InputError(
                f"the target gave scores of shape {tuple(score.shape)} for {x.shape[0]} inputs; "
                "it must give one score per input"
            )
        if not score.requires_grad:
            raise InputError("the target score does not depend on the input")
        (grad,) = torch.autograd.grad(score.sum(), x, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    return grad, 0 if mode is None else sum(mode.counts.values())


def _rectified(
    module: nn.Module, inputs: Tensor, target: Target, rules: RuleSet, strict: bool
) -> Tensor:
    grad, calls = input_gradient(module, inputs, target, rules=rules, strict=strict)
    if calls == 0:
        warnings.warn(
            f"{rules.method}: the model made no rectifier or activation call (ReLU, SiLU, "
            "GELU, ...); the result is the plain gradient",
            stacklevel=4,
        )
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
) -> Tensor:
    """Sum over ``copies`` of ``reduce(gradient at make(k))``, where ``make(k)`` gives copy k
    of every item, (B, C, H, W); copies are batched ``batch_size`` rows at a time."""
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
            items = torch.arange(b, device=inputs.device).repeat(count)
            grad, _ = input_gradient(module, batch, target, items=items)
            total += reduce(grad).view(count, *inputs.shape).sum(dim=0)
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


def integrated_gradients(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None,
    *,
    steps: int = 32,
    baseline: float | str | Tensor = 0.0,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Sundararajan et al. 2017: (x − x') × the mean gradient along the straight path from
    the baseline x' to x, by the midpoint rule with ``steps`` points. The sum over (C, H, W)
    approaches score(x) − score(x') as ``steps`` grows (completeness)."""
    del layer
    steps = _int_option("steps", steps, 1)
    if batch_size is not None:
        batch_size = _int_option("batch_size", batch_size, 1)
    base = _baseline_tensor(baseline, inputs)
    delta = inputs - base
    _resolve_classes(module, inputs, target)

    def make(k: int) -> Tensor:
        return base + ((k + 0.5) / steps) * delta

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
    )
    return delta * total / steps


def _method(fn: Callable[..., Tensor]) -> MethodFn:
    return fn


_COPIES = frozenset({"batch_size", "progress"})

METHODS: dict[str, MethodSpec] = {
    "saliency": MethodSpec(
        _method(saliency), "input", summary="gradient of the score w.r.t. the input (Simonyan 2013)"
    ),
    "smoothgrad": MethodSpec(
        _method(smoothgrad),
        "input",
        options=frozenset({"samples", "noise", "seed", "squared"}) | _COPIES,
        summary="gradient averaged over noisy copies of the input (Smilkov 2017)",
    ),
    "deconvnet": MethodSpec(
        _method(deconvnet),
        "input",
        options=frozenset({"strict"}),
        summary="only positive gradients pass back through rectifiers (Zeiler & Fergus 2014)",
    ),
    "guided_backprop": MethodSpec(
        _method(guided_backprop),
        "input",
        options=frozenset({"strict"}),
        summary="gradients pass rectifiers where input and gradient are positive (Springenberg 2015)",
    ),
    "input_x_gradient": MethodSpec(
        _method(input_x_gradient), "input", summary="input times gradient (Shrikumar 2016)"
    ),
    "integrated_gradients": MethodSpec(
        _method(integrated_gradients),
        "input",
        options=frozenset({"steps", "baseline"}) | _COPIES,
        summary="path-integrated gradients from a baseline (Sundararajan 2017)",
    ),
}
