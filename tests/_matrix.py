"""The architecture matrix: classification CNNs × every method of ``cnnlens.METHODS``.

Shared by ``tests/test_architectures.py`` (one architecture per family in the default run,
the whole matrix behind ``slow``) and ``scripts/architecture_matrix.py`` (which writes
``docs/architectures.md``).

Models get random weights made non-degenerate (:func:`randomize`): a fresh torchvision
model has zero biases, BatchNorm at identity statistics and, for ConvNeXt, layer scales of
1e-6, which makes it nearly scale-invariant in its input (x·∇f ≈ 0, f(0) ≈ 0) and hides
every completeness error. Everything runs in float64 on the smallest input the architecture
allows (at least 16 px), batch of two.

Each cell (architecture, method) checks:

* the method runs (``cam`` may refuse a head that is not GAP + linear with ``InputError``);
* no warning is issued (an all-zero result's ``ZeroAttributionWarning`` is recorded as the
  cell's outcome instead: it is the documented behaviour, not an engine fallback);
* the model is left untouched (parameters, buffers, train flags, ``requires_grad``,
  gradients, hooks);
* the first item explained alone equals the same item explained in the batch;
* the method's axiom, where it has one: DeepLIFT sums to score(x) − score(0) within 1e-6
  (relative); integrated gradients at its default steps sums to score(x) − score(0) within
  1 % and reports that gap in ``extras``; LRP on a bias-free copy of the model sums to the
  explained logit within 1e-3.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens import CompletenessWarning, InputError, ZeroAttributionWarning
from cnnlens._hooks import count_hooks
from cnnlens.attribution.gradient import completeness_gap
from cnnlens.attribution.lrp import Composite, relevance
from cnnlens.attribution.lrp.rules import epsilon
from cnnlens.targets import resolve_target

D = torch.float64

NOT_CNNS = ("vit_", "swin_", "maxvit_")
"""torchvision classification builders that are transformers (not in the matrix)."""

FAMILIES: dict[str, str] = {
    "alexnet": "AlexNet",
    "vgg11_bn": "VGG",
    "resnet18": "ResNet",
    "resnext50_32x4d": "ResNeXt / Wide ResNet",
    "densenet121": "DenseNet",
    "googlenet": "GoogLeNet",
    "inception_v3": "Inception-v3",
    "squeezenet1_0": "SqueezeNet",
    "shufflenet_v2_x0_5": "ShuffleNet-v2",
    "mobilenet_v2": "MobileNet-v2",
    "mobilenet_v3_small": "MobileNet-v3",
    "mnasnet0_5": "MNASNet",
    "efficientnet_b0": "EfficientNet",
    "regnet_y_400mf": "RegNet",
    "convnext_tiny": "ConvNeXt",
}
"""One torchvision architecture per family: the default (non-slow) test run."""

TIMM_ARCHITECTURES = (
    "resnet26d",
    "efficientnet_b0",
    "convnext_atto",
    "regnety_002",
    "mobilenetv3_small_050",
)
"""timm CNNs (random init, no download): a ResNet-D, EfficientNet, ConvNeXt, RegNetY and
MobileNetV3."""

METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "smoothgrad": {"samples": 4, "progress": False},
    "integrated_gradients": {"progress": False},  # its default (adaptive) steps
    "occlusion": {"window": 16, "stride": 16},
    "scorecam": {"batch_size": 128, "progress": False},
    "deeplift": {"progress": False},
}
"""Options that keep the matrix affordable without changing what is checked."""

ARCHITECTURE_OPTIONS: dict[tuple[str, str], tuple[dict[str, Any], str]] = {
    ("vgg19", "integrated_gradients"): (
        {"max_steps": 4096},
        "along random VGG19's path from 0 to its inputs the score rises and falls 15.5 "
        "times its net change; Gauss–Legendre is 9.0 % from complete at the default cap "
        "of 1024 points (and warns so), 2.7 % at 2048, 0.47 % at 4096",
    ),
}
"""Cells whose method's default is documented not to suffice on that architecture: (the
options passed instead, why); listed in ``docs/architectures.md``."""


def options(name: str, method: str) -> dict[str, Any]:
    """The options the matrix passes to ``explain`` for this cell."""
    own = ARCHITECTURE_OPTIONS.get((name, method))
    return {**METHOD_OPTIONS.get(method, {}), **(own[0] if own else {})}


DEEPLIFT_TOLERANCE = 1e-6
IG_TOLERANCE = 1e-2
LRP_TOLERANCE = 1e-3


def family(name: str) -> str:
    """The family of a torchvision builder name (a key of ``FAMILIES.values()``)."""
    for label in FAMILIES.values():
        prefixes = _PREFIXES.get(label, (label.lower(),))
        if name.startswith(prefixes):
            return label
    raise KeyError(f"{name}: no family")


_PREFIXES: dict[str, tuple[str, ...]] = {
    "ResNet": ("resnet",),
    "ResNeXt / Wide ResNet": ("resnext", "wide_resnet"),
    "Inception-v3": ("inception",),
    "ShuffleNet-v2": ("shufflenet",),
    "MobileNet-v2": ("mobilenet_v2",),
    "MobileNet-v3": ("mobilenet_v3",),
}


def torchvision_architectures() -> list[str]:
    """Every classification CNN builder of ``torchvision.models``."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in names if not n.startswith(NOT_CNNS)]


