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
* serializes calls on one model with a per-model re-entrant lock, weakly keyed by the eager
  module: module hooks are process-wide and train flags are shared state, so two threads
  explaining one model at once would see each other's hooks and undo each other's flags.
  Re-entrant, so a guarded call may make guarded calls (``randomization_test`` ->
  ``explain``);
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


class _ModelState:
    """Per eager module: its lock, the nesting depth of guarded calls (read and written only
    by the thread holding the lock), whether the model held TorchScript at the outermost
    entry, and the flags to restore at the outermost exit."""

    __slots__ = (
        "compiled",
        "depth",
        "lock",
        "modules",
        "parameters",
        "requires_grad",
        "torchscript",
        "training",
    )

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.torchscript = False
        self.modules: list[nn.Module] = []
        self.training: list[bool] = []
        self.parameters: list[nn.Parameter] = []
        self.requires_grad: list[bool] = []
        self.compiled: list[tuple[nn.Module, str, object]] = []

    def snapshot(self, module: nn.Module) -> None:
        """Walk ``module`` and read its flags; changes nothing."""
        modules = submodules(module)
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

    def __enter__(self) -> nn.Module:
        state = _state(self.module)
        state.lock.acquire()
        try:
            if state.depth == 0:
                state.snapshot(self.module)
            if self.needs is not None and state.torchscript:
                raise _torchscript_refused(self.needs)
            if state.depth == 0:
                state.freeze(self.module)
            state.depth += 1
        except BaseException:
            if state.depth == 0:
                state.restore()
            state.lock.release()
            raise
        self._state = state
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
            state.lock.release()
