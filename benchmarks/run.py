"""Run every benchmark and write the table.

    python benchmarks/run.py --out docs/benchmarks.md [--only SUBSTRING] [--quick]
                             [--threads N] [--no-scripts]

Modules ``benchmarks/bench_*.py`` that expose ``cases() -> list[harness.Case]`` (callable
without arguments) are timed by the harness and make the main table. Other ``bench_*.py``
files are standalone scripts with their own options: they are run as they are (skipped
with ``--quick`` or ``--no-scripts``) and their output is appended verbatim.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Case, Row, environment, markdown, run_case, set_threads  # noqa: E402


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks.{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _harness_cases(module: ModuleType) -> list[Case] | None:
    """The module's cases if it follows the harness protocol, else None."""
    factory = getattr(module, "cases", None)
    if not callable(factory):
        return None
    required = [
        p
        for p in inspect.signature(factory).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if required:
        return None
    cases = factory()
    if not isinstance(cases, list) or not all(isinstance(c, Case) for c in cases):
        return None
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument(
        "--only", default=None, help="only cases (or files) whose name has this substring"
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats, no standalone scripts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-scripts", action="store_true", help="skip standalone scripts")
    parser.add_argument("--script-timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    rows: list[Row] = []
    scripts: list[tuple[str, str]] = []
    for path in sorted(HERE.glob("bench_*.py")):
        module = _load(path)
        cases = _harness_cases(module)
        if cases is None:
            skip = bool(args.only) and args.only not in path.stem
            if skip or args.quick or args.no_scripts:
                continue
            print(f"== {path.name} (standalone script)", file=sys.stderr, flush=True)
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, str(path), "--threads", str(threads)],
                capture_output=True,
                text=True,
                timeout=args.script_timeout,
                check=False,
            )
            if proc.returncode != 0 and "--threads" in proc.stderr:
                proc = subprocess.run(
                    [sys.executable, str(path)],
                    capture_output=True,
                    text=True,
                    timeout=args.script_timeout,
                    check=False,
                )
            took = time.perf_counter() - start
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            text = proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr[-2000:]
            scripts.append((f"{path.name} ({status}, {took:.0f} s)", text))
            continue
        for case in cases:
            if args.only and args.only not in case.name and args.only not in path.stem:
                continue
            print(f"== {case.name}", file=sys.stderr, flush=True)
            repeats = min(case.repeats, 3) if args.quick else None
            rows.extend(run_case(case, repeats=repeats, warmup=1 if args.quick else None))
    env = environment()
    env["torch threads"] = str(threads)
    text = markdown(rows, env)
    for title, output in scripts:
        text += f"\n## {title}\n\n```\n{output.rstrip()}\n```\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    missed = [r for r in rows if r.ok is False]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
