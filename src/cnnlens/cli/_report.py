"""Command ``report``: one self-contained HTML page with every method side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._report import REPORT_METHODS, build_report
from ..attribution.api import method_spec
from ..render._html import report_html
from ._common import Output, add_model_args, open_image, open_model, parse_target, wrote

DEFAULT_IMAGE = "cat"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="HTML report: every explanation method side by side, plus model behaviour",
        description="Write one self-contained HTML page for the images (default: the "
        "bundled cat photo): the prediction, every explanation method side by side with its "
        "deletion/insertion scores, and the model's behaviour (filters, activations, factors).",
        epilog="examples:\n  cnnlens report -o report.html\n"
        "  cnnlens report photo.jpg --target tabby --second-class -o photo.html",
    )
    add_model_args(p)
    p.add_argument(
        "images", nargs="*", help=f"image paths or sample names (default: {DEFAULT_IMAGE})"
    )
    p.add_argument(
        "--target",
        action="append",
        help="class index or label to explain (once per image; default: top class)",
    )
    p.add_argument(
        "--second-class", action="store_true", help="also explain the second most likely class"
    )
    p.add_argument(
        "--methods",
        default=",".join(REPORT_METHODS),
        help=f"comma-separated methods (default: {','.join(REPORT_METHODS)})",
    )
    p.add_argument("--no-behaviour", action="store_true", help="skip the model-behaviour section")
    p.add_argument(
        "-o",
        "--output",
        type=Output("file"),
        default="report.html",
        metavar="FILE",
        help="HTML file to write (default report.html)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    specs = args.images or [DEFAULT_IMAGE]
    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    if not methods:
        raise InputError("--methods needs a method name")
    for method in methods:  # a misspelt name is bad input, not an empty panel
        method_spec(method)
    model = open_model(args)
    if args.target is not None and len(args.target) != len(specs):
        raise InputError(
            f"{len(args.target)} --target values for {len(specs)} images (give one per image)"
        )
    targets = None if args.target is None else [parse_target(model, t) for t in args.target]
    images = [(spec, open_image(spec)) for spec in specs]
    report = build_report(
        model,
        images,
        targets=targets,
        second_class=args.second_class,
        methods=methods,
        behaviour=not args.no_behaviour,
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(report), encoding="utf-8")
    wrote(out.resolve())
    return 0
