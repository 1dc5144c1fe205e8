"""The pictures of docs/visualize.md: feature visualizations of the bundled
EfficientNet-Lite0 as captioned PNGs, with the probabilities the model gives them.

Usage: python scripts/visualize_gallery.py docs/img [--parts classes,simonyan,channels]
       [--steps 256] [--device cpu]

(Its speed is measured by ``make bench``: benchmarks/run.py, case "feature visualization".)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

import cnnlens
from cnnlens.behaviour.visualize import visualize

ACCEPTANCE_CLASSES = [1, 130, 323, 949, 980]  # goldfish, flamingo, monarch, strawberry, volcano


def class_probabilities(model: cnnlens.LoadedModel, images: Tensor, classes: list[int]) -> Tensor:
    """The softmax probability of ``classes[i]`` for ``images[i]`` (pixels in [0, 1])."""
    prep = model.preprocessing
    mean = torch.tensor(prep.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=images.device).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = torch.softmax(model.module((images - mean) / std), dim=1)
    return probs[torch.arange(len(classes)), torch.tensor(classes)].cpu()


def gallery(folder: str, device: str, parts: list[str], steps: int) -> None:
    """The pictures of docs/visualize.md as captioned PNGs in ``folder``, with the
    probabilities the model gives them: ``classes`` (default recipe, the five acceptance
    classes), ``simonyan`` (the same classes, Simonyan's recipe), ``channels``."""
    from pathlib import Path

    from cnnlens.render import grid, save_picture, tensor_to_image

    model = cnnlens.load_model("efficientnet_lite0", device=device)
    classes = ACCEPTANCE_CLASSES
    runs: dict[str, tuple[str, dict[str, object]]] = {
        "classes": ("visualize_classes.png", {}),
        "simonyan": ("visualize_simonyan.png", {"recipe": "simonyan"}),
    }
    for part in parts:
        if part not in runs:
            continue
        filename, options = runs[part]
        start = time.perf_counter()
        images = visualize(model, classes, steps=steps, **options)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        probs = class_probabilities(model, images, classes)
        captions = [
            f"{c} {model.label(c)}\np = {float(p):.4f}" for c, p in zip(classes, probs, strict=True)
        ]
        picture = grid([tensor_to_image(x) for x in images], captions=captions)
        save_picture(picture, Path(folder) / filename)
        print(filename, options, steps, [round(float(p), 4) for p in probs], f"{seconds:.0f} s")
    if "channels" in parts:
        units = ["_blocks.3:5", "_blocks.6:30", "_blocks.10:7", "_blocks.14:100"]
        images = visualize(model, units, steps=steps)
        picture = grid([tensor_to_image(x) for x in images], captions=units)
        save_picture(picture, Path(folder) / "visualize_channels.png")
        print("visualize_channels.png", units, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="where the PNGs go (docs/img)")
    parser.add_argument("--parts", default="classes,simonyan,channels")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    gallery(args.folder, args.device, args.parts.split(","), args.steps)


if __name__ == "__main__":
    main()
