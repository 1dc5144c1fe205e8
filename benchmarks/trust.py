"""Trust table: every method in METHODS on the pretrained EfficientNet-Lite0 over bundled
photos (deletion/insertion AUC, ROAD, infidelity, max-sensitivity, top-layer randomization),
the pointing-game hit rate on the synthetic ground-truth benchmark, and Adebayo et al.'s
figure (maps as the layers are randomized from the top down). Writes docs/trust.md and
docs/img/trust_randomization.png. Settings are cut down to fit a shared CPU; each is stated
in the page.

Usage: nice -n 19 python benchmarks/trust.py [--images cat,coffee,...] [--out docs/trust.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import cnnlens
import harness
from cnnlens.evaluate import pointing_game, randomization_test, trust_table
from cnnlens.evaluate._trust import BETTER, LABELS
from cnnlens.evaluate.synthetic import make_shapes, small_cnn, train_classifier
from cnnlens.render import add_caption, colormap, grid, save_picture

# Cheaper settings for the costly methods (the same in every metric that re-runs them).
OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 56, "stride": 28, "batch_size": 32},
    "smoothgrad": {"samples": 8, "seed": 0},
    "integrated_gradients": {"steps": 16},
    # Score-CAM runs the model once per channel: at the last block's 320 channels rather
    # than the 1280 of the head (the other CAMs' default layer), for time.
    "scorecam": {"batch_size": 64, "layer": "_blocks.15"},
}
# Score-CAM runs the model once per channel of its layer (1280 on EfficientNet-Lite0's
# head): the metrics that run it again would take most of the run.
SKIP = {("scorecam", "max_sensitivity"), ("scorecam", "randomization")}
FIGURE_METHODS = ("guided_backprop", "gradcam", "saliency", "integrated_gradients")


def table_rows(
    model: cnnlens.LoadedModel, inputs: torch.Tensor, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    for method in sorted(cnnlens.METHODS):
        start = time.perf_counter()
        options = OPTIONS.get(method, {})
        explanation = cnnlens.explain(model, inputs, method, **options)
        metrics = [m for m in BETTER if (method, m) not in SKIP]
        table = trust_table(
            model,
            inputs,
            [explanation],
            metrics=metrics,
            steps=args.steps,
            samples=args.samples,
            fractions=args.fractions,
            options={method: options},
            progress=False,
        )
        row = table.rows[0]
        rows.append(
            {
                "method": method,
                "ranking": row.ranking,
                **{m: float(v.mean()) for m, v in row.values.items()},
                "seconds": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
    return rows


def pointing_rates(args: argparse.Namespace) -> tuple[dict[str, float], float, float]:
    """Hit rate per method on synthetic shapes (and the test accuracy, training seconds)."""
    start = time.perf_counter()
    train, test = make_shapes(args.shapes_train, seed=0), make_shapes(args.shapes_test, seed=1)
    model = train_classifier(small_cnn(), train, epochs=args.shapes_epochs)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        accuracy = float((model(test.images).argmax(1) == test.labels).float().mean())
    options = {
        "occlusion": {"window": 8, "stride": 4},
        "smoothgrad": {"samples": 16, "noise": 0.15, "seed": 0},
    }
    rates = {}
    for method in sorted(cnnlens.METHODS):
        e = cnnlens.explain(
            model, test.images, method, target=test.labels, **options.get(method, {})
        )
        rates[method] = pointing_game(e, test.boxes, tolerance=args.tolerance).hit_rate
    centre = torch.zeros(len(test.labels), 48, 48)
    centre[:, 24, 24] = 1.0
    rates["centre baseline"] = pointing_game(centre, test.boxes, tolerance=args.tolerance).hit_rate
    return rates, accuracy, seconds


def _display(heat: torch.Tensor) -> torch.Tensor:
    """Scaled so the 99th percentile is 1: a few extreme pixels of a gradient map would
    otherwise leave the rest invisible (as Smilkov et al. 2017 note)."""
    top = float(torch.quantile(heat.flatten().float(), 0.99))
    return (heat / top).clamp(max=1.0) if top > 0 else heat


def _short(layer: str) -> str:
    """``_blocks.10._bn2`` -> ``block 10``: the figure's column titles must fit a tile."""
    parts = layer.split(".")
    return f"block {parts[1]}" if parts[0] == "_blocks" else parts[0].strip("_")


