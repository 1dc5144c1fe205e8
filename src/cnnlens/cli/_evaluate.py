"""Command ``evaluate``: deletion/insertion AUC per method and image, as CSV and markdown."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from .._progress import Progress, progress
from ..attribution.api import explain, method_spec
from ..evaluate import deletion_insertion
from ..models import LoadedModel
from ..render import grid, save_png
from ..render._plots import line_plot
from ._common import add_model_args, open_image, open_model

DEFAULT_METHODS = "saliency,guided_backprop,gradcam,occlusion"


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="deletion/insertion AUC of explanation methods")
    add_model_args(p)
    p.add_argument("images", nargs="+", help="image paths or sample names")
    p.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})"
    )
    p.add_argument("--steps", type=int, default=32, help="pixel-removal steps (default 32)")
    p.add_argument(
        "-o", "--output", required=True, help="folder for results.csv, results.md and curves"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        method_spec(m)  # unknown names fail before any work
    model = open_model(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with progress(len(args.images) * len(methods), "evaluate", unit="map") as bar:
        for spec in args.images:
            _evaluate_image(model, spec, methods, args.steps, out, rows, bar)
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["image", "method", "deletion_auc", "insertion_auc"]
        )
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| image | method | deletion AUC (lower is better) | insertion AUC (higher is better) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['image']} | {r['method']} | {r['deletion_auc']:.4f} | {r['insertion_auc']:.4f} |"
        for r in rows
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(out / "results.md")
    return 0


def _evaluate_image(
    model: LoadedModel,
    spec: str,
    methods: list[str],
    steps: int,
    out: Path,
    rows: list[dict[str, Any]],
    bar: Progress,
) -> None:
    """Deletion/insertion of every method on one image: rows added, curves drawn."""
    inputs = model.preprocess(open_image(spec))
    deletion: dict[str, list[float]] = {}
    insertion: dict[str, list[float]] = {}
    for method in methods:
        bar.describe(f"{Path(spec).name}: {method}")
        result = deletion_insertion(model, inputs, explain(model, inputs, method), steps=steps)
        deletion[method] = result.deletion_curve[0].tolist()
        insertion[method] = result.insertion_curve[0].tolist()
        rows.append(
            {
                "image": spec,
                "method": method,
                "deletion_auc": round(float(result.deletion_auc[0]), 4),
                "insertion_auc": round(float(result.insertion_auc[0]), 4),
            }
        )
        bar.advance()
    xs = [i / steps for i in range(steps + 1)]
    plots = [
        line_plot(
            deletion,
            x=xs,
            title=f"{Path(spec).name}: deletion (lower is better)",
            xlabel="fraction removed",
            ylabel="probability",
        ),
        line_plot(
            insertion,
            x=xs,
            title=f"{Path(spec).name}: insertion (higher is better)",
            xlabel="fraction inserted",
            ylabel="probability",
        ),
    ]
    save_png(grid(plots, columns=2), out / f"curves_{Path(spec).stem}.png")
