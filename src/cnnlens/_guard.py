"""The model guard: the one place where a user's ``model`` argument is bound and run.

Every public call that runs a model enters :class:`guard`. It

* unwraps the model to the eager ``nn.Module`` that cnnlens can intercept
  (:func:`unwrap`): a :class:`LoadedModel` to its ``.module``, ``torch.compile`` output to
  the module it compiled (so dynamo never traces, let alone recompiles, our intercepted
  calls), ``nn.DataParallel``/``DistributedDataParallel`` to the wrapped module (so no
  replica runs in a worker thread where our per-thread interception is absent);
* refuses a TorchScript model, with the reason and what to do, for work that needs to
  intercept operations or hook layers (TorchScript runs its graph outside Python, where
  neither happens: the answer would silently be a plain gradient); gradient-only and
  forward-only work runs on TorchScript unchanged and gives the eager answer;
* serializes calls whose models share a module: the guard claims every module of the
  tree it runs, and a guard on a tree that shares one with another thread's waits for it
  (:class:`_Claims`). Module hooks are process-wide and train flags are shared state, so
  two threads explaining one model at once — or a model and one of its parts, such as
  ``model.features`` or a CamModel's backbone — would see each other's hooks and undo
  each other's flags. A thread may claim again what it holds, so a guarded call may make
  guarded calls (``randomization_test`` -> ``explain``);
* snapshots every submodule's train flag and every parameter's ``requires_grad`` once, at
  the outermost entry, runs in eval mode with parameters frozen (no parameter gradient is
  computed or accumulated), and restores both at the outermost exit, also after an error.
  Compiled parts inside the eager module (``module.compile()`` in place, or a submodule
  replaced by ``torch.compile`` output) run their eager code for the same span.
"""

from __future__ import annotations

import sys
import threading
import weakref
from types import TracebackType
from typing import Any

import torch
from torch import nn

from .errors import InputError

__all__ = ["guard", "is_torchscript", "require_eager", "submodules", "unwrap"]

_PARALLEL: tuple[type[nn.Module], ...] = (
    nn.DataParallel,
    nn.parallel.DistributedDataParallel,
)


def _optimized_module_type() -> type[nn.Module] | None:
    """``torch.compile``'s module wrapper class, when dynamo has been imported (a compiled
    module cannot exist before; importing dynamo only to check would cost seconds)."""
    if "torch._dynamo.eval_frame" not in sys.modules:
        return None
    from torch._dynamo.eval_frame import OptimizedModule

    return OptimizedModule


def unwrap(model: Any) -> nn.Module:
    """The eager ``nn.Module`` behind ``model``: a module, a :class:`LoadedModel`,
    ``torch.compile`` output or a ``DataParallel``/``DistributedDataParallel`` wrapper (in any
    nesting). Anything else raises :class:`InputError`."""
    current = model
    while True:
        compiled = _optimized_module_type()
        if isinstance(current, _PARALLEL):
            current = current.module
        elif compiled is not None and isinstance(current, compiled):
            current = current._orig_mod
        elif isinstance(current, nn.Module):
            return current
        else:
            # a LoadedModel (matched by shape: models/ imports this module)
            inner = getattr(current, "module", None)
            if not isinstance(inner, nn.Module):
                raise InputError(
                    f"expected a torch.nn.Module or a LoadedModel, got {type(model).__name__}"
                )
            current = inner


def _has_torchscript(modules: list[nn.Module]) -> bool:
    # By class, each class once: isinstance against ScriptModule (a metaclass) costs more
    # per module than the rest of the guard's walk.
    return any(issubclass(kind, torch.jit.ScriptModule) for kind in {type(m) for m in modules})


def is_torchscript(module: nn.Module) -> bool:
    """Whether any part of ``module`` is TorchScript (scripted or traced)."""
    return _has_torchscript(submodules(module))


def _torchscript_refused(needs: str) -> InputError:
    return InputError(
        f"{needs} cannot run on a TorchScript model: TorchScript executes its operations "
        "outside Python, where cnnlens cannot intercept them or hook its layers. Use the "
        "eager model: save the weights (torch.save(scripted.state_dict(), PATH)) and load "
        "them with the architecture (load_model(PATH, arch=NAME); CLI: --model PATH --arch "
        "NAME). saliency, smoothgrad, input_x_gradient, integrated_gradients and occlusion "
        "run on TorchScript as it is"
    )


def require_eager(module: nn.Module, needs: str) -> None:
    """Raise :class:`InputError` when ``module`` is TorchScript: ``needs`` names the work
    that has to intercept its operations or hook its layers."""
    if is_torchscript(module):
        raise _torchscript_refused(needs)


def submodules(module: nn.Module) -> list[nn.Module]:
    """Every module of ``module`` once, breadth-first: ``module.modules()`` without the
    dotted names it builds and throws away. The guard walks the model at every call, and
    on a small model ``modules()`` costs as much as a few layers."""
    found = [module]
    seen = {id(module)}
    for m in found:  # grows while it is read: each module's children join the queue
        for child in m._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                found.append(child)
    return found


