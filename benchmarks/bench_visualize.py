"""Cost of one feature-visualization step against the floor: one raw forward pass plus one
backward pass to the input (``torch.autograd.grad`` on the input, parameter gradients off)
at the model's input size.

    visualize, default recipe (Fourier param, jitter/scale/rotate), class objective
    visualize, default recipe, channel objective (one Recorder hook)
    visualize, simonyan recipe (pixels, L2)
        vs 1 floor pass per step                                      (target: <= 1.3x)
    a naive loop with ``loss.backward()`` (parameter gradients on) as a reference

A step's cost is (time of ``steps`` steps − time of 0 steps) / ``steps``, so the one-off
setup (parametrization, hooks, final image) is not counted.

Usage: python benchmarks/bench_visualize.py [--model efficientnet_lite0] [--batch 1]
       [--steps 8] [--repeats 5] [--threads N] [--device cpu]
       python benchmarks/bench_visualize.py --gallery docs/img [--parts classes,simonyan,
       channels] [--gallery-steps 256]   (the pictures of docs/visualize.md, with the
       probabilities the model gives them)

Repeats are interleaved (every case once per round) so drifting machine load hits all
cases alike; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import cnnlens
from cnnlens._trace import default_feature_layer
from cnnlens.behaviour.visualize import visualize


@dataclass
class Case:
    name: str
    run: Callable[[int], object]  # run(steps)
    per_step: bool  # True: cost = (run(steps) - run(0)) / steps; False: run(1) is one pass


def _floor(model: nn.Module, x: Tensor, target: int) -> Tensor:
    xr = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(model(xr)[:, target].sum(), xr)
    return grad


def _naive(model: nn.Module, x: Tensor, target: int, steps: int) -> Tensor:
    """The textbook loop: pixels as a leaf, optimizer, ``loss.backward()``."""
    image = x.detach().clone().requires_grad_()
    optimizer = torch.optim.Adam([image], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        (-model(image)[:, target].sum()).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return image.detach()


def cases(
    model: cnnlens.LoadedModel, batch: int, target: int = 1, channel: str | None = None
) -> list[Case]:
    module = model.module
    h, w = model.input_size
    x = torch.rand(batch, 3, h, w, device=model.device)
    if channel is None:
        with torch.no_grad():
            layer = default_feature_layer(module, x)
        name = next(n for n, m in module.named_modules() if m is layer)
        channel = f"{name}:0"
    targets: list[int | str] = [target] * batch
    channels: list[int | str] = [channel] * batch

    def frozen_floor(steps: int) -> object:
        flags = [p.requires_grad for p in module.parameters()]
        for p in module.parameters():
            p.requires_grad_(False)
        try:
            return [_floor(module, x, target) for _ in range(steps)]
        finally:
            for p, f in zip(module.parameters(), flags, strict=True):
                p.requires_grad_(f)

    return [
        Case("floor: forward + input backward", frozen_floor, False),
        Case(
            "visualize default, class objective",
            lambda s: visualize(model, targets, steps=s, progress=False),
            True,
        ),
        Case(
            f"visualize default, channel {channel}",
            lambda s: visualize(model, channels, steps=s, progress=False),
            True,
        ),
        Case(
            "visualize simonyan (pixels, L2)",
            lambda s: visualize(model, targets, steps=s, recipe="simonyan", progress=False),
            True,
        ),
        Case("naive loop, loss.backward()", lambda s: _naive(module, x, target, s), True),
    ]


def _timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


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

    from cnnlens.render import grid, save_png, tensor_to_image

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
        save_png(picture, Path(folder) / filename)
        print(filename, options, steps, [round(float(p), 4) for p in probs], f"{seconds:.0f} s")
    if "channels" in parts:
        units = ["_blocks.3:5", "_blocks.6:30", "_blocks.10:7", "_blocks.14:100"]
        images = visualize(model, units, steps=steps)
        picture = grid([tensor_to_image(x) for x in images], captions=units)
        save_png(picture, Path(folder) / "visualize_channels.png")
        print("visualize_channels.png", units, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gallery-steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gallery", metavar="DIR", help="write the docs pictures to DIR")
    parser.add_argument(
        "--parts", default="classes,simonyan,channels", help="gallery parts (comma-separated)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gallery:
        gallery(args.gallery, args.device, args.parts.split(","), args.gallery_steps)
        return
    pretrained = args.model == "efficientnet_lite0"
    model = cnnlens.load_model(args.model, pretrained=pretrained, device=args.device)
    all_cases = cases(model, args.batch)
    for case in all_cases:  # warm-up
        case.run(1)
    per_step: dict[str, list[float]] = {c.name: [] for c in all_cases}
    for _ in range(args.repeats):
        for case in all_cases:
            full = _timed(lambda c=case: c.run(args.steps), args.device)  # type: ignore[misc]
            if case.per_step:
                setup = _timed(lambda c=case: c.run(0), args.device)  # type: ignore[misc]
                per_step[case.name].append((full - setup) / args.steps)
            else:
                per_step[case.name].append(full / args.steps)
    floor = statistics.median(per_step[all_cases[0].name])
    print(
        f"model {args.model}, input {model.input_size}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, {args.device}; median of {args.repeats} rounds"
    )
    print(f"{'case':52s} {'ms/step':>9s} {'x floor':>8s}")
    for case in all_cases:
        value = statistics.median(per_step[case.name])
        print(f"{case.name:52s} {value * 1e3:9.1f} {value / floor:8.2f}")


if __name__ == "__main__":
    main()
