"""A small benchmark harness: time a method against its floor in the same run.

A :class:`Case` pairs the method (``fn``) with its *floor* (``floor_fn``): the raw torch
computation it cannot beat, e.g. one forward and backward pass of the same model and batch.
Optional ``competitors`` (captum, zennit, ...) are timed alongside. Rounds are interleaved
(every function once per round, in rotating order) so that drifting machine load hits all
rows alike; after ``warmup`` rounds, ``repeats`` rounds are timed and each row reports its
median, min and max, and the ratio of its median to the floor's median.

Modules ``benchmarks/bench_*.py`` expose ``cases() -> list[Case]``; ``benchmarks/run.py``
collects them and writes the table to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["Case", "Row", "environment", "markdown", "run_case", "set_threads"]


@dataclass
class Case:
    """One benchmark: ``fn`` against ``floor_fn``.

    ``target``: the largest acceptable ratio to the floor (shown in the table, ``None`` for
    none). ``competitors``: name -> function, timed as extra rows with their own ratio.
    """

    name: str
    fn: Callable[[], object]
    floor_fn: Callable[[], object]
    repeats: int = 5
    warmup: int = 1
    competitors: dict[str, Callable[[], object]] = field(default_factory=dict)
    target: float | None = None
    floor_name: str = "floor"
    method_name: str = "cnnlens"
    note: str = ""


@dataclass(frozen=True)
class Row:
    case: str
    name: str
    times: tuple[float, ...]  # seconds, one per timed round
    ratio: float  # median / floor median
    target: float | None
    kind: str  # "floor", "method" or "competitor"

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ok(self) -> bool | None:
        if self.kind != "method" or self.target is None:
            return None
        return self.ratio <= self.target


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()


def _time(fn: Callable[[], object]) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def run_case(case: Case, *, repeats: int | None = None, warmup: int | None = None) -> list[Row]:
    """Time ``case``: floor, method and competitors, interleaved; one :class:`Row` each."""
    entries: list[tuple[str, str, Callable[[], object]]] = [
        ("floor", case.floor_name, case.floor_fn),
        ("method", case.method_name, case.fn),
        *(("competitor", name, fn) for name, fn in case.competitors.items()),
    ]
    n = case.repeats if repeats is None else repeats
    w = case.warmup if warmup is None else warmup
    if n < 1:
        raise ValueError("repeats must be at least 1")
    samples: list[list[float]] = [[] for _ in entries]
    for round_ in range(w + n):
        order = list(range(len(entries)))
        shift = round_ % len(entries)
        for i in order[shift:] + order[:shift]:
            elapsed = _time(entries[i][2])
            if round_ >= w:
                samples[i].append(elapsed)
    floor = statistics.median(samples[0])
    return [
        Row(
            case=case.name,
            name=name,
            times=tuple(times),
            ratio=statistics.median(times) / floor if floor > 0 else float("inf"),
            target=case.target if kind == "method" else None,
            kind=kind,
        )
        for (kind, name, _), times in zip(entries, samples, strict=True)
    ]


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: every core) and return the number in use."""
    count = threads if threads is not None else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, count))
    return torch.get_num_threads()


def environment() -> dict[str, str]:
    """What the numbers depend on, for the table's header."""
    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "cuda available": device,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def markdown(rows: Sequence[Row], env: dict[str, str], *, title: str = "Benchmarks") -> str:
    """The results as a markdown document: environment, then one table row per timing."""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += [
        "",
        "Each case is timed against its floor (the raw torch computation it cannot beat) in "
        "the same run, rounds interleaved; times are per call. `x floor` is the median's "
        "ratio to the floor's median.",
        "",
        "| case | row | median ms | min ms | max ms | x floor | target |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        target = ""
        if row.ok is not None:
            target = f"<= {row.target:.2f} {'ok' if row.ok else 'MISSED'}"
        lines.append(
            f"| {row.case} | {row.name} ({row.kind}) | {_ms(row.median)} | "
            f"{_ms(min(row.times))} | {_ms(max(row.times))} | {row.ratio:.2f} | {target} |"
        )
    return "\n".join(lines) + "\n"