# ---------------------------------------------------------------------------------------
# Models


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights made non-degenerate, in place: BatchNorm running statistics and affine
    parameters, LayerNorm/GroupNorm affine parameters, every bias and every layer scale drawn
    at random (scales kept near 1).

    Statistics drawn without looking at data leave some deep networks nearly constant (a
    random EfficientNet-B0's logit changes by ~1e-15 between the input and a zero image);
    fitting them to the inputs instead makes them chaotic along a path (a RegNetY-400MF's
    score varies 1000 times more than it changes, so no quadrature of the path integral
    converges). Neither is a trained network; this is the first, and the checks measure
    errors against scales that stay meaningful there (see :func:`summation_error`)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(t: Tensor, low: float, high: float) -> Tensor:
        return torch.rand(t.shape, generator=g, dtype=t.dtype) * (high - low) + low

    def normal(t: Tensor, std: float) -> Tensor:
        return torch.randn(t.shape, generator=g, dtype=t.dtype) * std

    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, nn.modules.batchnorm._NormBase)
                and module.running_mean is not None
            ):
                assert module.running_var is not None
                module.running_mean.copy_(normal(module.running_mean, 0.1))
                module.running_var.copy_(uniform(module.running_var, 0.5, 1.5))
            norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
            if isinstance(module, norms) and isinstance(module.weight, Tensor):
                module.weight.copy_(uniform(module.weight, 0.5, 1.5))
                if isinstance(module.bias, Tensor):
                    module.bias.copy_(normal(module.bias, 0.1))
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(normal(module.bias, 0.1))
            for name, parameter in module.named_parameters(recurse=False):
                if name in ("layer_scale", "gamma", "ls1", "ls2"):  # torchvision / timm
                    parameter.copy_(uniform(parameter, 0.3, 0.7))
            for name, child in module.named_children():
                if name in ("ls1", "ls2") and isinstance(getattr(child, "gamma", None), Tensor):
                    child.gamma.copy_(uniform(child.gamma, 0.3, 0.7))
    return model


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._NormBase]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_var is not None
    ]


def _calibrated(
    model: nn.Module, inputs: Tensor, set_stats: Callable[[nn.Module, Tensor], None]
) -> None:
    """One forward pass of ``inputs`` in which each BatchNorm first gets its running
    statistics from what it receives (``set_stats(norm, input)``), so later layers see the
    result."""
    handles = [
        m.register_forward_pre_hook(lambda m, args: set_stats(m, args[0])) for m in _norms(model)
    ]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()


def bias_free(model: nn.Module, inputs: Tensor) -> nn.Module:
    """A copy without any additive constant: biases, BatchNorm shifts and running means, and
    LayerNorm/GroupNorm shifts set to zero (LRP conserves relevance exactly there).

    Without their shifts, random BatchNorm statistics let the signal shrink block after
    block (a bias-free MNASNet's logits are ~1e-8), where LRP's absolute stabilizers would
    absorb the relevance, or grow (a bias-free ShuffleNet's are ~1e25); so each BatchNorm's
    running variance is set to the mean square of what it receives from ``inputs`` (one
    value per layer: a batch of two at 1×1 resolution gives no per-channel estimate), in one
    forward pass.
    """
    free = copy.deepcopy(model)
    with torch.no_grad():
        for module in free.modules():
            for name in ("bias", "running_mean"):
                value = getattr(module, name, None)
                if isinstance(value, Tensor):
                    value.zero_()

    def set_stats(norm: nn.Module, x: Tensor) -> None:
        assert isinstance(norm, nn.modules.batchnorm._NormBase)
        assert norm.running_var is not None
        norm.running_var.fill_(float(x.pow(2).mean().clamp(min=1e-12)))

    _calibrated(free, inputs, set_stats)
    return free


