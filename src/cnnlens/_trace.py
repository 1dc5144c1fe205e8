"""One dry forward pass that lists which modules ran, in completion order, and their
output shapes. Hooks are removed in ``finally``."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._guard import guard

__all__ = ["ModuleCall", "default_feature_layer", "trace_calls"]


@dataclass(frozen=True)
class ModuleCall:
    name: str
    module: nn.Module
    output_shape: tuple[int, ...] | None  # None when the output is not a tensor


def trace_calls(model: nn.Module, inputs: Tensor) -> list[ModuleCall]:
    """Every module call of one forward pass of ``inputs`` (no gradients), in the order the
    calls finished (children before the containers that hold them)."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[ModuleCall] = []

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        shape = tuple(output.shape) if isinstance(output, Tensor) else None
        calls.append(ModuleCall(names[module], module, shape))

    # The hooks go on under the model's lock: another thread's call (a deep copy of the
    # model, say) must never see them, nor a copy keep one.
    with guard(model, needs="tracing the layers"):
        handles = []
        try:
            for module in names:
                if module is not model:
                    handles.append(module.register_forward_hook(hook))
            with torch.inference_mode():
                model(inputs)
        finally:
            for handle in handles:
                handle.remove()
    return calls


_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# Memo of default layers: the dry pass costs a one-item forward, a noticeable share of a
# layer method's time on small batches. Keyed weakly by the model (nothing is attached to
# it) and by the input's shape, dtype and device and the identity of every submodule, so a
# model whose modules are replaced is traced again.
_DEFAULT_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], nn.Module]] = (
    weakref.WeakKeyDictionary()
)


def default_feature_layer(model: nn.Module, inputs: Tensor) -> nn.Module:
    """The last module whose output is a 4-D feature map (global pooling excluded)."""
    from .errors import InputError

    key = (
        tuple(inputs.shape[1:]),
        inputs.dtype,
        inputs.device,
        tuple(id(m) for m in model.modules()),
    )
    known = _DEFAULT_LAYERS.get(model)
    if known is not None and key in known:
        return known[key]
    for call in reversed(trace_calls(model, inputs[:1])):
        if call.output_shape is None or len(call.output_shape) != 4:
            continue
        if isinstance(call.module, _GLOBAL_POOLS) and call.output_shape[-2:] == (1, 1):
            continue
        memo = _DEFAULT_LAYERS.setdefault(model, {})
        if len(memo) >= 8:
            memo.clear()
        memo[key] = call.module
        return call.module
    raise InputError("the model has no module with a 4-D (B, C, H, W) output; pass layer=")
