"""Occlusion's adaptive drill-down (Krypton §4.2) against the exact map: speed and SSIM.

The bundled EfficientNet-Lite0 on the cat photo (224 px), window 32, stride 8 (729
windows), target the top class. Each round times, in process CPU time on one thread, the
plain batched forwards (``incremental=False``), the exact default path (the incremental
engine) and the drill-down at each fraction (same engine, default coarse stride 16),
interleaved; the table gives the fastest round. Quality: SSIM of the drill-down map
against the exact one, with cnnlens' own helper (absolute values scaled to [0, 1], as the
randomization test uses it) and on the signed maps (data range of the exact map, as the
approximate mode's curve in docs/performance.md).

Usage: python benchmarks/bench_occlusion_drill_down.py [--fractions 0.1,0.25,0.5]
       [--rounds 2] [--coarse 16]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from skimage.metrics import structural_similarity
from torch import Tensor

import cnnlens
import harness
from cnnlens.attribution.occlusion import window_starts
from cnnlens.evaluate._similarity import ssim


def _timed(fn: Callable[[], cnnlens.Explanation]) -> tuple[float, cnnlens.Explanation]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def main() -> None:
    parser = harness.script_parser(__doc__)
    parser.add_argument(
        "--fractions", default="0.1,0.25,0.5", help="drill-down fractions, comma-separated"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds; the fastest is reported"
    )
    parser.add_argument(
        "--coarse", type=int, default=16, help="the drill-down's coarse stride in pixels"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = cnnlens.load_model("efficientnet_lite0")
    x = loaded.preprocess(cnnlens.sample_image("cat"))
    options = {"window": 32, "stride": 8, "progress": False}
    cases: dict[str, dict[str, object]] = {
        f: {"drill_down": float(f), "coarse_stride": args.coarse} for f in args.fractions.split(",")
    }
    cases.update({"exact": {}, "plain": {"incremental": False}})
    best: dict[str, float] = {}
    maps: dict[str, cnnlens.Explanation] = {}
    for _ in range(args.rounds):
        for name, extra in cases.items():
            seconds, maps[name] = _timed(
                lambda extra=extra: cnnlens.explain(loaded, x, "occlusion", **options, **extra)  # type: ignore[misc]
            )
            best[name] = min(best.get(name, seconds), seconds)
    exact: Tensor = maps["exact"].attribution[0, 0]
    span = float(exact.max() - exact.min())
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(
        "| fraction | windows evaluated | pixels exact | CPU s | speedup over exact | speedup over plain | SSIM (abs, cnnlens) | SSIM (signed) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in cases:
        e = maps[name]
        if "window_interpolated" in e.extras:
            # the coarse windows, and the fine ones evaluated beside them (a fine window at a
            # coarse window's offset takes its drop: counted once)
            fine, coarse = window_starts(224, 32, 8), window_starts(224, 32, args.coarse)
            shared = len(set(fine) & set(coarse)) ** 2
            exact_fine = int((~e.extras["window_interpolated"]).sum())
            windows = f"{len(coarse) ** 2 + exact_fine - shared} ({len(coarse) ** 2} coarse)"
            pixels = f"{float((e.extras['interpolated'] == 0).double().mean()):.0%}"
        else:
            windows, pixels = "729", "100%"
        signed = structural_similarity(exact.numpy(), e.attribution[0, 0].numpy(), data_range=span)
        print(
            f"| {name} | {windows} | {pixels} | {best[name]:.1f} | {best['exact'] / best[name]:.2f}x | "
            f"{best['plain'] / best[name]:.2f}x | {ssim(exact, e.attribution[0, 0]):.3f} | {signed:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
