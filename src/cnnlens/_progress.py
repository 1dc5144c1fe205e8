"""The one progress facility: a tqdm bar on stderr saying what is being done, with an ETA.

Every long call takes ``progress: bool | None`` and opens its bar here::

    with progress(total=len(steps), desc="occlusion", enabled=progress, unit="batch") as bar:
        for step in steps:
            bar.describe(f"window {step}")   # what is being done now
            work(step)
            bar.advance()                     # a step counts once it is done

Whether a bar is shown, strongest first: the process-wide mode set by
:func:`progress_mode` (the CLI's ``--quiet`` turns everything off) when it is ``False``;
the call's own ``enabled`` (``False``: off, ``True``: on); the process-wide mode when it is
``True``; the environment variable ``CNNLENS_PROGRESS`` (``1``: on, ``0``: off); else a bar
only when stderr is a terminal. A bar opened while another is open is an inner bar: it
is drawn below it and cleared when done, so nested calls (a method inside ``explain``
with several methods, ``visualize`` inside the atlas) read as one display.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = [
    "Listener",
    "Progress",
    "listen",
    "progress",
    "progress_mode",
    "show_progress",
    "step",
    "track",
]

T = TypeVar("T")

_mode: bool | None = None  # set by progress_mode(); None: decide per call
_open = threading.local()  # bars open in this thread (inner bars are cleared when done)


def show_progress(enabled: bool | None = None) -> bool:
    """Whether a bar asked for with ``enabled`` is shown now (see the module docstring)."""
    if _mode is False or enabled is False:
        return False
    if enabled is True or _mode is True:
        return True
    env = os.environ.get("CNNLENS_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


@contextmanager
def progress_mode(enabled: bool | None) -> Iterator[None]:
    """Force every bar on (``True``) or off (``False``) in this process while the block
    runs, whatever the calls ask for (``None``: back to per-call decisions); restored on
    exit. The CLI wraps a command in ``progress_mode(False)`` for ``--quiet``; tests use
    ``progress_mode(True)`` to read the bars from stderr."""
    global _mode
    before = _mode
    _mode = enabled
    try:
        yield
    finally:
        _mode = before


Listener = Callable[[str, int, "int | None"], None]
"""Told ``(desc, done, total)`` when a bar opens and after each finished step."""


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Report every bar opened in this thread while the block runs, shown or hidden, to
    ``listener``. The explorer shows a background job's progress this way; an exception
    raised by the listener (a cancel) stops the work at the step that reported."""
    before = getattr(_open, "listener", None)
    _open.listener = listener
    try:
        yield
    finally:
        _open.listener = before


class Progress:
    """A bar that counts finished steps; every method is a no-op when it is hidden and
    nobody listens."""

    def __init__(
        self, bar: Any, *, desc: str = "", total: int | None = None, done: int = 0
    ) -> None:
        self._bar = bar
        self.done = done
        self.desc = desc
        self.total = total
        self._listener: Listener | None = getattr(_open, "listener", None)
        self._tell()

    def _tell(self) -> None:
        if self._listener is not None:
            self._listener(self.desc, self.done, self.total)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def advance(self, n: int = 1) -> None:
        """``n`` more steps are finished."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        self._tell()

    def describe(self, text: str) -> None:
        """Say what is being done now (shown after the count, redrawn at once)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def grow(self, total: int) -> None:
        """The work turned out to have ``total`` steps (e.g. a dataset's length is known
        only after opening it)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()


@contextmanager
def progress(
    total: int | None,
    desc: str,
    *,
    enabled: bool | None = None,
    unit: str = "step",
    initial: int = 0,
) -> Iterator[Progress]:
    """A progress bar for ``total`` steps named ``desc`` (see the module docstring);
    ``initial`` steps were done before (a resumed job: not counted in the rate)."""
    depth = getattr(_open, "depth", 0)
    if not show_progress(enabled):
        yield Progress(None, desc=desc, total=total, done=initial)
        return
    bar = tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=depth == 0,
        dynamic_ncols=True,
        # Forced bars off a terminal (tests, logs) draw every change, not twice a second.
        mininterval=0.1 if sys.stderr.isatty() else 0.0,
    )
    _open.depth = depth + 1
    try:
        yield Progress(bar, desc=desc, total=total, done=initial)
    finally:
        _open.depth = depth
        bar.close()


def track(
    items: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    enabled: bool | None = None,
    unit: str = "step",
) -> Iterator[T]:
    """Iterate over ``items`` with a bar; an item counts as done when the loop body that
    received it has finished (when the next item is asked for, or the loop ends)."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress(total, desc, enabled=enabled, unit=unit) as bar:
        for item in items:
            yield item
            bar.advance()


@contextmanager
def step(bar: Progress, what: str) -> Iterator[None]:
    """One named step of ``bar``: described while it runs; once it has finished, marked
    done and counted (so the count never includes the step still running)."""
    bar.describe(what)
    yield
    bar.describe(f"{what}: done")
    bar.advance()
