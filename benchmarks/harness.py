"""The benchmark harness: time a method against its floor and its peers in the same run.

A :class:`Case` is one method on one model: the *floor* (the raw torch computation the
method cannot beat, e.g. one forward and one backward pass to the input), *ours* (the
cnnlens call) and the *peers* (captum, zennit, pytorch-grad-cam, torchcam doing the same
computation). :func:`run_case` runs them in interleaved rounds (every entry once per round,
in an order shuffled each round) so that drifting machine load and the state one entry
leaves for the next hit all of them alike, and records both wall time and process CPU
time; after the timed rounds it measures each entry's peak memory with one more, untimed,
call (:func:`peak_memory`; in the last round for a case run without warm-up, whose calls
take minutes). Where a case says how to compare results, one more untimed call of ours
and of each peer gives each peer's agreement with ours (:func:`cosine`): a peer that
computes something cheaper on this model is marked, not taken for a faster implementation.
:func:`markdown` writes one table line per case with the ratios to the floor, the interval
of ours and the goal's verdict.

Modules define cases with :class:`Entry` (a name and a callable) and :class:`Goal` (a text
and a check on the :class:`Result`); ``benchmarks/method_cases.py`` builds all of them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "AGREES",
    "ALLOCATOR_SETTINGS",
    "Case",
    "Entry",
    "Goal",
    "Result",
    "Timing",
    "checkout_commit",
    "cosine",
    "environment",
    "load_average",
    "markdown",
    "memory_allocator",
    "peak_memory",
    "run_case",
    "script_parser",
    "set_threads",
    "summary",
]


@dataclass(frozen=True)
class Entry:
    """A timed computation; ``fn`` None with ``error`` set: a peer that cannot do it."""

    name: str
    fn: Callable[[], object] | None
    error: str = ""


@dataclass(frozen=True)
class Goal:
    """The goal a case is checked against: ``check(result)`` True (met), False (missed) or
    None (cannot be decided, e.g. no peer ran)."""

    text: str
    check: Callable[[Result], bool | None]
    from_issue: bool = True
    # The largest ratio of ours to the floor (CPU) that meets the goal, where the goal is
    # such a bound: the verdict then says when the ratio's interval straddles it.
    limit: Callable[[Result], float] | None = None


@dataclass
class Case:
    """One method on one model: ``floor``, ``ours`` and ``peers``, checked against ``goal``."""

    method: str
    model: str
    floor: Entry
    ours: Entry
    peers: list[Entry] = field(default_factory=list)
    goal: Goal | None = None
    note: str = ""
    rounds: int | None = None  # overrides run_case's (a case of minutes: fewer)
    warmup: int | None = None
    # what any implementation must compute, timed bare (``benchmarks/bounds.py``): how far
    # the goal is reachable at all
    bound: Entry | None = None
    # the result of an entry as a tensor to compare with cnnlens' (``None``: results are
    # not compared): a peer whose rule never applies to this model's layers returns
    # something cheaper than the method, and its time is no comparison
    compared: Callable[[object], Tensor] | None = None


@dataclass(frozen=True)
class Timing:
    """What was measured of one entry: seconds per round (wall and CPU) and the peak memory
    above the state before the call, in bytes (None: not measured)."""

    name: str
    wall: tuple[float, ...] = ()
    cpu: tuple[float, ...] = ()
    memory: int | None = None
    error: str = ""
    # cosine similarity of its result to cnnlens' (a peer of a case that compares results)
    agreement: float | None = None

    def seconds(self, clock: str = "cpu") -> tuple[float, ...]:
        """The rounds' times on ``clock`` (``"cpu"`` or ``"wall"``)."""
        return self.cpu if clock == "cpu" else self.wall

    def median(self, clock: str = "cpu") -> float:
        return statistics.median(self.seconds(clock))

    def best(self, clock: str = "cpu") -> float:
        return min(self.seconds(clock))


