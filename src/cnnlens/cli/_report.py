"""Command ``report``: one self-contained HTML page with every method side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._report import REPORT_METHODS, build_report
from ..errors import InputError
from ..render._html import report_html
from ._common import (
    add_image,
    add_methods,
    add_model_args,
    add_output,
    method_names,
    open_image,
    open_model,
    parse_target,
    wrote,
)

DEFAULT_IMAGE = "cat"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="HTML report: every explanation method side by side, plus model behaviour",
        description="Write one self-contained HTML page for the images (default: the "
        "bundled cat photo): the prediction, every explanation method side by side with its "
        "deletion/insertion scores, and the model's behaviour (filters, activations, factors).",
        epilog="examples:\n  cnnlens report -o report.html\n"
        "  cnnlens report cat coffee -m saliency,gradcam,lrp --no-behaviour -o two.html\n"
        "  cnnlens report cat --target tabby --second-class -o cat.html",
    )
    add_model_args(p)
    add_image(
        p, nargs="*", help=f"image files or sample names (default: the sample {DEFAULT_IMAGE})"
    )
    p.add_argument(
        "--target",
        action="append",
        metavar="CLASS",
        help="class index or label to explain (once per image; default: top class)",
    )
    p.add_argument(
        "--second-class", action="store_true", help="also explain the second most likely class"
    )
    add_methods(p, default=REPORT_METHODS, aliases=["--methods"])
    p.add_argument("--no-behaviour", action="store_true", help="skip the model-behaviour section")
    add_output(p, "HTML file to write (default report.html)", required=False, default="report.html")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    specs = args.images or [DEFAULT_IMAGE]
    methods = method_names(args.method, REPORT_METHODS)  # a misspelt name: not an empty panel
    if args.target is not None and len(args.target) != len(specs):
        raise InputError(
            f"{len(args.target)} --target values for {len(specs)} images (give one per image)"
        )
    images = [(spec, open_image(spec)) for spec in specs]  # every input checked before work
    model = open_model(args)
    targets = None if args.target is None else [parse_target(model, t) for t in args.target]
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
