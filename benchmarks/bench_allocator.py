"""The same methods under each memory allocator: glibc's malloc with its defaults, glibc
with its mmap and trim thresholds raised (freed memory stays with the process), tcmalloc
and jemalloc (preloaded, where installed). Writes the tables of docs/performance.md ("The
memory allocator") to stdout (markdown).

An allocator is chosen before Python starts (``LD_PRELOAD``, ``MALLOC_*``), so each one runs
this script again as a child process (``--child``), ``--processes`` times, alternating
(between processes the same floor moves by up to 50 % on a shared machine: the ranges
show it). A child times F (one forward and one backward pass to the input) and each method
in ``--rounds`` interleaved rounds after two warm-up calls, in CPU time, and counts the
page faults of each call.

Usage: python benchmarks/bench_allocator.py [--model efficientnet_lite0] [--batch 1]
       [--size 224] [--rounds 20] [--processes 2]
       [--methods deeplift,lrp:epsilon_plus,lrp:epsilon_alpha2_beta1,guided_backprop]
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import harness

_RAISED = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def allocators() -> dict[str, dict[str, str]]:
    """Name → the environment variables that select it; tcmalloc and jemalloc only where
    the dynamic linker finds them."""
    found = {
        "glibc, defaults": {},
        "glibc, thresholds raised": dict(_RAISED),
    }
    for name, library in (("tcmalloc", "tcmalloc_minimal"), ("jemalloc", "jemalloc")):
        soname = ctypes.util.find_library(library)
        if soname is not None:
            found[name] = {"LD_PRELOAD": soname}
    return found


def _child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any preload or allocator setting, plus
    ``settings``."""
    tuning = ("LD_PRELOAD", *harness.ALLOCATOR_SETTINGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuning)}
    env.update(settings)
    return env


def measure(
    model: str, batch: int, size: int, rounds: int, methods: Sequence[str]
) -> dict[str, object]:
    """Median CPU ms and page faults a call of F and of each method (``lrp:<composite>``
    for an LRP composite)."""
    import method_cases as mc

    s = mc.setup(model, batch, size)
    fns: dict[str, Callable[[], object]] = {"F": lambda: mc._input_gradient(s)}
    for spec in methods:
        if spec.startswith("lrp:"):
            fns[spec] = mc._explain(s, "lrp", composite=spec[4:])
        else:
            fns[spec] = mc._explain(s, spec)
    for fn in fns.values():
        fn()
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    order = list(fns.items())
    shuffle = random.Random(0)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name, fn in order:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.process_time()
            fn()
            seconds[name].append(time.process_time() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        name: {
            "ms": statistics.median(seconds[name]) * 1e3,
            "faults": statistics.median(faults[name]),
        }
        for name in fns
    }


def _span(values: Sequence[float], digits: int) -> str:
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}–{high}"


def table(runs: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]]) -> list[str]:
    """Markdown rows: per allocator, each entry's ms a call over its processes (a range),
    with × F of the same process for the methods, and the page faults of each entry."""
    first = next(iter(runs.values()))[0]
    names = list(first)
    lines = [
        "| allocator | " + " | ".join(names) + " | page faults a call |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for allocator, measured in runs.items():
        cells = []
        for name in names:
            ms = [run[name]["ms"] for run in measured]
            cell = _span(ms, 0)
            if name != "F":
                cell += " (" + _span([run[name]["ms"] / run["F"]["ms"] for run in measured], 2)
                cell += ")"
            cells.append(cell)
        faults = ", ".join(
            f"{name} {_span([run[name]['faults'] for run in measured], 0)}" for name in names
        )
        lines.append(f"| {allocator} | " + " | ".join(cells) + f" | {faults} |")
    return lines


def main() -> None:
    parser = harness.script_parser(__doc__)
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="a torchvision name or efficientnet_lite0"
    )
    parser.add_argument("--batch", type=int, default=1, help="images a call")
    parser.add_argument("--size", type=int, default=224, help="image size in pixels")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds in each process")
    parser.add_argument(
        "--processes", type=int, default=2, help="processes per allocator, run alternately"
    )
    parser.add_argument(
        "--methods",
        default="deeplift,lrp:epsilon_plus,lrp:epsilon_alpha2_beta1,guided_backprop",
        help="methods of cnnlens.METHODS, comma-separated; lrp:<composite> for LRP",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if args.child:
        print(json.dumps(measure(args.model, args.batch, args.size, args.rounds, methods)))
        return
    command = [
        sys.executable,
        __file__,
        "--child",
        f"--model={args.model}",
        f"--batch={args.batch}",
        f"--size={args.size}",
        f"--rounds={args.rounds}",
        f"--methods={args.methods}",
    ]
    found = allocators()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in found}
    for _ in range(args.processes):
        for name, settings in found.items():
            out = subprocess.run(command, env=_child_env(settings), capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{name}: the measuring process failed:\n{out.stderr[-2000:]}")
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    processes = f"{args.processes} process" + ("es" if args.processes != 1 else "")
    print(
        f"{args.model}, batch {args.batch}, {args.size} px: ms of CPU a call, median of "
        f"{args.rounds} rounds (× F of the same process); {processes} per allocator, as a range"
    )
    print()
    print("\n".join(table(runs)))


if __name__ == "__main__":
    main()
