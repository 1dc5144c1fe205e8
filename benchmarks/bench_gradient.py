"""Cost of the gradient methods against the floor: one raw forward pass plus one backward
pass to the input (``torch.autograd.grad`` on the input, parameter gradients off).

    saliency, deconvnet, guided_backprop     vs 1 floor pass     (target: <= 1.10x)
    smoothgrad with n samples                vs n floor passes   (target: <= 1.10x)
    captum's Saliency / GuidedBackprop       as competitors, when captum is installed

Usage: python benchmarks/bench_gradient.py [--model resnet50] [--batch 8] [--size 224]
       [--samples 8] [--repeats 5] [--threads N] [--device cpu]

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
import torchvision
from torch import Tensor, nn

import cnnlens


@dataclass
class Case:
    name: str
    run: Callable[[], object]
    floor_passes: int  # how many floor passes this case is compared with


def _floor(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    xr = x.detach().requires_grad_()
    out = model(xr)
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), xr)
    return grad


def cases(
    model: nn.Module, x: Tensor, target: Tensor, samples: int, *, captum: bool = True
) -> list[Case]:
    targets = target.tolist()
    rows = x.shape[0]
    result = [
        Case("floor: forward + input backward", lambda: _floor(model, x, target), 1),
        Case(
            f"floor x {samples}",
            lambda: [_floor(model, x, target) for _ in range(samples)],
            samples,
        ),
    ]
    for method in ("saliency", "deconvnet", "guided_backprop"):
        result.append(
            Case(method, lambda m=method: cnnlens.explain(model, x, m, target=targets), 1)  # type: ignore[misc]
        )
    result.append(
        Case(
            f"smoothgrad n={samples} (rows/pass {rows})",
            lambda: cnnlens.explain(
                model, x, "smoothgrad", target=targets, samples=samples, batch_size=rows
            ),
            samples,
        )
    )
    result.append(
        Case(
            f"smoothgrad n={samples} (default batching)",
            lambda: cnnlens.explain(model, x, "smoothgrad", target=targets, samples=samples),
            samples,
        )
    )
    if captum:
        try:
            from captum.attr import GuidedBackprop, Saliency
        except ImportError:
            print("captum not installed: no competitor rows")
        else:

            def captum_run(cls: type) -> object:
                flags = [(p, p.requires_grad) for p in model.parameters()]
                for p, _ in flags:
                    p.requires_grad_(False)
                try:
                    return cls(model).attribute(x.detach().requires_grad_(), target=target)
                finally:
                    for p, flag in flags:
                        p.requires_grad_(flag)

            result.append(Case("captum Saliency", lambda: captum_run(Saliency), 1))
            result.append(Case("captum GuidedBackprop", lambda: captum_run(GuidedBackprop), 1))
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-captum", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated case-name prefixes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    all_cases = cases(model, x, target, args.samples, captum=not args.no_captum)
    if args.only:
        prefixes = tuple(args.only.split(","))
        all_cases = [c for c in all_cases if c.name.startswith(("floor", *prefixes))]
    times: dict[str, list[float]] = {c.name: [] for c in all_cases}
    for round_ in range(args.warmup + args.repeats):
        for case in all_cases:
            _sync(device)
            start = time.perf_counter()
            case.run()
            _sync(device)
            if round_ >= args.warmup:
                times[case.name].append(time.perf_counter() - start)
    floor = statistics.median(times[all_cases[0].name])
    print(
        f"{args.model} batch {args.batch} at {args.size}x{args.size} on {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.repeats}"
    )
    print(f"{'case':45s} {'median s':>9s} {'min s':>8s} {'x floor':>8s}")
    for case in all_cases:
        med = statistics.median(times[case.name])
        print(
            f"{case.name:45s} {med:9.4f} {min(times[case.name]):8.4f} "
            f"{med / (floor * case.floor_passes):8.3f}"
        )


if __name__ == "__main__":
    main()
