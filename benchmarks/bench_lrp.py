"""Cost of LRP against the floor: one raw forward pass plus one backward pass to the input
(``torch.autograd.grad`` on the input, parameter gradients off), on the unmodified model.

    cnnlens lrp, each composite                vs 1 floor pass   (target: <= 2x)
    zennit EpsilonPlusFlat + ResNetCanonizer   competitor (it rewrites the model while
                                               attributing)
    captum LRP (on a deep copy: it sets        competitor; its relevance sums are printed
    attributes on the modules)

The script also prints, per row, the relevance sum against the explained logit
(conservation), so a fast but wrong competitor shows as such.

Usage: python benchmarks/bench_lrp.py [--model resnet50] [--batch 8] [--size 224]
       [--repeats 3] [--threads N] [--composites epsilon_plus_flat,...] [--no-competitors]

Repeats are interleaved (every case once per round) so drifting machine load hits all
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

import cnnlens
from cnnlens.attribution.lrp import COMPOSITES


@dataclass
class Case:
    name: str
    run: Callable[[], Tensor]
    floor_passes: int = 1


def _floor(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    xr = x.detach().requires_grad_()
    out = model(xr)
    (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), xr)
    return grad


def _zennit(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
    with Gradient(model=model, composite=composite) as attributor:
        _, rel = attributor(x, lambda out: torch.nn.functional.one_hot(target, out.shape[1]) * out)
    return rel


def _captum(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    from captum.attr import LRP

    return LRP(model).attribute(x.detach().requires_grad_(), target=target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--composites", default=",".join(COMPOSITES))
    parser.add_argument("--no-competitors", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "efficientnet_lite0":
        model = cnnlens.load_model(args.model).module
    else:
        model = torchvision.models.get_model(args.model, weights=None).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(dim=1)
    targets = target.tolist()
    explained = logits.gather(1, target.view(-1, 1)).squeeze(1)

    def ours(composite: str) -> Callable[[], Tensor]:
        return lambda: (
            cnnlens.explain(model, x, "lrp", target=targets, composite=composite).attribution
        )

    cases = [Case("floor: forward + input backward", lambda: _floor(model, x, target))]
    cases += [Case(f"cnnlens lrp {c}", ours(c)) for c in args.composites.split(",") if c]
    if not args.no_competitors:
        try:
            import zennit  # noqa: F401
        except ImportError:
            print("zennit not installed: no zennit row")
        else:
            if "resnet" in args.model:
                cases.append(
                    Case(
                        "zennit EpsilonPlusFlat + ResNetCanonizer",
                        lambda: _zennit(model, x, target),
                    )
                )
        try:
            import captum  # noqa: F401
        except ImportError:
            print("captum not installed: no captum row")
        else:
            twin = copy.deepcopy(model)
            try:
                _captum(twin, x[:1], target[:1])
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                print(f"captum LRP refuses the model: {type(exc).__name__}: {first}")
            else:
                cases.append(Case("captum LRP (deep copy)", lambda: _captum(twin, x, target)))
    print(
        f"{args.model} batch {args.batch} at {args.size}x{args.size} on cpu, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.repeats}"
    )
    sums: dict[str, str] = {}
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for round_ in range(args.warmup + args.repeats):
        for case in cases:
            start = time.perf_counter()
            result = case.run()
            elapsed = time.perf_counter() - start
            if round_ >= args.warmup:
                times[case.name].append(elapsed)
            if round_ == 0 and not case.name.startswith("floor"):
                ratio = result.detach().flatten(1).sum(1) / explained
                sums[case.name] = f"{float(ratio.min()):.3g}..{float(ratio.max()):.3g}"
    floor = statistics.median(times[cases[0].name])
    print(f"{'case':45s} {'median s':>9s} {'min s':>8s} {'x floor':>8s}  relevance / logit")
    for case in cases:
        med = statistics.median(times[case.name])
        print(
            f"{case.name:45s} {med:9.4f} {min(times[case.name]):8.4f} "
            f"{med / (floor * case.floor_passes):8.3f}  {sums.get(case.name, '')}"
        )


if __name__ == "__main__":
    main()
