"""The operation registry: every torch callable that an attribution method may treat
specially, classified once into a :class:`Kind`, with its arguments bound once.

A forward pass reaches these callables in any of their forms — ``F.relu``, ``torch.relu``,
``Tensor.relu_``, ``nn.ReLU`` (whose forward calls ``F.relu``), ``x * y``, ``x *= y``,
``torch.mul`` — and :data:`REGISTRY` maps each form to a *binder*. A binder looks at the
actual arguments and returns a :class:`Call` (which tensor is the input, which are
parameters, whether the call writes in place, the operation as an out-of-place function of
its input) or ``None`` when the call is of no interest: its input does not depend on the
model input (it does not require grad), or it is not the kind of call the entry is about
(a product with a Python number is a rescaling, not a product of two activations).

Whether a tensor depends on the model input is read from ``requires_grad``: the engine's
users run the model with parameter gradients off and the input requiring grad. Under
``no_grad`` (and inside :func:`all_dependent`) every tensor but a parameter counts as
dependent.

Methods never see the raw arguments: they get :class:`Call` objects from the engine
(:mod:`cnnlens._engine`) and give each kind a rule.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["REGISTRY", "Binder", "Call", "Entry", "Kind", "all_dependent", "depends"]


class Kind(enum.Enum):
    """What an operation is, as far as attribution rules care."""

    AFFINE = "affine"  # convolution, linear layer (weights are parameters)
    BATCH_NORM = "batch_norm"  # eval-mode batch norm: a per-channel affine map
    RECTIFIER = "rectifier"  # clip(x, 0, upper): ReLU, ReLU6, hardtanh(x, 0, t), clamp(min=0)
    ACTIVATION = "activation"  # any other elementwise nonlinearity of one tensor
    SCALE = "scale"  # x times (or divided by) a constant: layer scale, masks, numbers
    PRODUCT = "product"  # a * b, both depending on the input (gates, x * sigmoid(x))
    QUOTIENT = "quotient"  # a / b with b depending on the input
    SUM = "sum"  # a + b, a - b, both depending on the input
    NORMALIZATION = "normalization"  # layer/group/instance/RMS norm: input statistics
    BATCH_STATS = "batch_stats"  # batch norm normalizing with the batch's statistics
    MAX_POOL = "max_pool"  # max pooling (fixed or adaptive windows)
    AVG_POOL = "avg_pool"  # average pooling, mean, sum
    MAX_REDUCE = "max_reduce"  # amax, amin, max/min along a dimension
    SOFTMAX = "softmax"  # softmax, log_softmax, softmin
    DROPOUT = "dropout"  # dropout (the identity in eval mode)
    OTHER = "other"  # a nonlinear operation no method has a rule for


@dataclass(eq=False)
class Call:
    """One bound call. ``x`` is the input the call is about (the activation of a layer, the
    first factor of a product); ``other`` the second operand of a product, quotient or sum.
    ``apply(t)`` is the operation applied out of place to ``t`` in place of ``x``, every
    other argument kept. ``bound`` holds the arguments by name for the kinds whose rules
    read them (convolutions, pooling, normalization). ``options`` holds kind-specific
    values: ``upper`` (rectifiers), ``alpha`` (sums), ``gate`` (products: which factor is a
    gate, set by the engine), ``reciprocal`` (quotients).
    """

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    op: str
    kind: Kind
    x: Tensor
    apply: Callable[[Tensor], Any]
    other: Tensor | None = None
    inplace: bool = False
    gate: bool = False  # a bounded activation whose output usually multiplies a signal
    bound: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def run(self) -> Any:
        """The call exactly as the model made it."""
        return self.func(*self.args, **self.kwargs)


Binder = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Call | None]


_LOCAL = threading.local()


@contextlib.contextmanager
def all_dependent() -> Iterator[None]:
    """Inside (on this thread), every floating tensor other than a parameter counts as
    depending on the model input: for passes that must classify calls the same way with and
    without gradients (DeepLIFT's reference pass runs without them)."""
    previous = getattr(_LOCAL, "all", False)
    _LOCAL.all = True
    try:
        yield
    finally:
        _LOCAL.all = previous


def depends(value: object) -> TypeGuard[Tensor]:
    """Whether ``value`` is a floating tensor that depends on the model input: it requires
    grad; without gradients (or inside :func:`all_dependent`) any tensor but a parameter."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        return False
    if value.requires_grad:
        return True
    if isinstance(value, nn.Parameter):
        return False
    return not torch.is_grad_enabled() or bool(getattr(_LOCAL, "all", False))


def _named(
    func: Callable[..., Any], names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], Tensor, Callable[[Tensor], Any]] | None:
    """The arguments by name, the input (``None`` when it does not depend on the model
    input) and the call as a function of its input."""
    bound = _bind_names(names, args, kwargs)
    x = bound.get("input", bound.get("self"))
    if not depends(x):
        return None
    rest = {k: v for k, v in bound.items() if k not in ("input", "self")}

    def apply(t: Tensor) -> Any:
        return func(t, **rest)

    return bound, x, apply


def _first(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Tensor, list[Any], dict[str, Any]] | None:
    """A call whose first argument is its input: the input (``None`` when it does not
    depend on the model input), the other positional and the keyword arguments."""
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    if not depends(x):
        return None
    return x, list(args[1:]), {k: v for k, v in kwargs.items() if k not in ("input", "self")}


def _bind_names(
    names: Sequence[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


# --------------------------------------------------------------------------- elementwise


def _elementwise(
    op: str,
    out_of_place: Callable[..., Any],
    *,
    inplace_at: int | None = None,
    always_inplace: bool = False,
    gate: bool = False,
    rectifier: Callable[[tuple[Any, ...], dict[str, Any]], float | bool | None] | None = None,
) -> Binder:
    """Binder of a one-tensor elementwise op. ``inplace_at``: position of its ``inplace``
    argument; ``always_inplace``: the in-place variant (``relu_``); ``rectifier``: gives the
    upper clip when the call is a rectifier (``None``: no upper clip, ``False``: not one)."""

    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        first = _first(args, kwargs)
        if first is None:
            return None
        x, rest, extra = first
        inplace = always_inplace
        if inplace_at is not None:
            if len(args) > inplace_at:
                inplace = inplace or bool(args[inplace_at])
                del rest[inplace_at - 1]
            inplace = bool(extra.pop("inplace", False)) or inplace

        def apply(t: Tensor) -> Any:
            return out_of_place(t, *rest, **extra)

        kind = Kind.ACTIVATION
        options: dict[str, Any] = {}
        if rectifier is not None:
            upper = rectifier(tuple(args), kwargs)
            if upper is not False:
                kind = Kind.RECTIFIER
                options["upper"] = upper
        return Call(
            func, args, kwargs, op, kind, x, apply, inplace=inplace, gate=gate, options=options
        )

    return bind


def _always(_args: tuple[Any, ...], _kwargs: dict[str, Any]) -> float | bool | None:
    return None


def _relu6(_args: tuple[Any, ...], _kwargs: dict[str, Any]) -> float | bool | None:
    return 6.0


def _hardtanh(args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | bool | None:
    bound = _bind_names(("input", "min_val", "max_val", "inplace"), args, kwargs)
    low, high = bound.get("min_val", -1.0), bound.get("max_val", 1.0)
    if isinstance(low, (int, float)) and float(low) == 0.0 and isinstance(high, (int, float)):
        return float(high)
    return False


def _clamp(args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | bool | None:
    bound = _bind_names(("input", "min", "max"), args, kwargs)
    low, high = bound.get("min"), bound.get("max")
    if not isinstance(low, (int, float)) or float(low) != 0.0:
        return False
    if high is None:
        return None
    return float(high) if isinstance(high, (int, float)) else False


# --------------------------------------------------------------------------- two operands


def _second(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[1] if len(args) > 1 else kwargs.get("other")


def _product(op: str, *, inplace: bool = False) -> Binder:
    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        a = args[0] if args else kwargs.get("input")
        b = _second(args, kwargs)
        if depends(a) and depends(b):

            def apply(t: Tensor) -> Any:
                return torch.mul(t, b)

            return Call(func, args, kwargs, op, Kind.PRODUCT, a, apply, other=b, inplace=inplace)
        da = depends(a)
        x, c = (a, b) if da else (b, a)
        if not depends(x) or not isinstance(c, (Tensor, int, float)) or isinstance(c, bool):
            return None

        def scale(t: Tensor) -> Any:
            return torch.mul(t, c)

        return Call(func, args, kwargs, op, Kind.SCALE, x, scale, inplace=inplace and da)

    return bind


def _quotient(op: str, *, inplace: bool = False) -> Binder:
    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        a = args[0] if args else kwargs.get("input")
        b = _second(args, kwargs)
        rest = {k: v for k, v in kwargs.items() if k == "rounding_mode"}
        if rest.get("rounding_mode") is not None:
            return None  # integer-style division: no gradient to speak of
        if depends(b):
            if not isinstance(a, (Tensor, int, float)) or isinstance(a, bool):
                return None

            def divide(t: Tensor) -> Any:
                return torch.div(t, b)

            x = a if isinstance(a, Tensor) else torch.as_tensor(a, dtype=b.dtype, device=b.device)
            return Call(func, args, kwargs, op, Kind.QUOTIENT, x, divide, other=b, inplace=inplace)
        if not depends(a) or not isinstance(b, (Tensor, int, float)) or isinstance(b, bool):
            return None

        def scale(t: Tensor) -> Any:
            return torch.div(t, b)

        return Call(func, args, kwargs, op, Kind.SCALE, a, scale, inplace=inplace)

    return bind


def _reverse_quotient(op: str) -> Binder:
    """``number / x``: an elementwise function of ``x``."""

    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        x, c = args[0], _second(args, kwargs)
        if not depends(x) or not isinstance(c, (int, float)) or isinstance(c, bool):
            return None

        def apply(t: Tensor) -> Any:
            return torch.div(c, t)

        return Call(func, args, kwargs, op, Kind.ACTIVATION, x, apply)

    return bind


def _sum(op: str, sign: float, *, inplace: bool = False) -> Binder:
    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        if len(args) < 2:
            return None
        a, b = args[0], args[1]
        if not (depends(a) and depends(b)):
            return None
        alpha = kwargs.get("alpha", 1.0)
        if not isinstance(alpha, (int, float)) or len(args) > 2:
            return None
        scale = float(alpha) * sign

        def apply(t: Tensor) -> Any:
            return torch.add(t, b, alpha=scale)

        return Call(
            func,
            args,
            kwargs,
            op,
            Kind.SUM,
            a,
            apply,
            other=b,
            inplace=inplace,
            options={"alpha": scale},
        )

    return bind


def _power(op: str) -> Binder:
    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        x, e = args[0] if args else kwargs.get("input"), _second(args, kwargs)
        if e is None:
            e = kwargs.get("exponent")
        if not depends(x):
            return None
        if isinstance(e, Tensor):
            return Call(func, args, kwargs, op, Kind.OTHER, x, lambda t: torch.pow(t, e))
        if not isinstance(e, (int, float)):
            return None

        def apply(t: Tensor) -> Any:
            return torch.pow(t, e)

        return Call(func, args, kwargs, op, Kind.ACTIVATION, x, apply)

    return bind


# --------------------------------------------------------------------------- layers

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGS = ("input", "weight", "bias")


def _affine_kind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Kind | None:
    x = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    if not depends(x) or not isinstance(weight, Tensor):
        return None
    # A weight computed from the input (dynamic convolution, attention) is a product.
    return Kind.OTHER if weight.requires_grad else Kind.AFFINE


KindOf = Callable[[tuple[Any, ...], dict[str, Any]], Kind | None]


def _classified(op: str, names: Sequence[str], kind_of: KindOf) -> Binder:
    """Binder of a call whose kind ``kind_of`` tells from its arguments."""

    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        kind = kind_of(args, kwargs)
        named = None if kind is None else _named(func, names, args, kwargs)
        if kind is None or named is None:
            return None
        bound, x, apply = named
        return Call(func, args, kwargs, op, kind, x, apply, bound=bound)

    return bind


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _batch_norm_kind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Kind | None:
    bound = _bind_names(_BN_ARGS[:6], args, kwargs)
    if not depends(bound.get("input")):
        return None
    running = isinstance(bound.get("running_mean"), Tensor) and isinstance(
        bound.get("running_var"), Tensor
    )
    return Kind.BATCH_NORM if running and not bound.get("training", False) else Kind.BATCH_STATS


def _norm_parts(
    view: Callable[[Tensor], Tensor],
    weight: Tensor | None,
    bias: Tensor | None,
    shape: tuple[int, ...],
    eps: float,
    center: bool,
) -> dict[str, Any]:
    """How a normalization computes: ``view(t)`` puts each normalized group in the last
    dimension; ``weight_only(t)``/``affine(t)`` apply the weight (and bias) to the
    normalized ``t`` (shaped as the input)."""

    def weight_only(t: Tensor) -> Tensor:
        return t if weight is None else t * weight.reshape(shape)

    def affine(t: Tensor) -> Tensor:
        t = weight_only(t)
        return t if bias is None else t + bias.reshape(shape)

    return {
        "view": view,
        "affine": affine,
        "weight_only": weight_only,
        "eps": eps,
        "center": center,
        "bias": bias,
    }


Grouping = Callable[[dict[str, Any], Tensor], tuple[Callable[[Tensor], Tensor], tuple[int, ...]]]


def _trailing(
    bound: dict[str, Any], x: Tensor
) -> tuple[Callable[[Tensor], Tensor], tuple[int, ...]]:
    """Layer/RMS norm: the last dimensions (``normalized_shape``) form one group."""
    normalized = tuple(int(s) for s in bound["normalized_shape"])
    lead = x.dim() - len(normalized)

    def view(t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:lead], -1)

    return view, normalized


def _channel_groups(
    bound: dict[str, Any], x: Tensor
) -> tuple[Callable[[Tensor], Tensor], tuple[int, ...]]:
    """Group norm (``num_groups``) and instance norm (one group per channel)."""
    groups = int(bound.get("num_groups", x.shape[1]))

    def view(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], groups, -1)

    return view, (1, x.shape[1], *([1] * (x.dim() - 2)))


def _normalization(
    op: str,
    names: Sequence[str],
    grouping: Grouping,
    *,
    center: bool = True,
    eps_default: float | None = 1e-5,
) -> Binder:
    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        named = _named(func, names, args, kwargs)
        if named is None:
            return None
        bound, x, apply = named
        if not bound.get("use_input_stats", True):
            # instance norm with running statistics: a per-channel affine map
            return Call(func, args, kwargs, op, Kind.SCALE, x, apply, bound=bound)
        view, shape = grouping(bound, x)
        eps = bound.get("eps", eps_default)
        eps_value = float(torch.finfo(x.dtype).eps) if eps is None else float(eps)
        parts = _norm_parts(view, bound.get("weight"), bound.get("bias"), shape, eps_value, center)
        return Call(
            func, args, kwargs, op, Kind.NORMALIZATION, x, apply, bound=bound, options=parts
        )

    return bind


_IN_ARGS = (
    "input",
    "running_mean",
    "running_var",
    "weight",
    "bias",
    "use_input_stats",
    "momentum",
    "eps",
)
_POOL_ARGS = (
    "input",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "return_indices",
)
_ADAPTIVE_ARGS = ("input", "output_size", "return_indices")


def _pool(op: str, kind: Kind, names: Sequence[str]) -> Binder:
    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        named = _named(func, names, args, kwargs)
        if named is None:
            return None
        bound, x, apply = named
        return Call(func, args, kwargs, op, kind, x, apply, bound=bound)

    return bind


def _generic(op: str, kind: Kind) -> Binder:
    """A call whose first argument is the input; other arguments are kept as given."""

    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        first = _first(args, kwargs)
        if first is None:
            return None
        x, rest, extra = first

        def apply(t: Tensor) -> Any:
            return func(t, *rest, **extra)

        return Call(func, args, kwargs, op, kind, x, apply)

    return bind


def _bilinear(op: str) -> Binder:
    """A matrix product, einsum or attention: nonlinear when two operands depend on the
    input (attention scores), linear otherwise (a weight applied to an activation)."""

    def bind(
        func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Call | None:
        flat = [a for a in args if isinstance(a, Tensor)]
        flat += [
            t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, Tensor)
        ]
        dependent = [t for t in flat if depends(t)]
        if len(dependent) < 2:
            return None

        def apply(_t: Tensor) -> Any:
            return func(*args, **kwargs)

        return Call(func, args, kwargs, op, Kind.OTHER, dependent[0], apply, other=dependent[1])

    return bind


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Entry:
    """A registered callable: its binder and the kinds its calls can have. ``kind``, when
    given, tells a call's kind (``None``: of no interest) without binding it, so that a
    method whose rule for that kind is the gradient pays almost nothing for it."""

    bind: Binder
    kinds: frozenset[Kind]
    kind: KindOf | None = None


def _build() -> dict[Callable[..., Any], Entry]:
    table: dict[Callable[..., Any], Entry] = {}

    def put(
        funcs: Sequence[Any],
        binder: Binder,
        *kinds: Kind,
        quick: KindOf | None = None,
    ) -> None:
        for func in funcs:
            if func is not None and func not in table:
                table[func] = Entry(binder, frozenset(kinds), quick)

    def rect(op: str, base: Callable[..., Any], rule: Any, funcs: Sequence[Any], **kw: Any) -> None:
        put(funcs, _elementwise(op, base, rectifier=rule, **kw), Kind.RECTIFIER, Kind.ACTIVATION)

    # rectifiers in every call form; hardtanh and clamp when their lower bound is 0
    rect("relu", torch.relu, _always, [F.relu], inplace_at=1)
    rect("relu", torch.relu, _always, [F.relu_, torch.relu_, Tensor.relu_], always_inplace=True)
    rect("relu", torch.relu, _always, [torch.relu, Tensor.relu])
    rect("relu6", F.relu6, _relu6, [F.relu6], inplace_at=1)
    rect("hardtanh", F.hardtanh, _hardtanh, [F.hardtanh], inplace_at=3)
    rect("hardtanh", F.hardtanh, _hardtanh, [F.hardtanh_], always_inplace=True)
    rect("clamp", torch.clamp, _clamp, [torch.clamp, Tensor.clamp, torch.clip, Tensor.clip])
    rect(
        "clamp",
        torch.clamp,
        _clamp,
        [torch.clamp_, Tensor.clamp_, torch.clip_, Tensor.clip_],
        always_inplace=True,
    )
    rect("clamp_min", torch.clamp_min, _clamp, [torch.clamp_min, Tensor.clamp_min])
    rect(
        "clamp_min",
        torch.clamp_min,
        _clamp,
        [torch.clamp_min_, Tensor.clamp_min_],
        always_inplace=True,
    )

    # other elementwise activations; functional forms with an inplace argument at position p
    for name, position in (
        ("silu", 1), ("hardswish", 1), ("hardsigmoid", 1), ("mish", 1), ("selu", 1),
        ("elu", 2), ("celu", 2), ("leaky_relu", 2), ("threshold", 3), ("rrelu", 4),
    ):  # fmt: skip
        base = getattr(F, name)
        gate = name == "hardsigmoid"
        put([base], _elementwise(name, base, inplace_at=position, gate=gate), Kind.ACTIVATION)
        inplace_variant = getattr(F, name + "_", None)
        put(
            [inplace_variant, getattr(torch, name + "_", None)],
            _elementwise(name, base, always_inplace=True, gate=gate),
            Kind.ACTIVATION,
        )
    for name in (
        "gelu",
        "softplus",
        "logsigmoid",
        "softsign",
        "tanhshrink",
        "hardshrink",
        "softshrink",
        "prelu",
    ):
        func = getattr(F, name)
        put([func], _elementwise(name, func), Kind.ACTIVATION)
    put(
        [torch.selu, torch.celu, torch.rrelu, torch.prelu],
        _generic("activation", Kind.ACTIVATION),
        Kind.ACTIVATION,
    )
    # ops that exist as torch.f, Tensor.f, F.f and in place as torch.f_, Tensor.f_
    for name, gate in (
        ("sigmoid", True), ("tanh", True), ("exp", False), ("log", False), ("sqrt", False),
        ("rsqrt", False), ("reciprocal", False), ("square", False), ("abs", False),
        ("erf", False), ("sin", False), ("cos", False),
    ):  # fmt: skip
        base = getattr(torch, name)
        put(
            [getattr(owner, name, None) for owner in (torch, Tensor, F)],
            _elementwise(name, base, gate=gate),
            Kind.ACTIVATION,
        )
        put(
            [getattr(owner, name + "_", None) for owner in (torch, Tensor)],
            _elementwise(name, base, always_inplace=True, gate=gate),
            Kind.ACTIVATION,
        )
    put(
        [torch.pow, Tensor.pow, Tensor.__pow__, Tensor.pow_, Tensor.__ipow__],
        _power("pow"),
        Kind.ACTIVATION,
        Kind.OTHER,
    )

    # products, quotients, sums
    both = (Kind.PRODUCT, Kind.SCALE)
    put(
        [torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, torch.multiply, Tensor.multiply],
        _product("mul"),
        *both,
    )
    put([Tensor.mul_, Tensor.__imul__, Tensor.multiply_], _product("mul", inplace=True), *both)
    ratio = (Kind.QUOTIENT, Kind.SCALE)
    put(
        [
            torch.div,
            Tensor.div,
            Tensor.__truediv__,
            torch.true_divide,
            Tensor.true_divide,
            torch.divide,
        ],
        _quotient("div"),
        *ratio,
    )
    put(
        [Tensor.div_, Tensor.__itruediv__, Tensor.true_divide_],
        _quotient("div", inplace=True),
        *ratio,
    )
    put([Tensor.__rtruediv__], _reverse_quotient("div"), Kind.ACTIVATION)
    put([torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__], _sum("add", 1.0), Kind.SUM)
    put([Tensor.add_, Tensor.__iadd__], _sum("add", 1.0, inplace=True), Kind.SUM)
    put([torch.sub, Tensor.sub, Tensor.__sub__, torch.subtract], _sum("sub", -1.0), Kind.SUM)
    put([Tensor.sub_, Tensor.__isub__], _sum("sub", -1.0, inplace=True), Kind.SUM)

    # products of two activations that no method has a rule for
    put([torch.matmul, Tensor.matmul, Tensor.__matmul__], _bilinear("matmul"), Kind.OTHER)
    put([torch.bmm, Tensor.bmm], _bilinear("bmm"), Kind.OTHER)
    put([torch.einsum], _bilinear("einsum"), Kind.OTHER)
    put([F.scaled_dot_product_attention], _bilinear("attention"), Kind.OTHER)
    put([F.multi_head_attention_forward], _bilinear("attention"), Kind.OTHER)

    # layers
    for func, op, names, kind_of, kinds in (
        (F.conv1d, "conv1d", _CONV_ARGS, _affine_kind, (Kind.AFFINE, Kind.OTHER)),
        (F.conv2d, "conv2d", _CONV_ARGS, _affine_kind, (Kind.AFFINE, Kind.OTHER)),
        (F.conv3d, "conv3d", _CONV_ARGS, _affine_kind, (Kind.AFFINE, Kind.OTHER)),
        (F.linear, "linear", _LINEAR_ARGS, _affine_kind, (Kind.AFFINE, Kind.OTHER)),
        (F.batch_norm, "batch_norm", _BN_ARGS, _batch_norm_kind, (Kind.BATCH_NORM, Kind.BATCH_STATS)),
    ):  # fmt: skip
        put([func], _classified(op, names, kind_of), *kinds, quick=kind_of)
    norm_args = ("input", "normalized_shape", "weight", "bias", "eps")
    put([F.layer_norm], _normalization("layer_norm", norm_args, _trailing), Kind.NORMALIZATION)
    put(
        [F.group_norm],
        _normalization(
            "group_norm", ("input", "num_groups", "weight", "bias", "eps"), _channel_groups
        ),
        Kind.NORMALIZATION,
    )
    put(
        [F.instance_norm],
        _normalization("instance_norm", _IN_ARGS, _channel_groups),
        Kind.NORMALIZATION,
        Kind.SCALE,
    )
    put(
        [getattr(F, "rms_norm", None)],
        _normalization(
            "rms_norm",
            ("input", "normalized_shape", "weight", "eps"),
            _trailing,
            center=False,
            eps_default=None,
        ),
        Kind.NORMALIZATION,
    )
    put([F.local_response_norm], _generic("local_response_norm", Kind.OTHER), Kind.OTHER)

    # pooling and reductions
    for d in ("1d", "2d", "3d"):
        put(
            [getattr(F, f"max_pool{d}"), getattr(F, f"max_pool{d}_with_indices")],
            _pool(f"max_pool{d}", Kind.MAX_POOL, _POOL_ARGS),
            Kind.MAX_POOL,
        )
        put(
            [getattr(F, f"adaptive_max_pool{d}"), getattr(F, f"adaptive_max_pool{d}_with_indices")],
            _pool(f"adaptive_max_pool{d}", Kind.MAX_POOL, _ADAPTIVE_ARGS),
            Kind.MAX_POOL,
        )
        for name in (f"avg_pool{d}", f"adaptive_avg_pool{d}"):
            put([getattr(F, name)], _generic(name, Kind.AVG_POOL), Kind.AVG_POOL)
    for name in ("mean", "sum"):
        put(
            [getattr(torch, name), getattr(Tensor, name)],
            _generic(name, Kind.AVG_POOL),
            Kind.AVG_POOL,
        )
    for name in ("amax", "amin", "max", "min", "logsumexp"):
        put(
            [getattr(torch, name), getattr(Tensor, name)],
            _generic(name, Kind.MAX_REDUCE),
            Kind.MAX_REDUCE,
        )
    for name in ("softmax", "log_softmax", "softmin"):
        put(
            [getattr(owner, name, None) for owner in (F, torch, Tensor)],
            _generic(name, Kind.SOFTMAX),
            Kind.SOFTMAX,
        )
    for name in (
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
    ):
        put([getattr(F, name)], _generic(name, Kind.DROPOUT), Kind.DROPOUT)
    return table


REGISTRY: dict[Callable[..., Any], Entry] = _build()
"""Every registered callable: its binder and possible kinds."""
