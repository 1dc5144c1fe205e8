"""Torch's errors that are really the caller's bad input, said as :class:`InputError`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor

from .errors import InputError

__all__ = ["channel_mismatch", "input_errors"]

_CHANNELS = re.compile(
    r"expected input\[([\d, ]+)\] to have (\d+) channels, but got (\d+) channels instead"
)


def channel_mismatch(exc: RuntimeError, inputs: Tensor) -> InputError | None:
    """An InputError when ``exc`` is a convolution refusing ``inputs`` themselves for their
    channel count (not a tensor deeper inside the model: that is the model's own bug)."""
    found = _CHANNELS.search(str(exc))
    if found is None:
        return None
    shape = tuple(int(v) for v in found.group(1).split(","))
    if shape != tuple(inputs.shape):
        return None
    expected, got = found.group(2), found.group(3)
    return InputError(
        f"the model expects {expected} input channels, but the inputs have {got} "
        f"(shape {tuple(inputs.shape)})"
    )


@contextmanager
def input_errors(inputs: Tensor) -> Iterator[None]:
    """Inside the block, a convolution refusing ``inputs`` for their channel count raises
    :class:`InputError`; every other error passes unchanged."""
    try:
        yield
    except RuntimeError as exc:
        error = channel_mismatch(exc, inputs)
        if error is None:
            raise
        raise error from None
