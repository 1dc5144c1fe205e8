"""Background jobs: long work (occlusion, Score-CAM, feature visualization, dataset passes)
runs on one worker thread, reports progress, and can be cancelled.

A job's function receives a :class:`Progress`; it reports with ``update`` and stops at the
next ``check`` once cancelled (``CancelledError`` is raised there). Jobs with the same key are
shared: asking again for running or finished work returns the same job, which is also the
cache of finished results.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._progress import listen
from ..errors import InputError

__all__ = ["CancelledError", "Job", "Jobs", "Progress", "reporting"]


class CancelledError(Exception):
    """Raised inside a job's work when the job was cancelled."""


@dataclass
class Progress:
    """What a running job reports; read by the status route from another thread."""

    done: float = 0.0
    total: float = 0.0
    stage: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)

    def update(self, done: float, total: float | None = None, stage: str | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if stage is not None:
            self.stage = stage

    def check(self) -> None:
        if self.cancel.is_set():
            raise CancelledError

    @property
    def fraction(self) -> float | None:
        return None if self.total <= 0 else min(1.0, self.done / self.total)


@dataclass
class Job:
    id: str
    kind: str
    key: tuple[Any, ...]
    params: dict[str, Any]
    progress: Progress = field(default_factory=Progress)
    state: str = "queued"  # queued, running, done, failed, cancelled
    result: dict[str, Any] | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    seconds: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "params": self.params,
            "state": self.state,
            "progress": self.progress.fraction,
            "done": self.progress.done,
            "total": self.progress.total,
            "stage": self.progress.stage,
            "seconds": self.seconds,
            "error": self.error,
            "result": self.result,
        }


class Jobs:
    """Runs jobs one at a time on a worker thread; keeps the last ``keep`` of them."""

    def __init__(self, *, keep: int = 128) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnlens-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._by_key: dict[tuple[Any, ...], Job] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def submit(
        self,
        kind: str,
        key: tuple[Any, ...],
        params: dict[str, Any],
        work: Callable[[Progress], dict[str, Any]],
    ) -> Job:
        """The job for ``key``: the existing one unless it failed or was cancelled."""
        with self._lock:
            existing = self._by_key.get(key)
            if existing is not None and existing.state not in ("failed", "cancelled"):
                return existing
            job = Job(id=uuid.uuid4().hex[:16], kind=kind, key=key, params=params)
            self._jobs[job.id] = job
            self._by_key[key] = job
            while len(self._jobs) > self._keep:
                _, old = self._jobs.popitem(last=False)
                if self._by_key.get(old.key) is old:
                    del self._by_key[old.key]
        self._executor.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Progress], dict[str, Any]]) -> None:
        start = time.perf_counter()
        try:
            job.progress.check()
            job.state = "running"
            job.result = work(job.progress)
            job.state = "done"
        except CancelledError:
            job.state = "cancelled"
        except InputError as exc:
            job.error = one_line(str(exc))
            job.state = "failed"
        except Exception as exc:  # reported on the job, not lost in the worker thread
            job.error = one_line(f"{type(exc).__name__}: {exc}")
            job.state = "failed"
        finally:
            job.seconds = time.perf_counter() - start

    def find(self, key: tuple[Any, ...]) -> Job | None:
        """The job kept for ``key`` (running or finished), if any; starts nothing."""
        with self._lock:
            return self._by_key.get(key)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.state in ("queued", "running"):
            job.progress.cancel.set()
        return job

    def shutdown(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.progress.cancel.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "error"


@contextlib.contextmanager
def reporting(progress: Progress) -> Iterator[None]:
    """The library's own progress (every long call reports through ``cnnlens._progress``)
    becomes the job's progress while the block runs in this thread; after a cancel the work
    stops at its next finished step."""

    def tell(desc: str, done: int, total: int | None) -> None:
        progress.check()
        progress.update(done, total, desc)

    with listen(tell):
        yield
