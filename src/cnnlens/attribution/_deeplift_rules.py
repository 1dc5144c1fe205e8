"""DeepLIFT's multipliers as a ``TorchFunctionMode`` (nothing is attached to the model).

DeepLIFT (Shrikumar et al. 2017) propagates *multipliers* m = Δy/Δx instead of gradients,
where Δ is the difference between the input's and the reference's (baseline's) forward
values. Linear operations — convolutions, linear layers, eval-mode batch norm, average
pooling, residual additions, concatenations, reshapes — have the weights as multipliers,
which is what autograd already computes; only the nonlinear calls need a rule:

* rectifiers y = clip(x, 0, upper) (``ReLU``, ``ReLU6``, ``hardtanh(x, 0, t)``, in any call
  form) and other elementwise activations (sigmoid, tanh, SiLU, GELU, ELU, leaky ReLU,
  hardswish, softplus, ...): the Rescale rule, m = (y − y0)/(x − x0), the true derivative
  where x = x0 (for smooth activations: where |x − x0| is below the square root of the
  machine epsilon, where the quotient would lose its digits);
* max pooling (``max_pool2d``, ``adaptive_max_pool2d``): the output difference of each
  window, y − y0, is split as (max(y, y0) − y0) + (y − max(y, y0)); the first part goes to
  the input's winner, the second to the reference's winner, and each input position's
  multiplier is what it received divided by its own Δx (the true gradient where Δx = 0). Whatever a window sends out it sends to positions whose Δx has the same sign
  and at least the same size, so multipliers stay in [0, 1] and Σ m·Δx over the inputs is
  exactly Σ Δy over the windows — summation-to-delta holds through the layer. (The paper's
  gradient-style rule for max pooling, all of Δy routed to the input's winner, does not
  keep that sum; captum uses the same split as here, but through ``max_unpool``, which
  drops contributions when windows overlap.)

With all rules exact, the chain rule makes Σ_i m_i·Δx_i = score(input) − score(reference)
for any composition of these operations. Multiplicative interactions between two
activations (squeeze-and-excitation gates, attention) are not given a rule: there the
gradient of the product is used, and the sum is no longer exact.

The computation is two forward passes: :class:`ReferencePass` runs the reference under
``no_grad`` and records the input (and, for max pooling, the output and winners) of every
nonlinear call in call order; :class:`DeepLiftPass` then runs the input with gradients and
gives call k the multiplier built from record k. A reference shared by all items is run as
a single item and broadcast. In-place rectifiers and activations (``inplace=True``,
``relu_``) are computed out of place; library code uses the returned tensor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .._hooks import _relu_args

__all__ = ["DeepLiftPass", "ReferencePass"]

# Elementwise activations handled by the generic Rescale rule (derivative by autograd for
# the positions where the input equals the reference).
_ELEMENTWISE: frozenset[Callable[..., Any]] = frozenset(
    {
        torch.sigmoid,
        Tensor.sigmoid,
        F.sigmoid,
        torch.tanh,
        Tensor.tanh,
        F.tanh,
        F.silu,
        F.gelu,
        F.elu,
        F.selu,
        F.celu,
        F.leaky_relu,
        F.hardswish,
        F.hardsigmoid,
        F.hardtanh,
        F.softplus,
        F.mish,
        F.logsigmoid,
    }
)
_MAX_POOLS: dict[Callable[..., Any], Callable[..., Any]] = {
    F.max_pool2d: F.max_pool2d_with_indices,
    F.max_pool2d_with_indices: F.max_pool2d_with_indices,
    F.adaptive_max_pool2d: F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool2d_with_indices: F.adaptive_max_pool2d_with_indices,
}
_SIGNATURES: dict[Callable[..., Any], inspect.Signature] = {}


def _bind(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    signature = _SIGNATURES.get(func)
    if signature is None:
        signature = _SIGNATURES[func] = inspect.signature(func)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _first_tensor(bound: dict[str, Any]) -> tuple[str, Tensor]:
    name = next(iter(bound))
    return name, bound[name]


@dataclass
class _Record:
    kind: str  # "rectifier", "elementwise", "maxpool"
    x0: Tensor
    y0: Tensor | None = None
    winners: Tensor | None = None


def _elementwise_call(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """The activation as a function of its tensor input (out of place) and that input."""
    try:
        bound = _bind(func, args, kwargs)
    except ValueError:  # a builtin without a Python signature (torch.sigmoid, F.gelu ...)
        rest_kwargs = {k: v for k, v in kwargs.items() if k != "input"}
        x: Tensor = args[0] if args else kwargs["input"]
        extra = tuple(args[1:])

        def call(t: Tensor) -> Tensor:
            return func(t, *extra, **rest_kwargs)

        return call, x
    name, x = _first_tensor(bound)
    if "inplace" in bound:
        bound["inplace"] = False
    rest = {k: v for k, v in bound.items() if k != name}

    def apply(t: Tensor) -> Tensor:
        return func(t, **rest) if rest else func(t)

    return apply, x


def _pool_call(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """Run a max pooling call with indices: (input, output, winners, indices requested)."""
    with_indices = _MAX_POOLS[func]
    bound = _bind(with_indices, args, kwargs)
    wanted = bool(bound.get("return_indices", False)) or func is with_indices
    bound["return_indices"] = True
    _, x = _first_tensor(bound)
    y, winners = with_indices(**bound)
    return x, y, winners, wanted


class ReferencePass(TorchFunctionMode):
    """Run the reference and record every nonlinear call (use under ``torch.no_grad``)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[_Record] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        rectifier = _relu_args(func, tuple(args), kwargs)
        if rectifier is not None:
            x, upper, _inplace = rectifier
            y0 = x.clamp(min=0.0) if upper is None else x.clamp(0.0, upper)
            self.records.append(_Record("rectifier", x.detach().clone(), y0.clone()))
            return y0
        if func in _MAX_POOLS:
            x, y, winners, wanted = _pool_call(func, args, kwargs)
            self.records.append(_Record("maxpool", x.detach().clone(), y.clone(), winners))
            return (y, winners) if wanted else y
        if func in _ELEMENTWISE:
            apply, x = _elementwise_call(func, args, kwargs)
            y0 = apply(x)
            self.records.append(_Record("elementwise", x.detach().clone(), y0.clone()))
            return y0
        return func(*args, **kwargs)