def smallest_input(model: nn.Module, floor: int = 32, ceiling: int = 320) -> int:
    """The smallest square input side >= ``floor`` the model accepts."""
    for side in range(floor, ceiling + 1):
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, side, side, dtype=D))
        except (RuntimeError, ValueError):
            continue
        return side
    raise RuntimeError(f"no input side in [{floor}, {ceiling}] works")


@dataclass
class Subject:
    """One architecture ready for the matrix; its bias-free copy (for LRP's conservation) is
    made when first used, so the other cells of a very large model hold one copy only."""

    name: str
    model: nn.Module
    inputs: Tensor

    @functools.cached_property
    def free(self) -> nn.Module:
        return bias_free(self.model, self.inputs)


def _torchvision_model(name: str) -> nn.Module:
    with warnings.catch_warnings():
        # GoogLeNet and Inception-v3 warn that their default init will change.
        warnings.simplefilter("ignore", FutureWarning)
        kwargs: dict[str, Any] = {}
        if name in ("googlenet", "inception_v3"):
            kwargs = {"aux_logits": False, "init_weights": True}
        return torchvision.models.get_model(name, weights=None, **kwargs)


def _timm_model(name: str) -> nn.Module:
    import timm  # type: ignore[import-not-found]

    model: nn.Module = timm.create_model(name, pretrained=False)
    return model


@functools.cache
def subject(name: str, source: str = "torchvision", seed: int = 0, floor: int = 16) -> Subject:
    """The architecture ``name`` from ``source`` (``"torchvision"`` or ``"timm"``), random,
    non-degenerate, float64, eval mode, with a bias-free copy and its inputs (2 items)."""
    torch.manual_seed(seed)
    raw = _torchvision_model(name) if source == "torchvision" else _timm_model(name)
    model = randomize(raw, seed).to(D).eval()
    side = smallest_input(model, floor)
    inputs = torch.randn(2, 3, side, side, dtype=D, generator=torch.Generator().manual_seed(1))
    return Subject(name, model, inputs)


# ---------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Fingerprint:
    """What ``explain`` promises to leave as it found it, cheap enough for large models:
    each state tensor's identity, version counter (bumped by every in-place write) and
    float64 sum (catching writes that bypass the counter, through ``.data``), train flags,
    ``requires_grad``, parameter gradients and the number of hooks."""

    tensors: tuple[tuple[str, int, int, float], ...]
    training: tuple[bool, ...]
    requires_grad: tuple[bool, ...]
    grads: tuple[bool, ...]
    hooks: int

    @classmethod
    def take(cls, model: nn.Module) -> Fingerprint:
        with torch.no_grad():
            tensors = tuple(
                (name, id(t), t._version, float(t.double().sum()))
                for name, t in model.state_dict(keep_vars=True).items()
            )
        return cls(
            tensors,
            tuple(m.training for m in model.modules()),
            tuple(p.requires_grad for p in model.parameters()),
            tuple(p.grad is not None for p in model.parameters()),
            count_hooks(model),
        )

    def changes(self, model: nn.Module) -> list[str]:
        now = Fingerprint.take(model)
        found = [
            f"{a[0]} changed"
            for a, b in zip(self.tensors, now.tensors, strict=False)
            if a[1:3] != b[1:3] or not (a[3] == b[3] or (math.isnan(a[3]) and math.isnan(b[3])))
        ]
        for what in ("training", "requires_grad", "grads", "hooks"):
            if getattr(self, what) != getattr(now, what):
                found.append(f"{what} changed")
        if len(self.tensors) != len(now.tensors):
            found.append("state entries changed")
        return found


@dataclass
class Cell:
    """The outcome of one (architecture, method) check.

    ``status``: ``exact`` (DeepLIFT summation-to-delta within 1e-6), ``complete``
    (integrated gradients within 1 % at its default steps), ``incomplete`` (integrated
    gradients further off at its most steps, said by a ``CompletenessWarning`` whose gap
    is the true one), ``conserving`` (LRP on the
    bias-free copy within 1e-3), ``runs`` (no axiom to check), ``zero`` (an all-zero result,
    said with a ``ZeroAttributionWarning``), ``refuses`` (``InputError``, for ``cam`` on a
    head it does not apply to) or ``fails`` (``note`` says which check).
    """

    architecture: str
    method: str
    status: str
    error: float | None = None
    note: str = ""
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        if self.status == "refuses":
            return self.method == "cam"
        return self.status != "fails"