@dataclass(frozen=True)
class Result:
    case: Case
    floor: Timing
    ours: Timing
    peers: tuple[Timing, ...]
    bound: Timing | None = None
    # intervals already computed: the summary, the ratio's cell and the verdict each ask
    # for ours, and one bootstrap of a few hundred rounds takes a large part of a second
    _intervals: dict[tuple[Timing, str, float, int], tuple[float, float] | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def ratio(self, timing: Timing, clock: str = "cpu") -> float:
        """``timing``'s median over the floor's median (inf where it did not run)."""
        if timing.error or not timing.cpu:
            return float("inf")
        floor = self.floor.median(clock)
        return timing.median(clock) / floor if floor > 0 else float("inf")

    def interval(
        self, timing: Timing, clock: str = "cpu", level: float = 0.95, resamples: int = 2000
    ) -> tuple[float, float] | None:
        """A ``level`` confidence interval of :meth:`ratio` by bootstrap over the rounds
        (None under 5 rounds). Rounds are resampled in pairs - ``timing`` and the floor of
        the same round - so that load shared by a round cancels in the ratio. The seed is
        fixed: the same timings give the same interval."""
        key = (timing, clock, level, resamples)
        if key not in self._intervals:
            self._intervals[key] = self._bootstrap(timing, clock, level, resamples)
        return self._intervals[key]

    def _bootstrap(
        self, timing: Timing, clock: str, level: float, resamples: int
    ) -> tuple[float, float] | None:
        mine, floor = timing.seconds(clock), self.floor.seconds(clock)
        if timing.error or len(mine) < 5 or len(floor) < 5:
            return None
        rng = random.Random(0)
        paired = len(mine) == len(floor)
        ratios = []
        for _ in range(resamples):
            picks = [rng.randrange(len(mine)) for _ in mine]
            downs = picks if paired else [rng.randrange(len(floor)) for _ in floor]
            down = statistics.median(floor[i] for i in downs)
            ratios.append(statistics.median(mine[i] for i in picks) / down)
        ratios.sort()
        tail = (1 - level) / 2
        return ratios[int(tail * resamples)], ratios[
            min(resamples - 1, int((1 - tail) * resamples))
        ]

    @property
    def within_noise(self) -> bool:
        """Whether the verdict could go the other way at this noise: the goal is a bound on
        the ratio and the ratio's 95 % interval reaches across it."""
        goal, span = self.case.goal, self.interval(self.ours)
        if goal is None or goal.limit is None or span is None or self.ok is None:
            return False
        limit = goal.limit(self)
        return span[0] <= limit < span[1]

    @property
    def ok(self) -> bool | None:
        if self.case.goal is None or self.ours.error:
            return None if self.case.goal is None else False
        return self.case.goal.check(self)


def _error(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120]}" if lines else type(exc).__name__


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()


def _quiet(fn: Callable[[], object]) -> object:
    """``fn()`` with warnings silenced: the peers warn on every call (and the test suite
    turns warnings into errors), which is noise in a timing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# Peak memory. tracemalloc does not see torch's CPU tensors and torch keeps no CPU allocator
# statistics, so we read the process's resident set: Linux resets its high-water mark
# (VmHWM) to the current RSS when "5" is written to /proc/self/clear_refs. Before the call
# the garbage is collected and glibc's free memory is returned to the system (malloc_trim
# releases the free pages of every arena), so memory freed by earlier calls cannot hide
# the call's own allocations; the peak above the RSS before the call is what it needs
# beyond the model, its inputs and the imported libraries.
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{key} not in {_STATUS}")
    return int(match.group(1))


def _trim() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _measured(fn: Callable[[], object], *, memory: bool = False) -> tuple[float, float, int | None]:
    """Wall and CPU seconds of ``fn()`` and, with ``memory``, the bytes of resident memory
    it needs above the state before it (CPU: Linux only, else None; CUDA: torch's peak
    allocated bytes above the current ones). The memory bookkeeping is outside the timing."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    before: int | None = None
    if memory:
        _trim()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        elif _STATUS.exists() and _CLEAR_REFS.exists():
            try:
                before = _status_kb("VmRSS")
                _CLEAR_REFS.write_text("5")
            except OSError:
                before = None
    _sync()
    wall, cpu = time.perf_counter(), time.process_time()
    result = _quiet(fn)
    _sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if before is None:
        return wall, cpu, None
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM") * 1024
    del result
    return wall, cpu, max(0, peak - (before if cuda else before * 1024))


def peak_memory(fn: Callable[[], object]) -> int | None:
    """Bytes of memory ``fn()`` needs above the state before it (see :func:`_measured`)."""
    return _measured(fn, memory=True)[2]


def _round_order(count: int, round_: int) -> list[int]:
    """The order in which the entries run in round ``round_``: a permutation drawn from a
    fixed seed. A rotation would balance positions but not neighbours: in a cycle each entry
    always follows the same one, and an entry that runs after a heavy one (LRP, a peer
    that allocates gigabytes) pays for the memory it returned to the system - measured on
    EfficientNet-Lite0 at batch 1, the floor timed twice in one case differed by 4-7 %,
    always the same way, by which entry preceded it. Random order spreads that over all."""
    order = list(range(count))
    random.Random(round_).shuffle(order)
    return order


