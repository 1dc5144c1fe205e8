"""Figures for docs/scale.md: extraction throughput of the local engine and of Ray with 1
and 2 workers, Ray's overhead, and FAISS at 1M x 256.

    python benchmarks/bench_scale.py engines --items 8192     # needs Ray and Fashion-MNIST
    python benchmarks/bench_scale.py faiss --rows 1000000 --dim 256

Each part prints a markdown table and writes JSON next to it (``--json``). Run on a quiet
machine (``nice -n 19`` on a shared one: the figures then are lower bounds).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import harness


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engines(items: int, batch_size: int) -> dict[str, Any]:
    import ray
    import torch

    import cnnlens
    from cnnlens.dataset._sources import Head

    torch.set_num_threads(1)
    model = cnnlens.load_model("fashion_cnn")
    data = Head(cnnlens.datasets.fashion_mnist("train"), items)
    rows = 1024
    results: dict[str, Any] = {"items": items, "batch_size": batch_size, "shard_rows": rows}
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))

    def run(name: str, count: int = items, **options: Any) -> float:
        out = work / name
        started = time.perf_counter()
        cnnlens.extract_features(
            model,
            Head(data, count),
            "features.relu3",
            batch_size=batch_size,
            shard_rows=rows,
            out=out,
            progress=False,
            **options,
        )
        elapsed = time.perf_counter() - started
        shutil.rmtree(out)
        return elapsed

    try:
        results["local_s"] = run("local")
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        results["ray_start_s"] = time.perf_counter() - started
        results["ray_fixed_s"] = run("tiny", count=batch_size, engine="ray", workers=1)
        results["ray1_s"] = run("ray1", engine="ray", workers=1)
        results["ray2_s"] = run("ray2", engine="ray", workers=2)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    # A job's fixed cost (starting actors, importing torch, fetching model and data) is the
    # time of a one-batch job; the rest of a job's time is its per-row cost.
    steady = items - batch_size
    results["local_rows_per_s"] = items / results["local_s"]
    for key in ("ray1", "ray2"):
        results[f"{key}_rows_per_s"] = items / results[f"{key}_s"]
        results[f"{key}_steady_rows_per_s"] = steady / (
            results[f"{key}_s"] - results["ray_fixed_s"]
        )
    local_ms = 1000 * results["local_s"] / items
    ray_ms = 1000 * (results["ray1_s"] - results["ray_fixed_s"]) / steady
    results["ray_overhead_ms_per_row"] = ray_ms - local_ms
    print("| engine | seconds | rows/s (whole job) | rows/s (after the job's start) |")
    print("|---|---|---|---|")
    print(f"| local | {results['local_s']:.1f} | {results['local_rows_per_s']:.0f} | - |")
    for key, label in (("ray1", "Ray, 1 worker"), ("ray2", "Ray, 2 workers")):
        print(
            f"| {label} | {results[key + '_s']:.1f} | {results[key + '_rows_per_s']:.0f} | "
            f"{results[key + '_steady_rows_per_s']:.0f} |"
        )
    print(
        f"\nRay start {results['ray_start_s']:.1f} s; fixed cost of a job (actors, model, "
        f"data) {results['ray_fixed_s']:.1f} s; per row: local {local_ms:.3f} ms, Ray "
        f"(1 worker) {ray_ms:.3f} ms, overhead {results['ray_overhead_ms_per_row']:.3f} ms"
    )
    return results


def clustered(rows: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = (rng.standard_normal((clusters, dim)) * 4.0).astype(np.float32)
    base = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):
        stop = min(start + 100_000, rows)
        labels = rng.integers(0, clusters, stop - start)
        base[start:stop] = centres[labels] + rng.standard_normal((stop - start, dim), np.float32)
    queries = centres[rng.integers(0, clusters, 1000)] + rng.standard_normal(
        (1000, dim), np.float32
    )
    return base, queries.astype(np.float32)


def faiss_figures(rows: int, dim: int, clusters: int) -> dict[str, Any]:
    import faiss

    from cnnlens.dataset._nearest import Searcher, exact_search

    faiss.omp_set_num_threads(1)
    base, queries = clustered(rows, dim, clusters, seed=0)
    results: dict[str, Any] = {"rows": rows, "dim": dim, "clusters": clusters, "queries": 1000}
    started = time.perf_counter()
    truth, _ = exact_search(base, queries, 10, "cosine")
    results["exact_batch_ms_per_query"] = 1000 * (time.perf_counter() - started) / len(queries)
    started = time.perf_counter()
    exact_search(base, queries[:5], 10, "cosine")
    results["exact_single_ms"] = 1000 * (time.perf_counter() - started) / 5
    print(
        "| index | build s | index MB | nprobe / lists | ms per query (1) | ms per query (batch of 1000) | recall@10 vs exact |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in ("ivf-flat", "ivf-pq"):
        searcher = Searcher(base, "cosine", exact=False, kind=kind)
        size = faiss.serialize_index(searcher.index).nbytes / 2**20
        started = time.perf_counter()
        for q in queries[:200]:
            searcher.search(q[None], 10)
        single = 1000 * (time.perf_counter() - started) / 200
        started = time.perf_counter()
        found, _ = searcher.search(queries, 10)
        batch = 1000 * (time.perf_counter() - started) / len(queries)
        recall = float(
            np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        )
        results[kind] = {
            **searcher.info(),
            "index_mb": size,
            "single_ms": single,
            "batch_ms_per_query": batch,
            "recall_at_10": recall,
            "calibrated_recall": searcher.recall,
        }
        print(
            f"| {kind} | {searcher.build_seconds:.1f} | {size:.0f} | {searcher.nprobe} / "
            f"{searcher.nlist} | {single:.2f} | {batch:.3f} | {recall:.3f} |"
        )
        del searcher
    print(
        f"| exact (flat) | 0 | {base.nbytes / 2**20:.0f} | - | {results['exact_single_ms']:.1f}"
        f" | {results['exact_batch_ms_per_query']:.2f} | 1.000 |"
    )
    results["max_rss_mb"] = _rss_mb()
    return results


def main() -> None:
    parser = harness.script_parser(__doc__)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("engines", help="extraction throughput: local, Ray with 1 and 2 workers")
    p.add_argument("--items", type=int, default=8192, help="Fashion-MNIST items to extract")
    p.add_argument("--batch-size", type=int, default=64, help="items a batch")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p = sub.add_parser(
        "faiss",
        help="FAISS index build and search at scale",
        formatter_class=parser.formatter_class,
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="vectors in the index")
    p.add_argument("--dim", type=int, default=256, help="dimensions a vector")
    p.add_argument("--clusters", type=int, default=1000, help="IVF lists")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.part == "engines":
        results = engines(args.items, args.batch_size)
    else:
        results = faiss_figures(args.rows, args.dim, args.clusters)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
