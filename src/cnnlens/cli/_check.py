"""Command ``check``: which rule a method gives each operation of a model (the coverage
of :func:`cnnlens.coverage`), and whether any operation has none."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._coverage import Coverage, coverage
from ..attribution.api import METHODS
from ..images import sample_images
from ._common import add_image, add_model_args, open_image, open_model

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="list the rule a method gives each operation of a model",
        description="Run METHOD once on the model and list every operation its forward "
        "pass met (module, operation, kind) with the rule the method gave it. Operations "
        "without a rule are listed at the end and make the exit code 1. Without IMAGE the "
        "first bundled sample photo is used.",
        epilog="examples:\n  cnnlens check --method deeplift\n"
        "  cnnlens check --model mobilenet_v3_small --random-weights --method lrp --all cat",
    )
    add_model_args(p)
    p.add_argument(
        "-m",
        "--method",
        required=True,
        choices=sorted(METHODS),
        metavar="METHOD",
        help="the method whose rules to list: " + ", ".join(sorted(METHODS)),
    )
    add_image(p, nargs="?", help="image file, or a sample name such as cat (default: cat)")
    p.add_argument("--all", action="store_true", help="list every call, not one row per kind")
    p.set_defaults(run=run_check)


def format_coverage(result: Coverage, *, every_call: bool) -> str:
    """Aligned text: one row per call (``every_call``) or per (kind, rule) with a count
    and the first module, then the unhandled calls."""
    if every_call:
        rows = [["module", "op", "kind", "rule"]]
        rows += [[e.module, e.op, e.kind, e.rule or "NONE"] for e in result.entries]
    else:
        rows = [["kind", "op", "rule", "calls", "first module"]]
        seen: dict[tuple[str, str, str], list[Any]] = {}
        for e in result.entries:
            key = (e.kind, e.op, e.rule or "NONE")
            if key not in seen:
                seen[key] = [e.kind, e.op, e.rule or "NONE", 0, e.module]
            seen[key][3] += 1
        rows += [[str(c) for c in row] for row in seen.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    missing = result.unhandled
    if missing:
        lines.append(f"{len(missing)} call(s) without a rule for {result.method}:")
        lines += [f"  {e.op} ({e.kind}) in {e.module}" for e in missing]
    else:
        lines.append(f"every operation has a rule for {result.method}")
    lines += list(result.notes)
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    model = open_model(args)
    image = open_image(args.image if args.image is not None else sample_images()[0])
    result = coverage(model, args.method, model.preprocess(image))
    print(f"{model.name}, {args.method}:")
    print(format_coverage(result, every_call=args.all))
    if result.unhandled:
        print(
            f"cnnlens: {len(result.unhandled)} operation call(s) without a rule",
            file=sys.stderr,
        )
        return 1
    return 0