def run_case(
    case: Case,
    *,
    rounds: int = 3,
    warmup: int = 1,
    memory: bool = True,
    budget: float = 0.0,
    max_rounds: int = 25,
) -> Result:
    """Time ``case``'s floor, ours and peers in interleaved rounds (``case.rounds`` and
    ``case.warmup`` override the arguments), then their peak memory.

    ``budget``: for a case with a warm-up, more timed rounds (up to ``max_rounds``) while
    the timed rounds so far took less than ``budget`` seconds, so that a fast case gets the
    rounds that steady its medians and a slow one keeps ``rounds``.

    The first round (warm-up or timed) also probes the peers and ours: one that raises is
    reported with its error and left out of the timing (a peer that cannot explain the
    model is a result); a failing floor is a bug of the case and raises."""
    rounds = case.rounds if case.rounds is not None else rounds
    warmup = case.warmup if case.warmup is not None else warmup
    if rounds < 1 or warmup < 0:
        raise ValueError("rounds must be at least 1, warmup at least 0")
    entries = [case.floor, case.ours, *case.peers, *([case.bound] if case.bound else [])]
    errors = [entry.error for entry in entries]
    wall: list[list[float]] = [[] for _ in entries]
    cpu: list[list[float]] = [[] for _ in entries]
    # Without warm-up (cases of minutes) the last round also measures the memory (it may
    # then include one-off allocations of a first call); otherwise one more, untimed call.
    inline = memory and warmup == 0
    peaks: list[int | None] = [None for _ in entries]
    last = warmup + rounds - 1
    extend = budget > 0 and warmup > 0  # (a case without warm-up measures memory inline)
    timed = 0.0
    round_ = -1
    while True:
        round_ += 1
        done = round_ - warmup  # timed rounds so far
        if round_ > last and not (extend and timed < budget and done < max_rounds):
            break
        started = time.perf_counter()
        for i in _round_order(len(entries), round_):
            fn = entries[i].fn
            if errors[i] or fn is None:
                continue
            try:
                seconds = _measured(fn, memory=inline and round_ == last)
            except Exception as exc:
                if round_ > 0 or i == 0:
                    raise
                errors[i] = _error(exc)
                if os.environ.get("CNNLENS_BENCH_TRACEBACK"):
                    traceback.print_exc()
                continue
            if round_ >= warmup:
                wall[i].append(seconds[0])
                cpu[i].append(seconds[1])
                peaks[i] = seconds[2]
        if round_ >= warmup:
            timed += time.perf_counter() - started
    timings = []
    for i, entry in enumerate(entries):
        fn = entry.fn
        if memory and not inline and fn is not None and not errors[i]:
            peaks[i] = peak_memory(fn)
        timings.append(Timing(entry.name, tuple(wall[i]), tuple(cpu[i]), peaks[i], errors[i]))
    peers = len(case.peers)
    if case.compared is not None and case.ours.fn is not None and not errors[1]:
        reference = case.compared(_quiet(case.ours.fn))
        for i in range(2, 2 + peers):
            fn = entries[i].fn
            if fn is not None and not errors[i]:
                agreement = cosine(reference, case.compared(_quiet(fn)))
                timings[i] = replace(timings[i], agreement=agreement)
    bound = timings[2 + peers] if case.bound else None
    return Result(case, timings[0], timings[1], tuple(timings[2 : 2 + peers]), bound)


def cosine(a: Tensor, b: Tensor) -> float:
    """The cosine similarity of two results, flattened (in float64; NaN where their sizes
    differ or one is zero): 1 for the same attribution up to a positive scale."""
    if a.numel() != b.numel():
        return float("nan")
    x = a.detach().flatten().to(torch.float64).cpu()
    y = b.detach().flatten().to(torch.float64).cpu()
    norms = float(x.norm() * y.norm())
    return float(x @ y) / norms if norms > 0 else float("nan")


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: every core) and return the number in use."""
    count = threads if threads is not None else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, count))
    return torch.get_num_threads()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, "a / b / c"."""
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def checkout_commit() -> str:
    """The commit of this checkout, ``+ changes`` where its tracked files differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), *args],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} + changes" if dirty else head


def environment() -> dict[str, str]:
    """What the numbers depend on, for the table's header (the load average now: call it
    at the start of the run)."""
    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cnnlens commit": checkout_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "device": device,
        "memory allocator": memory_allocator(),
        "load average at the start (1 / 5 / 15 min)": load_average(),
    }


ALLOCATOR_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_")
"""Prefixes of the environment variables that tune glibc's malloc."""