def adebayo_figure(
    model: cnnlens.LoadedModel, inputs: torch.Tensor, stages: int, path: Path
) -> list[list[str]]:
    """Rows: methods; columns: the original map, then each cascading step (top first)."""
    tiles, captions = [], []
    steps: list[list[str]] = []
    for method in FIGURE_METHODS:
        result = randomization_test(
            model, inputs, method, stages=stages, progress=False, **OPTIONS.get(method, {})
        )
        steps = result.steps
        for i, heat in enumerate(result.maps[:, 0]):
            tiles.append(colormap(_display(heat), "inferno", vmin=0.0, vmax=1.0).resize((150, 150)))
            if i == 0:
                captions.append(f"{method}\noriginal")
            else:
                reached = _short(steps[i - 1][-1])
                captions.append(
                    f"down to {reached}\nSpearman {float(result.spearman[i - 1, 0]):.2f}"
                )
    picture = grid(tiles, columns=len(steps) + 1, captions=captions)
    title = "Cascading randomization from the logits down (EfficientNet-Lite0, cat)"
    save_picture(add_caption(picture, title), path)
    return steps


def main() -> None:
    parser = harness.script_parser(__doc__)
    parser.add_argument("--out", default="docs/trust.md", help="markdown file to write")
    parser.add_argument("--images", default="cat,coffee", help="bundled photos, comma-separated")
    parser.add_argument(
        "--steps", type=int, default=10, help="steps of the deletion and insertion curves"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=2,
        help="perturbations for infidelity and max-sensitivity",
    )
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="ROAD's fractions"
    )
    parser.add_argument(
        "--stages", type=int, default=4, help="randomization stages, from the top layer down"
    )
    parser.add_argument(
        "--shapes-train", type=int, default=3000, help="training images of the shapes model"
    )
    parser.add_argument(
        "--shapes-epochs", type=int, default=8, help="training epochs of the shapes model"
    )
    parser.add_argument("--shapes-test", type=int, default=150, help="pointing-game test images")
    parser.add_argument(
        "--rows",
        type=Path,
        help="JSON of the EfficientNet table rows from an earlier run: reused, not recomputed "
        "(written after computing them when the file does not exist)",
    )
    parser.add_argument(
        "--tolerance", type=int, default=2, help="pointing-game tolerance in pixels"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    names = [n.strip() for n in args.images.split(",") if n.strip()]
    model = cnnlens.load_model("efficientnet_lite0")
    inputs = model.preprocess([cnnlens.sample_image(n) for n in names])
    out = Path(args.out)
    if args.rows is not None and args.rows.exists():
        saved = json.loads(args.rows.read_text())
        rows, steps = saved["rows"], saved["steps"]
    else:
        steps = adebayo_figure(
            model, inputs[:1], args.stages, out.parent / "img" / "trust_randomization.png"
        )
        rows = table_rows(model, inputs, args)
        if args.rows is not None:
            args.rows.write_text(json.dumps({"rows": rows, "steps": steps}, indent=1))
    rates, accuracy, train_seconds = pointing_rates(args)
    write_page(out, args, names, rows, rates, accuracy, train_seconds, steps)


def write_page(
    out: Path,
    args: argparse.Namespace,
    names: list[str],
    rows: list[dict[str, Any]],
    rates: dict[str, float],
    accuracy: float,
    train_seconds: float,
    steps: list[list[str]],
) -> None:
    metrics = list(BETTER)
    header = "| method | ranking | " + " | ".join(LABELS[m] for m in metrics)
    lines = [
        header + " | pointing game ↑ | seconds |",
        "|---|---|" + "---|" * (len(metrics) + 2),
    ]
    for r in rows:
        cells = " | ".join(f"{r[m]:.3f}" if m in r else "—" for m in metrics)
        lines.append(
            f"| {r['method']} | {r['ranking']} | {cells} | {rates[r['method']]:.0%} | {r['seconds']:.0f} |"
        )
    lines.append(
        "| centre point (baseline) | | "
        + " | ".join("" for _ in metrics)
        + f" | {rates['centre baseline']:.0%} | |"
    )
    settings = ", ".join(f"{k} {v}" for k, v in sorted(OPTIONS.items()))
    page = PAGE.format(
        images=", ".join(names),
        count=len(names),
        available=len(cnnlens.sample_images()),
        table="\n".join(lines),
        steps=args.steps,
        samples=args.samples,
        fractions=", ".join(f"{f:g}" for f in args.fractions),
        settings=settings,
        accuracy=accuracy,
        train=args.shapes_train,
        epochs=args.shapes_epochs,
        test=args.shapes_test,
        train_seconds=train_seconds,
        tolerance=args.tolerance,
        stages="\n".join(f"- step {i + 1}: down to `{s[-1]}`" for i, s in enumerate(steps)),
        total=sum(r["seconds"] for r in rows) / 60,
    )
    # The reading below the table is written by hand: keep it across regenerations.
    heading = "## What the table shows\n"
    if out.exists() and heading in out.read_text():
        page = page.split(heading)[0] + heading + out.read_text().split(heading, 1)[1]
    out.write_text(page)
    print(page)


PAGE = """# Which map to trust: every method, every check

Generated by `nice -n 19 python benchmarks/trust.py` on a 2-core CPU shared with other
jobs (the table rows took {total:.0f} min; the seconds column is wall time per method).
Pretrained EfficientNet-Lite0 on {count} of the {available} bundled photos ({images}), to
keep the run short on that CPU; each number is the mean over the photos, for each photo's
top class. ↓: lower is better, ↑: higher is
better.

{table}

What each column is (all in `cnnlens.evaluate`; `cnnlens.trust_table` computes a row,
`cnnlens evaluate IMAGE --metrics ...` prints one):

- **deletion / insertion AUC** (Petsiuk et al. 2018): area under the class probability as
  pixels are set to 0 (deletion) or copied into a blurred image (insertion), most important
  first, in {steps} steps. *ranking* says how pixels were ordered: `signed` (most positive
  evidence first) for methods whose attribution is signed evidence, `abs` (largest
  magnitude first) for gradient-type maps.
- **ROAD** (Rong et al. 2022): pixels removed by noisy linear imputation (no sharp mask
  edges for the model to read) at fractions {fractions}; mean of (LeRF − MoRF) / 2 of the
  probability, as pytorch-grad-cam's `ROADCombined` (its imputation and scores are matched
  in tests/test_evaluate_reference.py).
- **infidelity** (Yeh et al. 2019): mean squared error between attributionᵀI and the logit
  drop f(x) − f(x − I) for {samples} Gaussian perturbations I (σ 0.1), after the optimal
  scaling of the attribution; as `captum.metrics.infidelity(normalize=True)`.
- **max-sensitivity** (Yeh et al. 2019): largest relative change of the attribution over
  {samples} inputs perturbed uniformly within ±0.02; as `captum.metrics.sensitivity_max`.
  "—": not run (Score-CAM runs the model once per channel: re-running it is too slow here).
- **top-layer randomization** (Adebayo et al. 2018): Spearman rank correlation of the
  absolute maps before and after re-initializing the logit layer (`_fc`), the first step
  of cascading randomization. A map that explains the model should change: lower is better.
- **pointing game** (Zhang et al. 2016, TorchRay's Euclidean rule): share of synthetic
  48×48 images (coloured clutter plus one 12×12 object whose shape is the class) where the
  map's maximum lies within {tolerance} px of the object. A small CNN trained on {train}
  images ({epochs} epochs, {train_seconds:.0f} s) reaches {accuracy:.1%} on the {test} test images.

Cheaper settings used for speed: {settings}; ROAD at 3 fractions instead of 9;
{samples} perturbations instead of captum's 10; {steps} deletion/insertion steps. With so
few samples the infidelity and max-sensitivity columns are rough estimates.

## Cascading randomization, as in Adebayo et al.'s figure

![maps as the layers are randomized](img/trust_randomization.png)

The cat photo; each row one method, each column one more group of layers re-initialized,
from the logits down (ρ: Spearman rank correlation of the absolute map with the original):

{stages}

## What the table shows

READING
"""


if __name__ == "__main__":
    main()
