"""Dataset tools against their floors.

    extraction    extract_features (DataLoader, pooling, memory-mapped store on disk) over a
                  TensorDataset  vs  the raw forward pass to the same layer over the same
                  tensors, pre-batched at the same batch size          (target: >= 0.9x throughput)
    top_patches   one streaming pass keeping the top-k of every channel of the layer
                  vs  the same raw forward pass to that layer          (target: <= 1.2x time)
    nearest       N x D clustered float32 vectors (default 1M x 128): exact (flat) search
                  latency, IVF build time, calibrated nprobe, latency and recall@10 against
                  exact on held-out queries                            (recall target: >= 0.95)

Usage: python benchmarks/bench_dataset.py [--model fashion_cnn|resnet18] [--items N]
       [--batch 64] [--repeats 3] [--threads 1] [--nn-rows 1000000] [--nn-dim 128] [--skip-nn]

Repeats are interleaved (every case once per round); best and median are reported. On a shared
machine use --cpu-time (process CPU time, one torch thread): wall time there measures the
neighbours' load more than the code.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import cnnlens
from cnnlens.dataset._nearest import Searcher


def setup(name: str, items: int) -> tuple[nn.Module, nn.Module, str, str, Tensor]:
    """(model, its prefix up to the layer, layer for extraction, layer for patches, inputs)."""
    torch.manual_seed(0)
    if name == "fashion_cnn":
        model = cnnlens.load_model("fashion_cnn").module
        assert isinstance(model.features, nn.Sequential)
        prefix = model.features
        return model, prefix, "features", "features", torch.randn(items, 1, 28, 28)
    if name == "resnet18":
        model = torchvision.models.resnet18(weights=None).eval()
        prefix = nn.Sequential(*list(model.children())[:-2])
        return model, prefix, "layer4", "layer4", torch.randn(items, 3, 112, 112)
    raise SystemExit(f"unknown --model {name}")


def forward_floor(prefix: nn.Module, chunks: list[Tensor]) -> None:
    with torch.inference_mode():
        for chunk in chunks:
            prefix(chunk)


CLOCK = time.perf_counter


def timed(run: Callable[[], object]) -> float:
    start = CLOCK()
    run()
    return CLOCK() - start


def bench_model(args: argparse.Namespace) -> None:
    model, prefix, layer, patch_layer, x = setup(args.model, args.items)
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.int64))
    chunks = [x[i : i + args.batch] for i in range(0, len(x), args.batch)]
    tmp = Path(tempfile.mkdtemp(prefix="cnnlens-bench-"))
    counter = iter(range(10**6))

    def extract() -> None:
        cnnlens.extract_features(
            model, data, layer, batch_size=args.batch, out=tmp / f"s{next(counter)}", progress=False
        )

    def patches() -> None:
        cnnlens.top_patches(model, data, patch_layer, k=9, batch_size=args.batch, progress=False)

    cases: dict[str, Callable[[], object]] = {
        "raw forward to the layer": lambda: forward_floor(prefix, chunks),
        "extract_features (store on disk)": extract,
        "top_patches (all channels, k=9)": patches,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for run in cases.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in cases.items():
                times[name].append(timed(run))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{args.model}: {args.items} items {tuple(x.shape[1:])}, batch {args.batch}, "
          f"{torch.get_num_threads()} thread(s), layer {layer!r}, "
          f"{'CPU' if CLOCK is time.process_time else 'wall'} time, {args.repeats} rounds")  # fmt: skip
    print(f"  {'':36s} {'best':>9s}     {'median':>9s}     best img/s")
    for name in cases:
        print(f"  {name:36s} {best[name] * 1000:9.1f} ms  {median[name] * 1000:9.1f} ms  "
              f"{len(x) / best[name]:9.0f}")  # fmt: skip
    for label, stats in (("best", best), ("median", median)):
        floor = stats["raw forward to the layer"]
        throughput = floor / stats["extract_features (store on disk)"]
        ratio = stats["top_patches (all channels, k=9)"] / floor
        print(f"  [{label}] extraction throughput / raw forward = {throughput:.3f} (target >= 0.9); "
              f"top_patches time / raw forward = {ratio:.3f} (target <= 1.2)")  # fmt: skip


def clustered(
    n: int, dim: int, queries: int, seed: int = 0, spread: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around n / 1000 centres (``spread`` 0: plain Gaussian noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 1000, 10), dim)).astype(np.float32) * spread
    base = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        base[start:stop] = centres[rng.integers(0, len(centres), stop - start)]
        base[start:stop] += rng.normal(size=(stop - start, dim)).astype(np.float32)
    picks = centres[rng.integers(0, len(centres), queries)]
    return base, picks + rng.normal(size=(queries, dim)).astype(np.float32)


def bench_exact(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    start = time.perf_counter()
    exact = Searcher(base, "cosine", exact=True)
    print(f"  exact index build                  {time.perf_counter() - start:8.2f} s")
    truth, _ = exact.search(queries, 10)
    single = [timed(lambda q=q: exact.search(q[None], 10)) for q in queries[:20]]
    batch = timed(lambda: exact.search(queries, 10)) / len(queries)
    print(f"  exact latency, one query           {statistics.median(single) * 1000:8.2f} ms")
    print(f"  exact latency per query, batch     {batch * 1000:8.3f} ms")
    return truth


def bench_nearest(args: argparse.Namespace) -> None:
    n, dim = args.nn_rows, args.nn_dim
    spread = 0.0 if args.nn_data == "gaussian" else 3.0
    base, queries = clustered(n, dim, 1000, spread=spread)
    print(f"\nnearest: {n} x {dim} {args.nn_data} vectors, 1000 held-out queries, cosine, k=10")
    truth = bench_exact(base, queries)
    start = time.perf_counter()
    ivf = Searcher(base, "cosine", exact=False)
    print(f"  IVF build + calibration            {time.perf_counter() - start:8.2f} s "
          f"(nprobe {ivf.nprobe}, calibration recall {ivf.recall:.3f}"
          f"{'; fell back to exact search' if ivf.exact else ''})")  # fmt: skip
    found, _ = ivf.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    single = [timed(lambda q=q: ivf.search(q[None], 10)) for q in queries[:50]]
    batch = timed(lambda: ivf.search(queries, 10)) / len(queries)
    print(f"  IVF latency, one query             {statistics.median(single) * 1000:8.2f} ms")
    print(f"  IVF latency per query, batch       {batch * 1000:8.3f} ms")
    print(f"  IVF recall@10 vs exact             {recall:8.3f}  (target >= 0.95)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="fashion_cnn", choices=("fashion_cnn", "resnet18"))
    parser.add_argument("--items", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nn-rows", type=int, default=1_000_000)
    parser.add_argument("--nn-dim", type=int, default=128)
    parser.add_argument("--nn-data", choices=("clustered", "gaussian"), default="clustered")
    parser.add_argument("--skip-nn", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time instead of wall time (steadier on a shared machine; "
        "meaningful with --threads 1 and no DataLoader workers)",
    )
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    if not args.skip_model:
        bench_model(args)
    if not args.skip_nn:
        bench_nearest(args)


if __name__ == "__main__":
    main()