def _parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters of ``modules``; a tied one as often as it is held (harmless for
    flags, and cheaper than finding it out)."""
    return [p for m in modules for p in m._parameters.values() if p is not None]


class _Claims:
    """Which thread holds each module while a guard is open on a tree that contains it.

    A guard claims all the modules of its tree at once, waiting while another thread holds
    any of them, so two guards whose trees overlap run one after the other. One lock per
    guarded module would not see the overlap of a model and its parts: each guard would
    snapshot, freeze and restore flags the other one had changed. A thread may claim again
    what it holds (nested guarded calls); a module is free when its last claim is released.
    Only ids are kept: a claim holds no reference to a model."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._owner: dict[int, int] = {}  # module id -> thread id
        self._count: dict[int, int] = {}  # module id -> open claims

    def claim(self, modules: list[nn.Module]) -> list[int]:
        """Wait until no other thread holds any of ``modules``, then hold them all."""
        me = threading.get_ident()
        ids = [id(m) for m in modules]
        owner, count = self._owner, self._count
        with self._changed:
            while any(owner.get(i, me) != me for i in ids):
                self._changed.wait()
            for i in ids:
                owner[i] = me
                count[i] = count.get(i, 0) + 1
        return ids

    def release(self, ids: list[int]) -> None:
        """Undo one :meth:`claim` (its return value)."""
        owner, count = self._owner, self._count
        with self._changed:
            for i in ids:
                left = count[i] - 1
                if left:
                    count[i] = left
                else:
                    del count[i], owner[i]
            self._changed.notify_all()


_CLAIMS = _Claims()


class _ModelState:
    """Per eager module: the nesting depth of guarded calls (read and written only by the
    thread that holds the module's claim), whether the model held TorchScript at the
    outermost entry, and the flags to restore at the outermost exit."""

    __slots__ = (
        "compiled",
        "depth",
        "modules",
        "parameters",
        "requires_grad",
        "torchscript",
        "training",
    )

    def __init__(self) -> None:
        self.depth = 0
        self.torchscript = False
        self.modules: list[nn.Module] = []
        self.training: list[bool] = []
        self.parameters: list[nn.Parameter] = []
        self.requires_grad: list[bool] = []
        self.compiled: list[tuple[nn.Module, str, object]] = []

    def snapshot(self, modules: list[nn.Module]) -> None:
        """Read the flags of ``modules`` (a model's :func:`submodules`); changes nothing."""
        parameters = _parameters(modules)
        training = [m.training for m in modules]
        requires_grad = [p.requires_grad for p in parameters]
        self.torchscript = _has_torchscript(modules)
        # assigned together, so that restore() after an error sees all of it or none
        self.modules, self.training = modules, training
        self.parameters, self.requires_grad = parameters, requires_grad

    def freeze(self, module: nn.Module) -> None:
        """Eval mode, frozen parameters, compiled parts eager. Only what differs is changed:
        a model already in eval mode with frozen parameters (the usual case) costs the
        walk and nothing more."""
        if any(self.training):
            module.eval()
        if any(self.requires_grad):
            for p in self.parameters:
                p.requires_grad_(False)
        self._run_compiled_parts_eagerly()

    def _run_compiled_parts_eagerly(self) -> None:
        """Dynamo would trace our interception and recompile at every call: point compiled
        parts at their eager code (instance attributes, put back by :meth:`restore`)."""
        compiled = _optimized_module_type()
        if compiled is None:
            return
        for m in self.modules:
            # module.compile(): nn.Module.__call__ uses _compiled_call_impl when set
            impl = m.__dict__.get("_compiled_call_impl")
            if impl is not None:
                self.compiled.append((m, "_compiled_call_impl", impl))
                m._compiled_call_impl = None
            # torch.compile(submodule) kept as a submodule: its forward is dynamo's wrapper
            if isinstance(m, compiled) and "forward" in m.__dict__:
                eager = m._orig_mod
                assert isinstance(eager, nn.Module)
                self.compiled.append((m, "forward", m.__dict__["forward"]))
                m.forward = eager.__call__

    def restore(self) -> None:
        # The lists hold the only strong references the registry has to the model; clearing
        # them lets the weak key (and this state) go with the model.
        modules, self.modules = self.modules, []
        training, self.training = self.training, []
        parameters, self.parameters = self.parameters, []
        requires_grad, self.requires_grad = self.requires_grad, []
        compiled, self.compiled = self.compiled, []
        for m, name, value in compiled:
            setattr(m, name, value)
        # Every flag is compared, so whatever changed them is undone; only those that
        # differ are written (nn.Module.__setattr__ is slow).
        for p, flag in zip(parameters, requires_grad, strict=True):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, flag in zip(modules, training, strict=True):
            if m.training != flag:
                m.training = flag


_STATES: weakref.WeakKeyDictionary[nn.Module, _ModelState] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(module: nn.Module) -> _ModelState:
    with _STATES_LOCK:
        state = _STATES.get(module)
        if state is None:
            state = _STATES[module] = _ModelState()
        return state


class guard:  # noqa: N801 (used like a function: ``with guard(model) as module``)
    """``with guard(model, needs=...) as module``: ``module`` is the eager module, locked to
    this thread, in eval mode with frozen parameters until the outermost guard exits.

    ``needs`` names the work when it intercepts operations or hooks layers (``"deeplift"``,
    ``"layer activations"``): a TorchScript model is then refused with
    :class:`InputError`. Leave it ``None`` for work made of forward and input-gradient
    passes only, which TorchScript runs exactly.
    """

    def __init__(self, model: Any, *, needs: str | None = None) -> None:
        self.module = unwrap(model)
        self.needs = needs
        self._state: _ModelState | None = None
        self._claimed: list[int] = []

    def __enter__(self) -> nn.Module:
        modules = submodules(self.module)
        claimed = _CLAIMS.claim(modules)
        state = _state(self.module)
        try:
            if state.depth == 0:
                state.snapshot(modules)
            if self.needs is not None and state.torchscript:
                raise _torchscript_refused(self.needs)
            if state.depth == 0:
                state.freeze(self.module)
            state.depth += 1
        except BaseException:
            if state.depth == 0:
                state.restore()
            _CLAIMS.release(claimed)
            raise
        self._state, self._claimed = state, claimed
        return self.module

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        try:
            state.depth -= 1
            if state.depth == 0:
                state.restore()
        finally:
            _CLAIMS.release(self._claimed)
            self._claimed = []