class CheckError(AssertionError):
    pass


def _scores(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(x)
    return out.gather(1, classes.view(-1, 1).to(out.device)).squeeze(1)


def _relative(total: Tensor, expected: Tensor) -> float:
    return float(((total - expected).abs() / expected.abs().clamp(min=1e-300)).max())


def summation_error(attribution: Tensor, change: Tensor, scores: Tensor) -> float:
    """|Σ a − Δf| relative to the larger of |Δf| and Σ|a|, worst item, after discounting
    the rounding of the two scores themselves (64 ulps of the larger, ``scores`` (B,)).
    Where the score barely changes while the attributions cancel out (random networks whose
    signal fades: Δf ~ 1e-13 on a logit of 0.4), float64 rounding is relative to the
    attributions' size and to the scores'; a wrong rule errs by a share of the attributions
    themselves."""
    total = attribution.flatten(1).sum(1)
    scale = torch.maximum(change.abs(), attribution.abs().flatten(1).sum(1))
    rounding = 64 * torch.finfo(change.dtype).eps * scores.abs()
    excess = ((total - change).abs() - rounding).clamp(min=0)
    return float((excess / scale.clamp(min=1e-300)).max())


def _explain(
    model: nn.Module, x: Tensor, method: str, chosen: dict[str, Any]
) -> tuple[Any, list[str], bool, bool]:
    """``explain`` with the ``chosen`` options and every warning recorded: (explanation, other
    warnings, zero warned, incompleteness warned)."""
    said = (ZeroAttributionWarning, CompletenessWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cnnlens.explain(model, x, method, **chosen)
    zero = any(issubclass(w.category, ZeroAttributionWarning) for w in caught)
    incomplete = any(issubclass(w.category, CompletenessWarning) for w in caught)
    others = [
        f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, said)
    ]
    return result, others, zero, incomplete


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)


def _axiom(
    subject: Subject, method: str, explanation: Any, warned: bool = False
) -> tuple[str, float | None, str]:
    """The method's axiom on this architecture: (status, measured relative error, detail);
    ``warned``: a ``CompletenessWarning`` was issued."""
    model, x = subject.model, subject.inputs
    if method == "deeplift":
        assert explanation.targets is not None
        change = _scores(model, x, explanation.targets) - _scores(
            model, torch.zeros_like(x), explanation.targets
        )
        reference = _scores(model, torch.zeros_like(x), explanation.targets)
        scores = torch.maximum(_scores(model, x, explanation.targets).abs(), reference.abs())
        error = summation_error(explanation.attribution, change, scores)
        _check(error <= DEEPLIFT_TOLERANCE, f"summation-to-delta off by {error:.2e}")
        return "exact", error, ""
    if method == "integrated_gradients":
        assert explanation.targets is not None
        change = _scores(model, x, explanation.targets) - _scores(
            model, torch.zeros_like(x), explanation.targets
        )
        delta = explanation.attribution.flatten(1).sum(1) - change
        reported = explanation.extras["delta"]
        _check(
            bool(torch.allclose(reported, delta, rtol=1e-6, atol=1e-9 * float(change.abs().max()))),
            f"extras['delta'] {reported.tolist()} is not the gap {delta.tolist()}",
        )
        score = _scores(model, x, explanation.targets)
        error = float(completeness_gap(delta, score, score - change).max())
        steps = f"{int(explanation.extras['steps'].max())} steps"
        # The warning must be issued exactly when the gap exceeds the tolerance: then the
        # result is incomplete but says so, with the true gap in extras (**incomplete**).
        _check(warned == (error > IG_TOLERANCE), f"gap {error:.2e}, warned: {warned}")
        return ("incomplete" if warned else "complete"), error, steps
    if method == "lrp":
        return _conservation(subject)
    return "runs", None, ""