def memory_allocator(env: Mapping[str, str] | None = None) -> str:
    """The ``malloc`` CPU tensors come from: a preloaded allocator, else the C library's,
    with the environment variables that tune it (they move every line's time; see
    "How to read it")."""
    env = os.environ if env is None else env
    preloaded = [
        os.path.basename(path)
        for path in env.get("LD_PRELOAD", "").replace(":", " ").split()
        if "malloc" in os.path.basename(path)
    ]
    libc, version = platform.libc_ver()
    name = ", ".join(preloaded) or f"{libc or 'the C library'} {version}".strip() + " malloc"
    settings = sorted(k for k in env if k.startswith(ALLOCATOR_SETTINGS))
    if not settings:
        return f"{name}, default settings"
    return f"{name}, " + ", ".join(f"{k}={env[k]}" for k in settings)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and each option's default after its help
    (where it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:  # nothing to show, or a flag
            return action.help
        return super()._get_help_string(action)


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of a benchmark script: its whole docstring as the description
    (usage lines and all) and the defaults in ``--help``."""
    return argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter)


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


AGREES = 0.99
"""The cosine similarity to cnnlens' result below which a peer's line says that it does
not compute the same thing."""


def _peer_cell(result: Result, peer: Timing) -> str:
    if peer.error:
        return f"{peer.name}: fails ({peer.error})"
    cell = (
        f"{peer.name} {result.ratio(peer):.2f}× ({result.ratio(peer, 'wall'):.2f}× wall), "
        f"+{_mb(peer.memory)} MB"
    )
    if peer.agreement is None:
        return cell
    if not peer.agreement >= AGREES:  # (NaN too)
        return f"{cell}, **not the same result** (cosine to cnnlens' {peer.agreement:.3f})"
    return f"{cell}, cosine {peer.agreement:.3f}"


def _bound_cell(result: Result, bound: Timing) -> str:
    if bound.error:
        return f"{bound.name}: fails ({bound.error})"
    return f"{result.ratio(bound):.2f} ({bound.name})"


def _verdict(result: Result) -> str:
    ok = result.ok
    if ok is None:
        return ""
    return ("✔" if ok else "✘") + (" (within noise)" if result.within_noise else "")


def _ours_cell(result: Result) -> str:
    if result.ours.error:
        return f"fails ({result.ours.error})"
    cell = f"{result.ratio(result.ours):.2f} · {result.ratio(result.ours, 'wall'):.2f}"
    span = result.interval(result.ours)
    return cell if span is None else f"{cell}<br>({span[0]:.2f}–{span[1]:.2f})"


def _goal(result: Result) -> str:
    goal = result.case.goal
    if goal is None:
        return ""
    return goal.text if goal.from_issue else f"{goal.text} *"


def table(results: Sequence[Result]) -> list[str]:
    """One markdown table line per case."""
    lines = [
        "| method | model | floor | floor ms CPU · wall | cnnlens × floor CPU · wall (95 % CPU) "
        "| bound × floor | peak MB floor · cnnlens | peers: × floor CPU (wall), peak MB "
        "| goal | ✔/✘ |",
        "|---|---|---|---:|---:|---|---:|---|---|:-:|",
    ]
    for r in results:
        floor = f"{r.floor.median('cpu') * 1e3:.0f} · {r.floor.median('wall') * 1e3:.0f}"
        ours = _ours_cell(r)
        memory = f"{_mb(r.floor.memory)} · {_mb(r.ours.memory)}"
        bound = "" if r.bound is None else _bound_cell(r, r.bound)
        peers = "<br>".join(_peer_cell(r, p) for p in r.peers) or "—"
        name = r.case.method + (f" ({r.case.note})" if r.case.note else "")
        lines.append(
            f"| {name} | {r.case.model} | {r.case.floor.name} | {floor} | {ours} | {bound} "
            f"| {memory} "
            f"| {peers} | {_goal(r)} | {_verdict(r)} |"
        )
    return lines


HOW_TO_READ = (
    "**How to read it.** Each line is one method on one model.",
    "**Floor.** The raw torch computation the method cannot beat. F = one forward pass and "
    "one backward pass to the input; for the Grad-CAM family the backward pass stops at the "
    "layer; CAM's floor is one forward pass; Score-CAM's its C + 1 forward passes, batched "
    "as cnnlens batches them; occlusion's the same occluded copies as batched full forward "
    "passes; SmoothGrad, integrated gradients and feature visualization: one F per sample, "
    "step or iteration.",
    "**× floor.** The floor, cnnlens and every peer ran in the same process, in "
    "interleaved rounds (each round in a new random order, so that no entry always follows "
    "the same one), on the same model and batch. `× floor` is the median time over the "
    "floor's median time, first in process CPU time (all threads; steadier than wall time "
    "on a shared machine, and what the ✔/✘ verdict uses), then in wall time. A ratio below "
    "1 is possible where the floor does work the method skips (parameter-free shortcuts, or "
    "occlusion's incremental inference).",
    '**Intervals and "within noise".** Below the ratios, for lines of 5 rounds or more, '
    "the 95 % interval of the CPU ratio (bootstrap over the rounds, each round's pair of "
    "times kept together). Where it reaches across the goal's bound the verdict says "
    '"within noise": another run may well decide it the other way.',
    '**Peers, and "not the same result".** Where a method\'s result is fixed by the '
    "method (one attribution per input pixel: the gradient methods, DeepLIFT, LRP, Guided "
    "Grad-CAM), each peer's result is compared with cnnlens' in one more untimed call, as "
    "the cosine similarity of the two maps (1: the same map). Below 0.99 the line says "
    "**not the same result**: the peer computed something else on this model, and its time "
    "is not a comparison. On EfficientNet-Lite0 this is expected: its rectifiers are "
    "`nn.ReLU6` modules, for which captum's and zennit's guided backpropagation and "
    "deconvnet (and so captum's Guided Grad-CAM) and captum's DeepLIFT have no rule (theirs "
    "apply to `nn.ReLU`), so they return about the plain gradient; and zennit's canonizers "
    "do not rewrite its residual additions, where the gradient gives the whole relevance to "
    "both terms instead of splitting it. captum's LRP is a variant (ε everywhere) wherever "
    "it runs. A peer that cannot do the computation on the model is listed with its error.",
    "**Peak MB.** The resident memory a call needs above the model, its input and the "
    "libraries: the process's peak RSS above the RSS before the call, measured in one "
    "untimed call after the timed rounds, after a garbage collection and `malloc_trim` (for "
    "Score-CAM and occlusion, which run one round without warm-up, in that round); on CUDA, "
    "torch's peak allocated memory.",
    "**Bound.** What any implementation of the method must compute, timed as bare torch "
    "calls in the same rounds (`benchmarks/bounds.py`): for LRP the model's forward pass "
    "and the extra convolutions and transposed convolutions of the composite's rules; for "
    "DeepLIFT the baseline's forward pass and F; for deconvnet and guided backpropagation F "
    "with every call of the forward pass intercepted (the interception engine's own cost). "
    "A goal below its line's bound cannot be met by this design on this machine.",
    "**The memory allocator.** Times depend on the `malloc` that CPU tensors come from "
    "(the header names it). With glibc's default settings, a method that keeps more memory "
    "alive than F can make glibc give memory back to the system after each call and fault "
    "it in again during the next: on resnet50 at batch 8, LRP α2β1 took about 105 000 page "
    "faults a call and measured 2.17–2.36 × F so, 1.99–2.10 with glibc's thresholds raised. "
    'The table is measured as a user runs by default; `docs/performance.md` ("The memory '
    'allocator") has the figures and the settings.',
    "**Goals.** The goals and where each stands are summarized at the top of "
    "`docs/performance.md`; goals marked * are cnnlens' own, for methods and tools the "
    "performance plan set no goal for.",
)


def summary(results: Sequence[Result]) -> str:
    """How many goals were met and missed, and how many of those verdicts are within
    noise."""
    judged = [r for r in results if r.ok is not None]
    met = [r for r in judged if r.ok]
    missed = [r for r in judged if not r.ok]
    close = sum(r.within_noise for r in met), sum(r.within_noise for r in missed)
    blind = sum(r.interval(r.ours) is None for r in judged)
    return (
        f"Goals: {len(met)} of {len(judged)} met ({close[0]} within noise), "
        f"{len(missed)} missed ({close[1]} within noise)"
        + (f"; {blind} of these verdicts have no interval (under 5 rounds)." if blind else ".")
    )


def markdown(
    results: Sequence[Result],
    env: dict[str, str],
    *,
    title: str = "Benchmarks",
    run: str = "",
    notes: Sequence[str] = (),
) -> str:
    """The document: what ran where, the table, how to read it, notes."""
    lines = [f"# {title}", ""]
    if run:
        lines += [run, ""]
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += ["", summary(results), "", *table(results), ""]
    lines += [HOW_TO_READ[0], "", *(f"- {item}" for item in HOW_TO_READ[1:]), ""]
    if notes:
        lines += ["Notes:", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(lines)
