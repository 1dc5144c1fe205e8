"""Sanity check (Adebayo et al. 2018) on the pretrained EfficientNet-Lite0: cascading
randomization of the weights from the top layer down, and how much each method's map
changes. Writes docs/sanity.md and docs/img/randomization.png.

Usage: python benchmarks/randomization.py [--out docs/sanity.md] [--stages 6]
"""

from __future__ import annotations

from pathlib import Path

import torch

import cnnlens
import harness
from cnnlens.evaluate import randomization_test
from cnnlens.render import grid, save_picture
from cnnlens.render._plots import line_plot

METHODS = ("saliency", "smoothgrad", "gradcam", "guided_backprop", "deconvnet")


def main() -> None:
    parser = harness.script_parser(__doc__)
    parser.add_argument("--out", default="docs/sanity.md", help="markdown file to write")
    parser.add_argument(
        "--stages", type=int, default=6, help="randomization stages, from the top layer down"
    )
    args = parser.parse_args()
    model = cnnlens.load_model("efficientnet_lite0")
    inputs = model.preprocess([cnnlens.sample_image(n) for n in ("cat", "coffee")])
    rows = []
    spearman: dict[str, list[float]] = {}
    similarity: dict[str, list[float]] = {}
    steps: list[list[str]] = []
    for method in METHODS:
        options = {"samples": 8, "seed": 0} if method == "smoothgrad" else {}
        result = randomization_test(
            model, inputs, method, stages=args.stages, randomization_seed=0, **options
        )
        steps = result.steps
        spearman[method] = [1.0, *result.spearman.mean(dim=1).tolist()]
        similarity[method] = [1.0, *result.ssim.mean(dim=1).tolist()]
        rows.append((method, spearman[method], similarity[method]))
    labels = ["original"] + [f"top {len(s)} layers" for s in steps]
    plots = [
        line_plot(
            spearman,
            title="Spearman rank correlation with the original map",
            xticklabels=labels,
            ylabel="rank correlation",
        ),
        line_plot(
            similarity, title="SSIM with the original map", xticklabels=labels, ylabel="SSIM"
        ),
    ]
    out = Path(args.out)
    picture = save_picture(grid(plots, columns=2), out.parent / "img" / "randomization.png")
    header = "| method | " + " | ".join(labels) + " |"
    lines = [
        "# Sanity checks: cascading model-parameter randomization",
        "",
        "Adebayo et al. (2018) randomize a trained network's weights layer by layer from the output down; a map that",
        "explains the model must change as the model is destroyed. Measured with `cnnlens.randomization_test` on the",
        f"pretrained EfficientNet-Lite0, the cat and coffee photos, {args.stages} cumulative stages over its "
        f"{len(steps[-1])} parameterized layers (mean over the two images; map similarity of absolute values).",
        "Regenerate with `python benchmarks/randomization.py` (run by `make bench`).",
        "",
        "## Spearman rank correlation with the original map",
        "",
        header,
        "|" + "---|" * (len(labels) + 1),
    ]
    lines += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in rho) + " |" for m, rho, _ in rows]
    lines += ["", "## SSIM with the original map", "", header, "|" + "---|" * (len(labels) + 1)]
    lines += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in s) + " |" for m, _, s in rows]
    lines += ["", f"![randomization curves](img/{picture.name})", ""]
    lines += [f"Stage {i + 1} randomizes down to `{s[-1]}`." for i, s in enumerate(steps)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
