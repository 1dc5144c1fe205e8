"""Cost of occlusion against the floor: the same number of forward passes, in batches of
the same size, under ``torch.inference_mode`` (inputs made once, outside the timing).

    cnnlens occlusion                                vs floor   (target: <= 1.10x)
    captum Occlusion, default (1 perturbation/eval)  as a competitor
    captum Occlusion, perturbations_per_eval = batch as a competitor at equal batching

Window 32, stride 16 at 224x224: 13 x 13 = 169 occluded copies per image (the windows land
on the border, so cnnlens adds no flush window and both libraries evaluate the same copies).

Usage: python benchmarks/bench_occlusion.py [--models resnet18,resnet50] [--images 1]
       [--batch-size 32] [--repeats 3] [--threads N] [--no-captum]

Times are process CPU time by default (``--clock wall`` for elapsed time): on a shared
machine CPU time stays steady where elapsed time does not. Repeats are interleaved (every case once per round) so drifting machine load hits all
cases alike; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn

import cnnlens
from cnnlens.attribution.occlusion import window_starts


@dataclass
class Case:
    name: str
    run: Callable[[], object]


def _floor(model: nn.Module, batches: list[Tensor]) -> None:
    with torch.inference_mode():
        for batch in batches:
            model(batch)


def cases(
    model: nn.Module, x: Tensor, window: int, stride: int, batch_size: int, *, captum: bool
) -> list[Case]:
    b, c, h, w = x.shape
    copies = b * len(window_starts(h, window, stride)) * len(window_starts(w, window, stride))
    sizes = [min(batch_size, copies - start) for start in range(0, copies, batch_size)]
    batches = [torch.randn(n, c, h, w) for n in sizes]
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    targets = target.tolist()
    result = [
        Case(
            f"floor: {copies} forwards in batches of {batch_size}", lambda: _floor(model, batches)
        ),
        Case(
            "cnnlens occlusion",
            lambda: cnnlens.explain(
                model,
                x,
                "occlusion",
                target=targets,
                window=window,
                stride=stride,
                batch_size=batch_size,
                progress=False,
            ),
        ),
    ]
    if captum:
        try:
            from captum.attr import Occlusion
        except ImportError:
            print("captum not installed: no competitor rows")
            return result

        def captum_run(per_eval: int) -> Tensor:
            return Occlusion(model).attribute(
                x,
                sliding_window_shapes=(c, window, window),
                strides=(c, stride, stride),
                baselines=0.0,
                target=target,
                perturbations_per_eval=per_eval,
            )

        result.append(Case("captum Occlusion (default: 1 per eval)", lambda: captum_run(1)))
        result.append(
            Case(f"captum Occlusion ({batch_size} per eval)", lambda: captum_run(batch_size))
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: process CPU time (steady on a shared machine); wall: elapsed time",
    )
    parser.add_argument("--no-captum", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        x = torch.randn(args.images, 3, args.size, args.size)
        all_cases = cases(
            model, x, args.window, args.stride, args.batch_size, captum=not args.no_captum
        )
        times: dict[str, list[float]] = {c.name: [] for c in all_cases}
        for round_ in range(args.warmup + args.repeats):
            for case in all_cases:
                start = clock()
                case.run()
                if round_ >= args.warmup:
                    times[case.name].append(clock() - start)
        floor = statistics.median(times[all_cases[0].name])
        print(
            f"\n{name}, {args.images} image(s) at {args.size}x{args.size}, window {args.window} "
            f"stride {args.stride}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}, median of {args.repeats}, {args.clock} time"
        )
        print(f"{'case':45s} {'median s':>9s} {'min s':>8s} {'x floor':>8s}")
        for case in all_cases:
            med = statistics.median(times[case.name])
            print(f"{case.name:45s} {med:9.3f} {min(times[case.name]):8.3f} {med / floor:8.3f}")


if __name__ == "__main__":
    main()
