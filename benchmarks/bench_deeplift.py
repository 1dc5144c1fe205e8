"""Cost of DeepLIFT against the floor: one raw forward pass plus one backward pass to the
input (``torch.autograd.grad`` on the input, parameter gradients off).

    cnnlens deeplift, zero baseline             vs 1 floor pass   (target: <= 2x)
    cnnlens deeplift, one baseline per item     vs 1 floor pass   (target: <= 2x)
    captum DeepLift on the unmodified model     refused on torchvision's ResNet (one ReLU
                                                module called three times per block)
    captum DeepLift on a copy with one ReLU     as the competitor
    per call site

The script also prints the summation-to-delta error of each DeepLIFT row.

Usage: python benchmarks/bench_deeplift.py [--model resnet50] [--batch 8] [--size 224]
       [--repeats 3] [--threads N]

Times are process CPU time by default (``--clock wall`` for elapsed time): on a shared
machine CPU time stays steady where elapsed time does not. Repeats are interleaved (every case once per round) so drifting machine load hits all
cases alike; the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import cnnlens


@dataclass
class Case:
    name: str
    run: Callable[[], object]
    floor_passes: int = 1


def _floor(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    xr = x.detach().requires_grad_()
    out = model(xr)
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), xr)
    return grad


class _OwnReLUs(nn.Module):
    """A ResNet block with one ReLU module per call site (what captum's DeepLift needs)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(3))

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = self.relus[0](b.bn1(b.conv1(x)))
        if isinstance(b, Bottleneck):
            out = self.relus[1](b.bn2(b.conv2(out)))
            out = b.bn3(b.conv3(out))
        else:
            out = b.bn2(b.conv2(out))
        return self.relus[2](out + identity)


def one_relu_per_call_site(model: nn.Module) -> nn.Module:
    """A deep copy of a torchvision ResNet whose every ReLU call has its own module."""
    twin = copy.deepcopy(model)
    twin.relu = nn.ReLU()
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        blocks = getattr(twin, stage, None)
        if blocks is None:
            continue
        for i, block in enumerate(blocks):
            if isinstance(block, (BasicBlock, Bottleneck)):
                blocks[i] = _OwnReLUs(block)
    return twin


def _captum(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    from captum.attr import DeepLift

    return DeepLift(model).attribute(
        x.detach().requires_grad_(), baselines=torch.zeros_like(x), target=target
    )


def _delta(model: nn.Module, x: Tensor, x0: Tensor, target: Tensor, attribution: Tensor) -> float:
    with torch.no_grad():
        idx = target.view(-1, 1)
        delta = model(x).gather(1, idx).squeeze(1) - model(x0.expand_as(x)).gather(1, idx).squeeze(
            1
        )
    return float(((attribution.sum(dim=(1, 2, 3)) - delta).abs() / delta.abs()).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
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
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(args.batch, 3, args.size, args.size)
    noisy = x + torch.randn_like(x)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    targets = target.tolist()
    zeros = torch.zeros(1, *x.shape[1:])
    cases = [
        Case("floor: forward + input backward", lambda: _floor(model, x, target)),
        Case(
            "cnnlens deeplift (zeros)",
            lambda: cnnlens.explain(model, x, "deeplift", target=targets).attribution,
        ),
        Case(
            "cnnlens deeplift (per-item baseline)",
            lambda: (
                cnnlens.explain(model, x, "deeplift", target=targets, baseline=noisy).attribution
            ),
        ),
    ]
    print(
        f"{args.model} batch {args.batch} at {args.size}x{args.size} on cpu, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.repeats}, {args.clock} time"
    )
    a = cnnlens.explain(model, x, "deeplift", target=targets).attribution
    print(f"summation-to-delta, zeros: max relative error {_delta(model, x, zeros, target, a):.2e}")
    a = cnnlens.explain(model, x, "deeplift", target=targets, baseline=noisy).attribution
    print(
        f"summation-to-delta, per-item: max relative error {_delta(model, x, noisy, target, a):.2e}"
    )
    if not args.no_captum:
        try:
            import captum  # noqa: F401
        except ImportError:
            print("captum not installed: no competitor rows")
        else:
            try:
                _captum(model, x, target)
            except Exception as exc:  # captum refuses shared ReLU modules
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                print(f"captum DeepLift on the unmodified model: {type(exc).__name__}: {first}")
            else:
                cases.append(
                    Case("captum DeepLift (unmodified)", lambda: _captum(model, x, target))
                )
            twin = one_relu_per_call_site(model)
            attr = _captum(twin, x, target)
            print(
                "captum DeepLift on the one-ReLU-per-call-site copy: max relative error "
                f"{_delta(model, x, zeros, target, attr):.2e}"
            )
            cases.append(
                Case("captum DeepLift (one ReLU per call site)", lambda: _captum(twin, x, target))
            )
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for round_ in range(args.warmup + args.repeats):
        for case in cases:
            start = clock()
            case.run()
            if round_ >= args.warmup:
                times[case.name].append(clock() - start)
    floor = statistics.median(times[cases[0].name])
    print(f"{'case':45s} {'median s':>9s} {'min s':>8s} {'x floor':>8s}")
    for case in cases:
        med = statistics.median(times[case.name])
        print(
            f"{case.name:45s} {med:9.4f} {min(times[case.name]):8.4f} "
            f"{med / (floor * case.floor_passes):8.3f}"
        )


if __name__ == "__main__":
    main()
