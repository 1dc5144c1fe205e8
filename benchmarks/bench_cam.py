"""Cost of Grad-CAM (and the other layer maps) against the floor: one forward pass plus a
backward pass that stops at the chosen layer (no gradient to the input, none to the
parameters), written here in a few raw lines.

    gradcam (layer given), gradcam (default layer), gradcam_pp, layercam, cam
                                           vs the floor (target: <= 1.10x)
    captum LayerGradCam, torchcam GradCAM, pytorch-grad-cam GradCAM
                                           as competitors (``bench`` extra), same run

Usage: python benchmarks/bench_cam.py [--model resnet50] [--layer layer4] [--batch 8]
       [--size 224] [--repeats 5] [--threads N] [--device cpu] [--clock wall|cpu]

Repeats are interleaved (every case once per round) so drifting machine load hits all
cases alike; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import cnnlens


@dataclass
class Case:
    name: str
    run: Callable[[], object]


def _floor(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Forward with the layer's output made a leaf; gradient of the scores to that leaf."""
    found: list[Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor:
        leaf = out.detach().requires_grad_()
        found.append(leaf)
        return leaf.clone()  # downstream in-place ops must not touch the leaf

    handle = layer.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), found[-1])
    return F.relu((grad.mean(dim=(2, 3), keepdim=True) * found[-1]).sum(dim=1))


def _frozen(model: nn.Module) -> Callable[[Callable[[], object]], object]:
    def run(fn: Callable[[], object]) -> object:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            return fn()
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    return run


def cases(
    model: nn.Module, layer_name: str, x: Tensor, target: Tensor, *, competitors: bool = True
) -> list[Case]:
    layer = model.get_submodule(layer_name)
    targets = target.tolist()
    frozen = _frozen(model)
    result = [
        Case("floor: forward + backward to the layer", lambda: _floor(model, layer, x, target)),
        Case(
            "cnnlens gradcam",
            lambda: cnnlens.explain(model, x, "gradcam", target=targets, layer=layer_name),
        ),
        Case(
            "cnnlens gradcam (default layer)",
            lambda: cnnlens.explain(model, x, "gradcam", target=targets),
        ),
    ]
    for method in ("gradcam_pp", "layercam", "cam"):
        result.append(
            Case(
                f"cnnlens {method}",
                lambda m=method: cnnlens.explain(model, x, m, target=targets, layer=layer_name),  # type: ignore[misc]
            )
        )
    if not competitors:
        return result
    try:
        from captum.attr import LayerGradCam
    except ImportError:
        print("captum not installed: no captum row")
    else:
        result.append(
            Case(
                "captum LayerGradCam",
                lambda: frozen(
                    lambda: LayerGradCam(model, layer).attribute(
                        x.detach().requires_grad_(), target=target, relu_attributions=True
                    )
                ),
            )
        )
    try:
        from torchcam.methods import GradCAM as TorchcamGradCAM
    except ImportError:
        print("torchcam not installed: no torchcam row")
    else:

        def torchcam_run() -> object:
            with TorchcamGradCAM(model, target_layer=layer_name) as extractor:
                scores = model(x.detach().requires_grad_())
                return extractor(targets, scores, normalized=False)

        result.append(Case("torchcam GradCAM", lambda: frozen(torchcam_run)))
    try:
        from pytorch_grad_cam import GradCAM as PgcGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("grad-cam not installed: no pytorch-grad-cam row")
    else:

        def pgc_run() -> object:
            with PgcGradCAM(model=model, target_layers=[layer]) as cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])

        result.append(Case("pytorch-grad-cam GradCAM", pgc_run))
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-competitors", action="store_true")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (with --threads 1: robust to a loaded machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    all_cases = cases(model, args.layer, x, target, competitors=not args.no_competitors)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    times: dict[str, list[float]] = {c.name: [] for c in all_cases}
    for round_ in range(args.warmup + args.repeats):
        for case in all_cases:
            _sync(device)
            start = clock()
            case.run()
            _sync(device)
            if round_ >= args.warmup:
                times[case.name].append(clock() - start)
    floor = statistics.median(times[all_cases[0].name])
    floor_min = min(times[all_cases[0].name])
    print(
        f"{args.model} layer {args.layer}, batch {args.batch} at {args.size}x{args.size} on "
        f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.repeats}, {args.clock} clock"
    )
    print("x floor: median over median; min x floor: min over min (less sensitive to load)")
    print(f"{'case':42s} {'median s':>9s} {'min s':>8s} {'x floor':>8s} {'min x floor':>12s}")
    for case in all_cases:
        med, low = statistics.median(times[case.name]), min(times[case.name])
        print(f"{case.name:42s} {med:9.4f} {low:8.4f} {med / floor:8.3f} {low / floor_min:12.3f}")


if __name__ == "__main__":
    main()
