"""Command ``evaluate``: a trust table (deletion/insertion AUC, ROAD, infidelity,
max-sensitivity, randomization) per image and method, printed; with ``-o`` also written as
CSV and markdown with the deletion/insertion curves drawn."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from PIL import Image

from .._progress import progress
from ..attribution.api import explain
from ..errors import InputError
from ..evaluate import METRICS, DeletionInsertion, TrustTable, trust_table
from ..evaluate._deletion import CURVE_STEPS
from ..evaluate._trust import LABELS
from ..render import grid, save_picture
from ..render._plots import line_plot
from ._common import (
    add_count,
    add_image,
    add_methods,
    add_model_args,
    add_output,
    comma_names,
    method_names,
    open_image,
    open_model,
)

DEFAULT_METHODS = ("saliency", "guided_backprop", "gradcam", "occlusion")
DEFAULT_METRICS = "deletion,insertion"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="trust table of explanation methods (deletion/insertion, ROAD, ...)",
        description="How far each method's map can be trusted on each image: deletion and "
        "insertion AUC (Petsiuk et al. 2018), ROAD, infidelity, max-sensitivity, a "
        "randomization check. Prints a markdown table; with -o also writes results.csv, "
        "results.md and the deletion/insertion curves.",
        epilog="examples:\n  cnnlens evaluate cat coffee -m saliency,gradcam,lrp\n"
        "  cnnlens evaluate cat --metrics deletion,insertion,road -o eval/",
    )
    add_model_args(p)
    add_image(p, nargs="+")
    add_methods(p, default=DEFAULT_METHODS, aliases=["--methods"])
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help=f"comma-separated, from {', '.join(METRICS)} (default {DEFAULT_METRICS})",
    )
    add_count(
        p, "--steps", default=CURVE_STEPS, help=f"pixel-removal steps (default {CURVE_STEPS})"
    )
    add_count(
        p, "--samples", default=10, help="perturbations for infidelity/max-sensitivity (default 10)"
    )
    add_output(
        p, "folder for results.csv, results.md and curve plots", kind="folder", required=False
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    methods = method_names(args.method, DEFAULT_METHODS)  # unknown names fail before any work
    metrics = comma_names([args.metrics])
    if not metrics:
        raise InputError("--metrics needs at least one name")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    images = {spec: open_image(spec) for spec in args.images}  # every input checked first
    model = open_model(args)
    tables: dict[str, TrustTable] = {}
    # Per image: one step per method's explanation, one for the metrics of them all.
    with progress(len(images) * (len(methods) + 1), "evaluate") as bar:
        for spec, image in images.items():
            inputs = model.preprocess(image)
            explanations = []
            for method in methods:
                bar.describe(f"{Path(spec).name}: {method}")
                explanations.append(explain(model, inputs, method))
                bar.advance()
            bar.describe(f"{Path(spec).name}: {', '.join(metrics)}")
            tables[spec] = trust_table(
                model,
                inputs,
                explanations,
                metrics=metrics,
                steps=args.steps,
                samples=args.samples,
                progress=False,
            )
            bar.advance()
    lines = _markdown(tables, metrics)
    print("\n".join(lines))
    if args.output:
        _write(Path(args.output), tables, metrics, lines)
    return 0


def _markdown(tables: dict[str, TrustTable], metrics: list[str]) -> list[str]:
    lines = [
        "| image | method | ranking | " + " | ".join(LABELS[m] for m in metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for spec, table in tables.items():
        for row in table.records(0):
            values = " | ".join(f"{row[m]:.4f}" for m in metrics)
            lines.append(f"| {spec} | {row['method']} | {row['ranking']} | {values} |")
    return lines


def _write(out: Path, tables: dict[str, TrustTable], metrics: list[str], lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "method", "ranking", *metrics])
        writer.writeheader()
        for spec, table in tables.items():
            for row in table.records(0):
                row.pop("item")
                writer.writerow({"image": spec, **row})
    (out / "results.md").write_text("\n".join(lines) + "\n")
    for spec, table in tables.items():
        curves = {r.method: r.curves for r in table.rows if r.curves is not None}
        if curves:
            save_picture(_curve_plots(spec, curves), out / f"curves_{Path(spec).stem}.png")


def _curve_plots(spec: str, curves: dict[str, DeletionInsertion]) -> Image.Image:
    """Deletion and insertion curves of every method on one image, side by side."""
    first = next(iter(curves.values()))
    xs = first.fractions.tolist()
    plots = [
        line_plot(
            {method: getattr(c, f"{kind}_curve")[0].tolist() for method, c in curves.items()},
            x=xs,
            title=f"{Path(spec).name}: {kind} ({better} is better)",
            xlabel="fraction inserted" if kind == "insertion" else "fraction removed",
            ylabel=first.score,
        )
        for kind, better in (("deletion", "lower"), ("insertion", "higher"))
    ]
    return grid(plots, columns=2)
