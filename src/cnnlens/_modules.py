"""Resolving the user's ``layer`` argument (the ``model`` argument is bound by
:mod:`cnnlens._guard`)."""

from __future__ import annotations

import difflib

from torch import nn

from .errors import InputError

__all__ = ["layer_name", "locate_layer", "resolve_layer"]


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A submodule of ``model`` given as a module or as its dotted name from ``named_modules()``.

    An unknown name raises :class:`InputError` listing the closest names.
    """
    return locate_layer(model, layer)[0]


def locate_layer(model: nn.Module, layer: nn.Module | str) -> tuple[nn.Module, str]:
    """:func:`resolve_layer` and the layer's dotted name, from one walk over the model."""
    if isinstance(layer, nn.Module):
        return layer, layer_name(model, layer)
    if not isinstance(layer, str):
        raise InputError(f"layer must be a module or a dotted name, got {type(layer).__name__}")
    if layer and not layer.startswith(_WRAPPER_PREFIXES):
        # the dotted path alone (a walk over every module and its name costs 0.1 ms on
        # EfficientNet-Lite0, at every call); the full walk below for what it misses
        try:
            return model.get_submodule(layer), layer
        except (AttributeError, RuntimeError):  # RuntimeError: a ScriptModule refuses it
            pass
    named = dict(model.named_modules())
    for candidate in (layer, _without_wrapper_prefix(layer)):
        if candidate in named and candidate != "":
            return named[candidate], candidate
    names = [n for n in named if n]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    if not close:
        close = [n for n in names if layer in n][:5]
    hint = f"; closest: {', '.join(close)}" if close else "; see `cnnlens layers` for the names"
    raise InputError(f"unknown layer {layer!r}{hint}")


# What DataParallel/DistributedDataParallel (``module``) and torch.compile (``_orig_mod``) put
# in front of the names: the guard runs the eager module inside, so a name taken from the
# wrapper's named_modules() is found without it.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _without_wrapper_prefix(name: str) -> str:
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The dotted name of ``layer`` inside ``model``."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise InputError(f"layer {type(layer).__name__} is not a submodule of the model")
