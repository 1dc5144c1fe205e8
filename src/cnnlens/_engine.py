"""The interception engine: one ``TorchFunctionMode`` for every method that changes how a
forward pass is differentiated (guided backpropagation, deconvnet, DeepLIFT, LRP, the
receptive-field probe).

A method is a :class:`RuleSet`: a :class:`Rule` per :class:`~cnnlens._ops.Kind` of
operation. Inside :class:`Engine`, each call to a registered torch callable
(:data:`~cnnlens._ops.REGISTRY`) is bound once into a :class:`~cnnlens._ops.Call` and given
to the rule of its kind, which computes the call's output (usually through an autograd
function with its own backward). Callables no rule of the method cares about are not even
looked at: the mode's table holds only the callables whose kinds the method treats
specially or has no rule for, so a call costs one dictionary lookup.

A call whose kind the method has no rule for, where the gradient is not what the method
needs, is computed as the model computes it and reported: one :class:`RuleWarning` at the
end of the pass naming each such operation and the module that made it, or an
:class:`~cnnlens.errors.InputError` at once with ``strict=True``. Nothing is silent.

With ``record=True`` the engine lists every registered call it met — module, operation,
kind and the rule it got — which is what :func:`cnnlens.coverage` shows.

The module that made a call is found, only when it is needed (a warning, a record), from
the Python stack: the innermost ``nn.Module.__call__`` frame whose module belongs to the
model. Nothing is attached to the model and nothing is shared between threads.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, MappingProxyType
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._ops import REGISTRY, Call, Entry, Kind
from .errors import InputError, RuleWarning

__all__ = [
    "GRADIENT",
    "Engine",
    "Met",
    "Rule",
    "RuleSet",
    "RuleWarning",
    "calling_module",
    "gradient_rules",
    "recording",
]


class Rule:
    """How a method treats one kind of call. The base rule is the plain gradient: the call
    runs as the model makes it. Subclasses override :meth:`__call__` (return the call's
    output, usually from an autograd function) and :attr:`name`; :meth:`describe` names the
    rule a particular call gets (for coverage), ``None`` when the rule cannot handle it, in
    which case :meth:`__call__` returns ``NotImplemented``."""

    name = "gradient"

    def describe(self, call: Call) -> str | None:
        del call
        return self.name

    def __call__(self, call: Call) -> Any:
        return call.run()


GRADIENT = Rule()
"""Differentiate the call as autograd does."""


@dataclass(frozen=True)
class RuleSet:
    """A method's rules by kind. A kind missing from ``rules`` has no rule: its calls are
    computed plainly and reported. ``lost`` says what is lost there (for the warning)."""

    method: str
    rules: Mapping[Kind, Rule]
    lost: str = "the result is not exact there"

    def table(self, everything: bool = False) -> Mapping[Callable[..., Any], Entry]:
        """The registered callables the engine must look at: those with a kind that has a
        rule other than the gradient, or no rule (all of them with ``everything``)."""
        looked = frozenset(k for k in Kind if self.rules.get(k) is not GRADIENT)
        return _table(frozenset(Kind) if everything else looked)


@functools.cache
def _table(looked: frozenset[Kind]) -> Mapping[Callable[..., Any], Entry]:
    """The registered callables that can make a call of a ``looked`` kind (one table per
    set of kinds, built once: rule sets are made per call, and building it costs 0.1 ms)."""
    return MappingProxyType({f: entry for f, entry in REGISTRY.items() if entry.kinds & looked})


def gradient_rules(**special: Rule) -> dict[Kind, Rule]:
    """Every kind mapped to :data:`GRADIENT`, except those given by name (``rectifier=...``)."""
    rules: dict[Kind, Rule] = dict.fromkeys(Kind, GRADIENT)
    for name, rule in special.items():
        rules[Kind(name)] = rule
    return rules


@dataclass(frozen=True)
class Met:
    """One registered call the engine met: the module that made it (dotted name,
    ``"(model)"`` for the model's own forward), the operation, its kind and the rule it got
    (``None``: no rule — the plain gradient was used and the method warned)."""

    module: str
    op: str
    kind: str
    rule: str | None


@dataclass
class Recording:
    """What :func:`recording` collects: the calls of the first engine pass that opened
    inside it (``engaged``), for ``method``."""

    met: list[Met] = field(default_factory=list)
    engaged: bool = False
    method: str = ""


_RECORDING = threading.local()


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Collect, on this thread, the calls of the first reporting engine pass run inside
    the context (the pass a method's result comes from)."""
    record = Recording()
    previous = getattr(_RECORDING, "target", None)
    _RECORDING.target = record
    try:
        yield record
    finally:
        _RECORDING.target = previous


_CALL_IMPL = nn.Module._call_impl.__code__


def calling_module(names: Mapping[int, str], depth: int = 2) -> str:
    """The name of the innermost module of ``names`` (id → name) being called on this
    thread's stack, ``"(model)"`` for the model itself, ``"?"`` outside any."""
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        if frame.f_code is _CALL_IMPL:
            module = frame.f_locals.get("self")
            name = names.get(id(module))
            if name is not None:
                return name or "(model)"
        frame = frame.f_back
    return "?"


@dataclass
class _Report:
    unhandled: dict[tuple[str, str], Kind] = field(default_factory=dict)


class Engine(TorchFunctionMode):
    """Run the calls of a forward pass through ``rules`` (see the module docstring).

    ``model``: the module being run (to name the modules that make calls; optional).
    ``strict``: raise :class:`InputError` at the first call without a rule. ``warn``:
    report calls without a rule at the end of the pass (off for auxiliary passes).
    ``record``: keep :attr:`met`, every registered call with its rule.
    ``counts[kind]`` counts the calls given a rule other than the gradient.
    """

    def __init__(
        self,
        rules: RuleSet,
        *,
        model: nn.Module | None = None,
        strict: bool = False,
        warn: bool = True,
        record: bool = False,
    ) -> None:
        super().__init__()
        self.rules = rules
        self.model = model
        self.strict = strict
        self.warn = warn
        self.met: list[Met] = []
        target: Recording | None = getattr(_RECORDING, "target", None)
        if warn and target is not None and not target.engaged:
            target.engaged, target.method = True, rules.method
            self.met, record = target.met, True
        self.record = record
        self.counts: dict[Kind, int] = dict.fromkeys(Kind, 0)
        self._table = rules.table(everything=record)
        self._rules = rules.rules
        self._names: dict[int, str] | None = None
        self._report = _Report()
        # Outputs of gate activations (sigmoid, hardsigmoid, tanh), kept alive so their ids
        # stay unique, when some rule looks at products.
        self._gates: dict[int, Tensor] | None = (
            {} if self._rules.get(Kind.PRODUCT) not in (None, GRADIENT) or record else None
        )

    # ------------------------------------------------------------------ the mode

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        entry = self._table.get(func)
        if entry is None:  # the fast path: most calls are of no interest to the method
            return func(*args, **kwargs) if kwargs else func(*args)
        if kwargs is None:
            kwargs = {}
        if entry.kind is not None and not self.record:
            kind = entry.kind(tuple(args), kwargs)
            if kind is None or self._rules.get(kind) is GRADIENT:
                return func(*args, **kwargs)
        call = entry.bind(func, tuple(args), kwargs)
        if call is None:
            return func(*args, **kwargs)
        if call.kind is Kind.PRODUCT and self._gates is not None:
            call.options["gate"] = self._gate_side(call)
        rule = self._rules.get(call.kind)
        result = NotImplemented if rule is None else rule(call)
        if result is NotImplemented:
            self._unhandled(call)
            result = call.run()
        elif rule is not GRADIENT:
            self.counts[call.kind] += 1
        if self.record:
            described = call.options.get("rule") if rule is not None else None
            if rule is not None and described is None:
                described = rule.describe(call)
            self.met.append(Met(self._module(), call.op, call.kind.value, described))
        if call.gate and self._gates is not None and isinstance(result, Tensor):
            self._gates[id(result)] = result
        return result

    def _gate_side(self, call: Call) -> int | None:
        """Which factor of a product is a gate: 0 (``x``) or 1 (``other``), ``None`` when
        neither is. A factor broadcast over the other (a squeeze-excitation scale) is the
        gate; else a factor that a gate activation (sigmoid ...) produced."""
        a, b = call.x, call.other
        assert b is not None and self._gates is not None
        if a.numel() != b.numel():
            return 0 if a.numel() < b.numel() else 1
        in_a, in_b = id(a) in self._gates, id(b) in self._gates
        if in_a != in_b:
            return 0 if in_a else 1
        return None

    # ------------------------------------------------------------------ reporting

    def _module(self) -> str:
        if self.model is None:
            return "?"
        if self._names is None:
            self._names = {id(m): n for n, m in self.model.named_modules()}
        return calling_module(self._names, depth=3)

    def _unhandled(self, call: Call) -> None:
        module = self._module()
        if self.strict:
            raise InputError(
                f"{self.rules.method}: no rule for {call.op} ({call.kind.value}) in module "
                f"{module!r}; {self.rules.lost}"
            )
        self._report.unhandled.setdefault((call.op, module), call.kind)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        super().__exit__(exc_type, exc, tb)  # type: ignore[no-untyped-call]
        unhandled = self._report.unhandled
        if exc_type is None and self.warn and unhandled:
            listed = ", ".join(
                f"{op} ({kind.value}) in {module!r}"
                for (op, module), kind in list(unhandled.items())[:8]
            )
            more = f" and {len(unhandled) - 8} more" if len(unhandled) > 8 else ""
            warnings.warn(
                f"{self.rules.method}: no rule for {listed}{more}; the plain gradient was used "
                f"there, so {self.rules.lost} (cnnlens.coverage lists every operation; "
                "strict=True makes this an error)",
                RuleWarning,
                stacklevel=2,
            )

    @property
    def unhandled(self) -> list[tuple[str, str, Kind]]:
        """(operation, module, kind) of every call that had no rule."""
        return [(op, module, kind) for (op, module), kind in self._report.unhandled.items()]
