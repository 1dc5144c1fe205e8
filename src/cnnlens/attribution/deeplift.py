"""DeepLIFT (Shrikumar et al. 2017) with the Rescale rule.

attribution = m × (input − baseline), where m holds DeepLIFT's multipliers from the score
to the input: the chain rule over multipliers Δy/Δx, which are the weights for linear
operations (convolutions, linear layers, eval-mode batch norm, average pooling, residual
additions, concatenations, layer scales) and given by the Rescale rule for rectifiers
(ReLU, ReLU6) and every other elementwise activation (SiLU, GELU, Hardswish, sigmoid, ...).
Products of two activations (squeeze-and-excitation gates) take the exact two-term split,
layer/group/instance norms are decomposed into exact steps, and max pooling splits each
window's output difference between the input's and the baseline's winners (see
:mod:`._deeplift_rules`). Every rule is exact, so the attributions of an item sum over
(C, H, W) to score(input) − score(baseline) (summation-to-delta); on a network without
nonlinearities they equal gradient × (input − baseline). An operation without an exact
rule (softmax, a max over a dimension) is named in a warning (``strict=True``: an error).

Cost: one forward pass of the baseline without gradients (a single item when the baseline
is shared by the batch), one forward and one backward pass of the input. Works on the
unmodified model — a ReLU module called at several places (torchvision's ResNet), functional
rectifiers (DenseNet) and ReLU6 (EfficientNet-Lite, MobileNet) included — and attaches
nothing to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._engine import Engine
from .._ops import all_dependent
from .._progress import track
from ..errors import InputError
from ..targets import Target
from ._deeplift_rules import DeepLift
from .api import MethodFn, MethodSpec

__all__ = ["METHODS", "deeplift", "deeplift_references"]

BaselineSpec = str | float | Tensor | Sequence[Tensor]


def _one_reference(value: object, inputs: Tensor, what: str) -> Tensor:
    b, c, h, w = inputs.shape
    if isinstance(value, str):
        if value != "zeros":
            raise InputError(f"{what} must be 'zeros', a number or a tensor, got {value!r}")
        return torch.zeros(1, c, h, w, dtype=inputs.dtype, device=inputs.device)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((1, c, h, w), float(value), dtype=inputs.dtype, device=inputs.device)
    if not isinstance(value, Tensor):
        raise InputError(
            f"{what} must be 'zeros', a number or a tensor, got {type(value).__name__}"
        )
    ref = value.detach().to(device=inputs.device, dtype=inputs.dtype)
    if ref.dim() == 3:
        ref = ref.unsqueeze(0)
    if ref.dim() != 4 or ref.shape[0] not in (1, b) or tuple(ref.shape[1:]) != (c, h, w):
        raise InputError(
            f"{what} of shape {tuple(value.shape)} does not fit inputs {tuple(inputs.shape)}; "
            "give (C, H, W), (1, C, H, W) or (B, C, H, W)"
        )
    return ref


def deeplift_references(
    inputs: Tensor, baseline: object = "zeros", baselines: object = None
) -> list[Tensor]:
    """The baselines to average over, each (1, C, H, W) (shared) or (B, C, H, W) (per item).

    ``baseline``: ``"zeros"``, a number (constant image), a tensor ((C, H, W),
    (1, C, H, W) or (B, C, H, W)), or a list/tuple of such tensors (averaged).
    ``baselines``: a tensor (N, C, H, W) of N baselines shared by every item (averaged).
    """
    if baselines is not None:
        if not (isinstance(baseline, str) and baseline == "zeros"):
            raise InputError("give either baseline or baselines, not both")
        if not isinstance(baselines, Tensor) or baselines.dim() != 4 or baselines.shape[0] < 1:
            raise InputError("baselines must be a tensor (N, C, H, W) of N >= 1 baselines")
        return [_one_reference(t.unsqueeze(0), inputs, "baselines") for t in baselines]
    if isinstance(baseline, (list, tuple)):
        if not baseline:
            raise InputError("baseline is an empty list")
        return [_one_reference(t, inputs, "each baseline") for t in baseline]
    return [_one_reference(baseline, inputs, "baseline")]


def _reference_pass(module: nn.Module, reference: Tensor, run: DeepLift) -> DeepLift:
    with torch.no_grad(), all_dependent(), Engine(run.reference_rules(), warn=False):
        module(reference)
    return run


def _multipliers(
    module: nn.Module, inputs: Tensor, reference: Tensor, target: Target, strict: bool
) -> Tensor:
    """DeepLIFT multipliers from the target score to ``inputs`` against ``reference``."""
    # Both passes treat every tensor as input-dependent, so that they classify calls the
    # same way although only the second has gradients (a product with a constant then gets
    # the product split, which is exact for it too).
    run = _reference_pass(module, reference, DeepLift())
    if run.overwritten():  # the model wrote in place over what the pass kept
        run = _reference_pass(module, reference, DeepLift(copy=True))
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad(), all_dependent():
        with Engine(run.input_rules(), model=module, strict=strict):
            output = module(x)
        if run.used != len(run.records):
            raise RuntimeError(
                f"the model made {run.used} nonlinear calls on the input and "
                f"{len(run.records)} on the baseline; DeepLIFT needs the same sequence "
                "of operations for both"
            )
        target.resolve(output)
        score = target.input_scores(output)
        (grad,) = torch.autograd.grad(score.sum(), x, allow_unused=True)
    return torch.zeros_like(inputs) if grad is None else grad


def deeplift(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None = None,
    *,
    baseline: BaselineSpec = "zeros",
    baselines: Tensor | None = None,
    progress: bool | None = None,
    strict: bool = False,
) -> Tensor:
    """DeepLIFT-Rescale attributions (B, C, H, W); each item sums to
    score(input) − score(baseline), or to score(input) − mean score(baselines) when several
    baselines are averaged (see :func:`deeplift_references` for the forms accepted)."""
    del layer
    references = deeplift_references(inputs, baseline, baselines)
    total = torch.zeros_like(inputs)
    shown = progress if progress is not None else (None if len(references) > 1 else False)
    for reference in track(references, "deeplift", enabled=shown, unit="baseline"):
        total += _multipliers(module, inputs, reference, target, strict) * (inputs - reference)
    return total / len(references)


def _method(fn: Callable[..., Tensor]) -> MethodFn:
    return fn


METHODS: dict[str, MethodSpec] = {
    "deeplift": MethodSpec(
        fn=_method(deeplift),
        kind="input",
        options=frozenset({"baseline", "baselines", "progress", "strict"}),
        summary="DeepLIFT-Rescale: sums to score(input) − score(baseline) (Shrikumar et al. 2017)",
        if_zero=(
            "the input equals the baseline, or no difference from the baseline reached the "
            "score; try another baseline"
        ),
    ),
}