def _conservation(subject: Subject) -> tuple[str, float | None, str]:
    """LRP on the bias-free copy: with the epsilon rule (1e-9) at every layer, the relevance
    must sum to the logit (every operation's rule conserves); the default composite's
    deviation is reported too (its z+ rule drops the relevance of a neuron without any
    positive contribution, as zennit's does, so it need not conserve)."""
    free, x = subject.free, subject.inputs
    classes = resolve_target(None, x.shape[0])
    strict = Composite("epsilon", epsilon(1e-9), epsilon(1e-9), stabilizer=1e-9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = relevance(free, x, classes, strict)
        default = cnnlens.explain(free, x, "lrp")
    _check(not caught, "; ".join(f"{w.category.__name__}: {w.message}" for w in caught))
    logit = result.scores
    _check(bool((logit.abs() > 1e-12).all()), "the bias-free copy's logit is zero")
    error = _relative(result.relevance.flatten(1).sum(1), logit)
    _check(error <= LRP_TOLERANCE, f"conservation on the bias-free copy off by {error:.2e}")
    assert default.targets is not None
    composite = _relative(default.attribution.flatten(1).sum(1), _scores(free, x, default.targets))
    detail = f"default composite {composite:.0e}" if composite > LRP_TOLERANCE else ""
    return "conserving", error, detail


def _same_alone(subject: Subject, method: str, batched: Tensor) -> None:
    alone, _, _, _ = _explain(
        subject.model, subject.inputs[:1], method, options(subject.name, method)
    )
    got, want = alone.attribution, batched[:1]
    scale = float(want.abs().max())
    _check(got.shape == want.shape, f"alone: shape {tuple(got.shape)} vs {tuple(want.shape)}")
    difference = float((got - want).abs().max())
    _check(
        difference <= 1e-6 * scale + 1e-12,
        f"the item explained alone differs from the batch by {difference:.2e} (max {scale:.2e})",
    )


def check(subject: Subject, method: str) -> Cell:
    """Run every check of one cell; failures are reported in the cell, never raised."""
    start = time.process_time()
    cell = Cell(subject.name, method, "fails")
    snapshot = Fingerprint.take(subject.model)
    try:
        try:
            explanation, others, zero, warned = _explain(
                subject.model, subject.inputs, method, options(subject.name, method)
            )
        except InputError as exc:
            _check(not snapshot.changes(subject.model), str(snapshot.changes(subject.model)))
            cell.status, cell.note = "refuses", str(exc)
            return cell
        _check(not snapshot.changes(subject.model), str(snapshot.changes(subject.model)))
        _check(not others, "; ".join(others))
        _check(not warned or method == "integrated_gradients", f"{method}: CompletenessWarning")
        _check(
            bool(torch.isfinite(explanation.attribution).all()), "non-finite values in the result"
        )
        _same_alone(subject, method, explanation.attribution)
        status, cell.error, cell.detail = _axiom(subject, method, explanation, warned)
        cell.status = "zero" if zero and status == "runs" else status
        if zero:
            cell.note = "all-zero result, warned"
    except Exception as exc:  # the matrix reports every failure in its cell
        cell.status = "fails"
        cell.note = _one_line(exc)
    finally:
        cell.seconds = time.process_time() - start
    return cell


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()
    where = traceback.extract_tb(exc.__traceback__)
    origin = f" ({where[-1].name})" if where else ""
    return (text[0] if text else type(exc).__name__)[:300] + origin


def methods() -> list[str]:
    return sorted(cnnlens.METHODS)


def cells(
    names: list[str],
    source: str = "torchvision",
    progress: Callable[[Cell], None] | None = None,
    floor: int = 16,
    only: Sequence[str] | None = None,
) -> Iterator[Cell]:
    """Every method (or those in ``only``) on every architecture of ``names``."""
    for name in names:
        for method in only or methods():
            cell = check(subject(name, source, floor=floor), method)
            if progress is not None:
                progress(cell)
            yield cell
        subject.cache_clear()  # keep memory bounded over the whole matrix


def describe(cell: Cell) -> str:
    """The table entry: status and measured error."""
    if cell.error is not None and cell.status != "fails":
        measured = f"{cell.error:.0e}" if cell.error > 0 else "0"
        return f"{cell.status} ({measured}{', ' + cell.detail if cell.detail else ''})"
    return cell.status


__all__ = [
    "FAMILIES",
    "TIMM_ARCHITECTURES",
    "Cell",
    "D",
    "Subject",
    "bias_free",
    "cells",
    "check",
    "describe",
    "methods",
    "randomize",
    "smallest_input",
    "subject",
    "torchvision_architectures",
]