class _Multiplier(torch.autograd.Function):
    """Forward: the precomputed output; backward: the incoming gradient times ``m``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        del x
        ctx.save_for_backward(m)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (m,) = ctx.saved_tensors
        return grad * m, None, None


class _MaxPoolMultiplier(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        y: Tensor,
        shares: Tensor,
        winners: Tensor,
        ref_winners: Tensor,
        dx: Tensor,
    ) -> Tensor:
        del x
        ctx.save_for_backward(shares, winners, ref_winners, dx)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        shares, winners, ref_winners, dx = ctx.saved_tensors
        n, c = grad.shape[:2]
        flat = (n, c, -1)
        mine, theirs = shares  # (2, N, C, h, w) → the parts for the input's/reference's winners
        received = torch.zeros(dx.shape, dtype=grad.dtype, device=grad.device).view(flat)
        received.scatter_add_(2, winners.reshape(flat), (grad * mine).reshape(flat))
        received.scatter_add_(2, ref_winners.reshape(flat), (grad * theirs).reshape(flat))
        gradient = torch.zeros_like(received)
        gradient.scatter_add_(2, winners.reshape(flat), grad.reshape(flat))
        received = received.view(dx.shape)
        gradient = gradient.view(dx.shape)
        # What a position receives is at most |Δx| in size: only Δx = 0 needs the gradient.
        zero = dx == 0
        result = torch.where(zero, gradient, received / torch.where(zero, 1.0, dx))
        return result, None, None, None, None, None


class DeepLiftPass(TorchFunctionMode):
    """Run the input with DeepLIFT multipliers, pairing call k with ``records[k]``."""

    def __init__(self, records: Sequence[_Record]) -> None:
        super().__init__()
        self.records = list(records)
        self.calls = 0

    def _next(self, kind: str, x: Tensor) -> _Record:
        k = self.calls
        self.calls += 1
        if k >= len(self.records):
            raise RuntimeError(
                "the model made more nonlinear calls on the input than on the baseline; "
                "DeepLIFT needs the same sequence of operations for both"
            )
        record = self.records[k]
        x0 = record.x0
        fits = x0.shape == x.shape or (
            x0.dim() == x.dim() and x0.shape[0] == 1 and x0.shape[1:] == x.shape[1:]
        )
        if record.kind != kind or not fits:
            raise RuntimeError(
                f"nonlinear call {k} differs between input ({kind}, {tuple(x.shape)}) and "
                f"baseline ({record.kind}, {tuple(x0.shape)}); DeepLIFT needs the same "
                "sequence of operations for both"
            )
        return record

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        rectifier = _relu_args(func, tuple(args), kwargs)
        if rectifier is not None:
            x, upper, _inplace = rectifier
            record = self._next("rectifier", x)
            assert record.y0 is not None
            with torch.no_grad():
                y = x.clamp(min=0.0) if upper is None else x.clamp(0.0, upper)
                dx = x - record.x0
                # Δy/Δx lies in [0, 1] also in floating point (clipping is monotonic), so
                # only Δx = 0 needs the fallback to the gradient.
                m = torch.sub(y, record.y0).div_(dx)
                same = dx == 0
                if bool(same.any()):
                    gradient = x > 0 if upper is None else (x > 0) & (x < upper)
                    m = torch.where(same, gradient.to(m.dtype), m)
            return _Multiplier.apply(x, y, m)
        if func in _MAX_POOLS:
            with torch.no_grad():
                x, y, winners, wanted = _pool_call(func, args, kwargs)
            record = self._next("maxpool", x)
            assert record.y0 is not None and record.winners is not None
            with torch.no_grad():
                y0 = record.y0
                top = torch.maximum(y, y0)
                shares = torch.stack([top - y0, y - top])
                ref_winners = record.winners.expand_as(winners)
                dx = x - record.x0
            out = _MaxPoolMultiplier.apply(x, y, shares, winners, ref_winners, dx)
            return (out, winners) if wanted else out
        if func in _ELEMENTWISE:
            apply, x = _elementwise_call(func, args, kwargs)
            record = self._next("elementwise", x)
            assert record.y0 is not None
            with torch.enable_grad():
                leaf = x.detach().requires_grad_(True)
                out = apply(leaf)
                (gradient,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
            with torch.no_grad():
                y = out.detach()
                dx = x - record.x0
                # Below sqrt(machine epsilon), Δy/Δx loses its digits to cancellation while
                # f'(x)·Δx is within O(Δx²) of Δy: use the derivative there.
                large = dx.abs() > torch.finfo(dx.dtype).eps ** 0.5
                ratio = (y - record.y0) / torch.where(large, dx, torch.ones_like(dx))
                m = torch.where(large, ratio, gradient)
            return _Multiplier.apply(x, y, m)
        return func(*args, **kwargs)
