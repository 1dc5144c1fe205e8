"""Parameters derived from a layer's own (BatchNorm folded into the weight and bias, the
parts ``W+``, ``W-``, ``|W|``, ``W²`` and ones the rules use), computed once per version of
the tensors they come from and kept for the model being explained.

Every call of a rule needs them, and building them costs passes over all the weights: for a
small model at batch 1 (EfficientNet-Lite0, 128 px) that is a tenth of a forward and backward
pass. An entry is kept while its weight lives and every source tensor is unchanged (same
data pointer and version counter: in-place updates, ``load_state_dict`` and ``.to()`` all
change one of them), and only for one model at a time (:func:`derived_for`), so the memory
held is a few copies of that model's weights, released when another model is explained.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

__all__ = ["Derived", "derived_for"]

_Stamp = tuple[Any, ...]


def _stamp(sources: Sequence[Tensor | None], extra: tuple[float, ...]) -> _Stamp | None:
    """What identifies the sources' current contents: data pointers and version counters
    (``None`` when one is an inference tensor, which has no version counter: not kept)."""
    try:
        return (*((None if t is None else (t.data_ptr(), t._version)) for t in sources), *extra)
    except RuntimeError:
        return None


class Derived:
    """Derived values per tuple of source tensors (the first one held weakly)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, ...], tuple[weakref.ref[Tensor], _Stamp, dict[str, Any]]]
        self._entries = {}

    def values(
        self, sources: Sequence[Tensor | None], extra: tuple[float, ...] = ()
    ) -> dict[str, Any]:
        """The dict of values derived from ``sources`` (with the numbers ``extra``): empty
        when one of them changed since the values were made."""
        first = sources[0]
        assert first is not None
        stamp = _stamp(sources, extra)
        if stamp is None:
            return {}
        key = tuple(0 if t is None else id(t) for t in sources)
        entry = self._entries.get(key)
        if entry is None or entry[0]() is not first or entry[1] != stamp:
            entry = (weakref.ref(first, self._dropper(key)), stamp, {})
            self._entries[key] = entry
        return entry[2]

    def _dropper(self, key: tuple[int, ...]) -> Callable[[Any], None]:
        def drop(ref: Any) -> None:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

        return drop


_LOCK = threading.Lock()
_CURRENT: list[tuple[weakref.ref[Any], Derived]] = []


def derived_for(model: object) -> Derived:
    """The derived parameters kept for ``model``; explaining another model drops the
    previous one's."""
    with _LOCK:
        if _CURRENT and _CURRENT[0][0]() is model:
            return _CURRENT[0][1]
        derived = Derived()
        _CURRENT[:] = [(weakref.ref(model), derived)]
        return derived
