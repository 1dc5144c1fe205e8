"""Incremental occlusion against the plain batched forwards, and the approximate mode's
speed/quality curve. Writes the tables of docs/performance.md to stdout (markdown).

Speed: per occluded copy. Both paths pay one clean pass per image (the incremental one
also a traced pass that fills its cache); what grows with the number of windows is the
per-copy cost, so each case times the same ``--copies`` occluded copies (windows drawn at
random positions of the 32 px / stride 8 grid: 625 windows at 224 px) through the model
batched (the plain path, i.e. the floor of any occlusion that runs whole forwards) and
through the incremental engine, interleaved over ``--rounds`` rounds, in CPU time. The
largest difference between the two outputs is reported beside the ratio.

Quality: the full occlusion map of the bundled EfficientNet-Lite0 on the cat photo
(window 32, stride 16), exact and approximate at several thresholds τ, compared by SSIM.

Usage: python benchmarks/bench_occlusion_incremental.py [--models vgg16,resnet50,...]
       [--windows 16,32,64] [--copies 32] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
import torchvision
from skimage.metrics import structural_similarity
from torch import Tensor, nn

import cnnlens
import harness
from cnnlens.attribution import _incremental as inc
from cnnlens.attribution.occlusion import occlusion, window_starts
from cnnlens.targets import resolve_target


def _model(name: str) -> nn.Module:
    if name == "efficientnet_lite0":
        return cnnlens.load_model(name).module
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def _cpu(fn: object) -> float:
    start = time.process_time()
    fn()  # type: ignore[operator]
    return time.process_time() - start


def speed(name: str, window: int, copies: int, rounds: int) -> tuple[float, float, float, float]:
    model = _model(name)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    starts = window_starts(224, window, 8)
    rng = random.Random(0)
    where = [(rng.choice(starts), rng.choice(starts)) for _ in range(copies)]
    top = torch.tensor([t for t, _ in where])
    left = torch.tensor([s for _, s in where])
    occluded = x.repeat(copies, 1, 1, 1)
    for i, (t, s) in enumerate(where):
        occluded[i, :, t : t + window, s : s + window] = 0.0
    patches = torch.zeros(copies, 3, window, window)
    plain_times: list[float] = []
    fast_times: list[float] = []
    with torch.inference_mode():
        graph = inc.trace(model)
        assert not isinstance(graph, str), graph
        occluder = inc.Engine(model, graph).occluder(x)
        outputs: dict[str, Tensor] = {}
        for _ in range(rounds):
            plain_times.append(_cpu(lambda: outputs.__setitem__("plain", model(occluded))))
            fast_times.append(
                _cpu(lambda: outputs.__setitem__("fast", occluder.outputs(patches, top, left)))
            )
    error = float((outputs["plain"] - outputs["fast"]).abs().max())
    scale = float(outputs["plain"].abs().max())
    estimate = inc.plan(model, x, (window, window)).estimated_cost
    plain, fast = min(plain_times) / copies, min(fast_times) / copies
    return plain, fast, error / scale, estimate


def quality(taus: list[float]) -> list[tuple[float, float, float]]:
    loaded = cnnlens.load_model("efficientnet_lite0")
    x = loaded.preprocess(cnnlens.sample_image("cat"))
    target = resolve_target(None, 1)
    options = {"window": 32, "stride": 16, "progress": False}
    result: list[tuple[float, float, float]] = []
    plain_time = _cpu(lambda: occlusion(loaded.module, x, target, incremental=False, **options))
    exact = occlusion(loaded.module, x, target, incremental=False, **options)[0, 0].numpy()
    span = float(exact.max() - exact.min())
    for tau in taus:
        maps: list[np.ndarray] = []
        seconds = _cpu(
            lambda tau=tau, maps=maps: maps.append(
                occlusion(loaded.module, x, target, approximate=tau, **options)[0, 0].numpy()
            )
        )
        ssim = structural_similarity(exact, maps[0], data_range=span)
        result.append((tau, plain_time / seconds, float(ssim)))
    return result


def main() -> None:
    parser = harness.script_parser(__doc__)
    parser.add_argument(
        "--models",
        default="vgg16,resnet50,densenet121,efficientnet_lite0",
        help="torchvision names or efficientnet_lite0, comma-separated",
    )
    parser.add_argument("--windows", default="16,32,64", help="window sizes in pixels")
    parser.add_argument("--copies", type=int, default=32, help="occluded copies a case times")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds; the fastest is reported"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--taus", default="1.0,0.75,0.5,0.35,0.25", help="the approximate mode's thresholds τ"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| model | window | plain ms/copy | incremental ms/copy | speedup | estimated MACs | max error / max output |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for window in (int(w) for w in args.windows.split(",")):
            plain, fast, error, estimate = speed(name, window, args.copies, args.rounds)
            print(
                f"| {name} | {window} | {plain * 1e3:.1f} | {fast * 1e3:.1f} | "
                f"{plain / fast:.2f}x | {estimate:.2f} | {error:.1e} |",
                flush=True,
            )
    print()
    print("| τ | speedup over plain | SSIM vs exact |")
    print("|---|---|---|")
    for tau, speedup, ssim in quality([float(t) for t in args.taus.split(",")]):
        print(f"| {tau:g} | {speedup:.2f}x | {ssim:.3f} |", flush=True)


if __name__ == "__main__":
    main()
