"""Nearest neighbours: FAISS search over stored features, and a pixel-space baseline.

Feature space: cosine distance (inner product of L2-normalized vectors, ``IndexFlatIP``)
or Euclidean distance (``IndexFlatL2``), exact by default. Large stores use an inverted-file
index (``IndexIVFFlat``, about sqrt(N) lists; ``IndexIVFPQ`` with exact reranking above
:data:`PQ_ABOVE` rows) whose ``nprobe`` is doubled until recall@10 against exact search, on
a sample of stored vectors used as queries, reaches :data:`TARGET_RECALL`; when only probing
every list gets there (data without cluster structure) an IVF-Flat searcher falls back to
the exact index. An on-disk store saves its approximate indexes next to its shards.

Pixel space (:func:`pixel_nearest`): Euclidean distance between pictures resized to a
common size, streamed over the dataset with a running top-k.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._progress import progress as progress_bar
from ..errors import InputError
from ._batches import grouped_batches, range_batches
from ._shards import ShardedArray

__all__ = [
    "INDEX_KINDS",
    "PROMISED_RECALL",
    "TARGET_RECALL",
    "Searcher",
    "exact_search",
    "pixel_nearest",
]

TARGET_RECALL = 0.97  # calibration target
PROMISED_RECALL = 0.95  # an approximate index that cannot reach this is not used
INDEX_KINDS = ("flat", "ivf-flat", "ivf-pq")
PQ_ABOVE = 5_000_000  # above this many rows the approximate index stores PQ codes
# IVF-PQ candidates per wanted neighbour, reranked by exact distance: the first that
# reaches the target recall when the index is built.
RERANK = (4, 8, 16, 32, 64)
_CHUNK = 65536


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a dependency of the data extra
        raise InputError(
            "nearest-neighbour search needs faiss: pip install 'cnnlens[data]'"
        ) from None
    return faiss


def _normalized(block: np.ndarray) -> np.ndarray:
    out = np.array(block, dtype=np.float32, copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, 1e-12)
    return out


class Searcher:
    """A FAISS index over ``vectors`` (N, D) for one metric, chosen by size: exact
    (``"flat"``), or approximate — ``"ivf-flat"`` (an inverted file over the vectors) up to
    :data:`PQ_ABOVE` rows, ``"ivf-pq"`` (product-quantized codes, 1/16 of the memory, its
    candidates reranked by exact distance against ``vectors``) beyond. Approximate indexes are trained on
    a seeded sample, filled chunk by chunk, and calibrated: ``nprobe`` doubles until
    recall@10 against exact search on 256 stored vectors reaches :data:`TARGET_RECALL`;
    ``recall`` is what was measured."""

    def __init__(
        self,
        vectors: np.ndarray | ShardedArray,
        metric: str,
        *,
        exact: bool = True,
        seed: int = 0,
        kind: str | None = None,
    ) -> None:
        faiss = _faiss()
        started = time.perf_counter()
        self.metric = metric
        self.rows, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        self.kind = kind or ("flat" if exact else "ivf-pq" if self.rows > PQ_ABOVE else "ivf-flat")
        if self.kind not in INDEX_KINDS:
            raise InputError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
        self.vectors = vectors
        while True:
            self.nprobe, self.rerank = 0, 0
            self.recall: float | None = 1.0 if self.kind == "flat" else None
            self.index = self._build(faiss, vectors, seed)
            self._add(vectors)
            if self.kind == "flat":
                break
            self._calibrate(vectors, seed)
            if self.kind == "ivf-pq" and (self.recall or 0.0) < PROMISED_RECALL:
                # The codes are too coarse for these vectors even reranked: keep the
                # promise with the vectors themselves (IVF-Flat, which may turn exact).
                self.kind = "ivf-flat"
            elif self.kind == "ivf-flat" and self.nprobe >= self.nlist:
                # No structure for the inverted file to use (it would scan every list): an
                # exact flat index gives the same answers faster.
                self.kind = "flat"
            else:
                break
        self.build_seconds = time.perf_counter() - started

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    @property
    def nlist(self) -> int:
        return 0 if self.exact else int(self._ivf().nlist)

    def _ivf(self) -> Any:
        return _faiss().extract_index_ivf(self.index)

    def _build(self, faiss: Any, vectors: np.ndarray | ShardedArray, seed: int) -> Any:
        inner = self.metric == "cosine"
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim) if inner else faiss.IndexFlatL2(self.dim)
        faiss_metric = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
        # About sqrt(N) lists, each trained on ~50 points (faiss wants at least 39).
        nlist = int(min(max(16, math.sqrt(self.rows)), max(16, self.rows // 50)))
        quantizer = faiss.IndexFlatIP(self.dim) if inner else faiss.IndexFlatL2(self.dim)
        train = 50 * nlist
        if self.kind == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss_metric)
        else:
            index = faiss.IndexIVFPQ(
                quantizer, self.dim, nlist, _pq_parts(self.dim), 8, faiss_metric
            )
            train = max(train, 64 * 256)  # each sub-quantizer learns 256 centroids
        index.own_fields = True
        quantizer.this.disown()  # the index owns (and frees) its quantizer
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(self.rows, min(self.rows, train), replace=False))
        index.train(self._prepare(vectors[sample]))
        return index

    def _add(self, vectors: np.ndarray | ShardedArray) -> None:
        for start in range(0, self.rows, _CHUNK):
            self.index.add(self._prepare(vectors[start : start + _CHUNK]))

    def _prepare(self, block: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return _normalized(block)
        return np.ascontiguousarray(block, dtype=np.float32)

    def _calibrate(self, vectors: np.ndarray | ShardedArray, seed: int, queries: int = 256) -> None:
        """Smallest power-of-two ``nprobe`` whose recall@10 reaches the target, measured with
        stored vectors as queries (each query's own row left out of both lists)."""
        rng = np.random.default_rng(seed + 1)
        rows = np.sort(rng.choice(self.rows, min(queries, self.rows), replace=False))
        k = min(11, self.rows)
        truth, _ = exact_search(vectors, vectors[rows], k, self.metric)
        nlist = self.nlist
        prepared = self._prepare(vectors[rows])
        # IVF-PQ: when probing more lists stops helping, its codes are too coarse to rank
        # the candidates: rerank more of them (IVF-Flat has nothing to rerank).
        reranks = list(RERANK if self.kind == "ivf-pq" else RERANK[:1])
        self.rerank = reranks.pop(0)
        nprobe, before = 1, -1.0
        while True:
            self._ivf().nprobe = nprobe
            found, _ = self._search_raw(prepared, k)
            self.recall = _recall(truth, found, rows)
            if self.recall >= TARGET_RECALL:
                break
            if nprobe < nlist and (self.recall > before + 0.005 or not reranks):
                nprobe = min(2 * nprobe, nlist)
            elif reranks:
                self.rerank = reranks.pop(0)
            else:
                break
            before = self.recall
        self.nprobe = nprobe

    def _search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind != "ivf-pq":
            scores, indices = self.index.search(queries, k)
            return indices.astype(np.int64), scores
        # Product-quantized distances are coarse: take RERANK x k candidates and order them
        # by their exact distance to the query.
        wanted = min(self.rows, self.rerank * k)
        _, candidates = self.index.search(queries, wanted)
        candidates = candidates.astype(np.int64)
        rows = self._prepare(self.vectors[np.maximum(candidates, 0)].reshape(-1, self.dim))
        rows = rows.reshape(len(queries), wanted, self.dim)
        if self.metric == "cosine":
            scores = np.einsum("qd,qkd->qk", queries, rows)
            scores[candidates < 0] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        else:
            scores = ((rows - queries[:, None, :]) ** 2).sum(axis=2)
            scores[candidates < 0] = np.inf
            order = np.argsort(scores, axis=1, kind="stable")[:, :k]
        return (
            np.take_along_axis(candidates, order, axis=1),
            np.take_along_axis(scores, order, axis=1).astype(np.float32),
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices (Q, k) int64, distances (Q, k) float32), nearest first."""
        indices, scores = self._search_raw(self._prepare(queries), k)
        return indices, _distances(scores, self.metric)

    def info(self) -> dict[str, Any]:
        """What was built: kind, rows, lists, ``nprobe``, the recall@10 it was calibrated
        to (1.0 for exact search), build time."""
        return {
            "kind": self.kind,
            "metric": self.metric,
            "rows": self.rows,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "rerank": self.rerank,
            "recall_at_10": self.recall,
            "build_seconds": round(self.build_seconds, 3),
        }

    def save(self, path: Path, key: str) -> None:
        """Write the index and what it was built from (``key``) next to each other."""
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        _faiss().write_index(self.index, str(tmp))
        os.replace(tmp, path)
        meta = {**self.info(), "dim": self.dim, "key": key}
        side = path.with_suffix(".json")
        side.with_name(side.name + ".tmp").write_text(json.dumps(meta))
        os.replace(side.with_name(side.name + ".tmp"), side)

    @classmethod
    def load(
        cls, path: Path, vectors: np.ndarray | ShardedArray, metric: str, key: str
    ) -> Searcher | None:
        """The index saved at ``path`` if it was built from ``key`` for ``metric``."""
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
            if meta.get("key") != key or meta.get("metric") != metric:
                return None
            index = _faiss().read_index(str(path))
        except (OSError, ValueError, RuntimeError):
            return None
        searcher = cls.__new__(cls)
        searcher.metric = metric
        searcher.rows, searcher.dim = int(meta["rows"]), int(meta["dim"])
        searcher.kind = str(meta["kind"])
        searcher.vectors = vectors
        searcher.index = index
        searcher.nprobe = int(meta["nprobe"])
        searcher.rerank = int(meta.get("rerank", 0))
        searcher.recall = meta["recall_at_10"]
        searcher.build_seconds = float(meta["build_seconds"])
        if searcher.kind != "flat":
            searcher._ivf().nprobe = searcher.nprobe
        return searcher


def _pq_parts(dim: int) -> int:
    """Sub-quantizers for IVF-PQ: one byte per 4 dimensions where ``dim`` allows."""
    for parts in (dim // 4, dim // 8, dim // 2, dim):
        if parts >= 1 and dim % parts == 0:
            return parts
    return dim


def _distances(scores: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return np.maximum(1.0 - scores, 0.0).astype(np.float32)
    return np.sqrt(np.maximum(scores, 0.0)).astype(np.float32)


def _recall(truth: np.ndarray, found: np.ndarray, rows: np.ndarray) -> float:
    hits = total = 0
    for own, t, f in zip(rows, truth, found, strict=True):
        wanted = [i for i in t if i != own][:10]
        got = {i for i in f if i != own}
        hits += sum(1 for i in wanted if i in got)
        total += len(wanted)
    return hits / max(total, 1)


def exact_search(
    vectors: np.ndarray | ShardedArray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN streamed over ``vectors`` in chunks (memory flat): (indices, distances)."""
    faiss = _faiss()
    inner = metric == "cosine"
    q = _normalized(queries) if inner else np.ascontiguousarray(queries, dtype=np.float32)
    heap = faiss.ResultHeap(len(q), k, keep_max=inner)
    for start in range(0, len(vectors), _CHUNK):
        block = vectors[start : start + _CHUNK]
        block = _normalized(block) if inner else np.ascontiguousarray(block, dtype=np.float32)
        index = faiss.IndexFlatIP(block.shape[1]) if inner else faiss.IndexFlatL2(block.shape[1])
        index.add(block)
        scores, ids = index.search(q, min(k, len(block)))
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            fill = -np.inf if inner else np.inf
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=fill)
        heap.add_result(
            np.ascontiguousarray(scores, dtype=np.float32),
            np.ascontiguousarray(np.where(ids >= 0, ids + start, -1), dtype=np.int64),
        )
    heap.finalize()
    return heap.I.astype(np.int64), _distances(heap.D, metric)


# -- pixel space ---------------------------------------------------------------------------


def _pixels(batch: Tensor, size: tuple[int, int], channels: int) -> Tensor:
    if batch.shape[1] != channels:
        batch = batch.mean(dim=1, keepdim=True)
    if tuple(batch.shape[-2:]) != size:
        batch = F.interpolate(
            batch, size=size, mode="bilinear", align_corners=False, antialias=True
        )
    return batch.flatten(1)


def _closest(distances: Tensor, indices: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per query, the ``k`` entries first by (distance, index): the same answer however
    the items were split into parts."""
    by_index = torch.argsort(indices, dim=1)
    distances = torch.gather(distances, 1, by_index)
    indices = torch.gather(indices, 1, by_index)
    order = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    return torch.gather(distances, 1, order), torch.gather(indices, 1, order)


@dataclass(frozen=True)
class PixelJob:
    """The ``k`` items of ``[start, stop)`` nearest to each query in pixel space: the work
    of one shard, in this process or on a Ray actor."""

    queries: Tensor  # (Q, pixels) float64
    size: tuple[int, int]
    channels: int
    k: int
    preprocessing: Any
    batch_size: int
    shard_rows: int
    total: int
    num_workers: int = 0  # DataLoader processes inside a Ray actor

    def scan(
        self,
        data: Any,
        ranges: list[tuple[int, int]],
        num_workers: int = 0,
        tick: Callable[[int], None] = lambda _n: None,
    ) -> tuple[Tensor, Tensor]:
        count = self.queries.shape[0]
        best_d = torch.full((count, 0), math.inf, dtype=torch.float64)
        best_i = torch.full((count, 0), -1, dtype=torch.int64)
        for inputs, _, indices in grouped_batches(
            data,
            range_batches(ranges, self.batch_size),
            preprocessing=self.preprocessing,
            num_workers=num_workers,
        ):
            items = _pixels(inputs.float(), self.size, self.channels)
            d = torch.cdist(
                self.queries, items.double(), compute_mode="donot_use_mm_for_euclid_dist"
            )
            best_d, best_i = _closest(
                torch.cat([best_d, d], dim=1),
                torch.cat([best_i, indices.expand(count, -1)], dim=1),
                self.k,
            )
            tick(len(indices))
        return best_d, best_i

    def __call__(self, _info: Any, data: Any, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.shard_rows
        stop = min(start + self.shard_rows, self.total)
        return self.scan(data, [(start, stop)], self.num_workers)


def pixel_nearest(
    dataset: Any,
    image: Any,
    k: int,
    *,
    size: tuple[int, int] | int | None = None,
    model: Any = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool | None = None,
    engine: str = "local",
    **ray_options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` dataset items nearest to ``image`` in pixel space: ``(indices, distances)``.

    Pictures become tensors as in :func:`extract_features` (with ``model``: its
    preprocessing, else values in [0, 1]); every item is resized to ``size`` (default: the
    query's size) and compared by Euclidean distance over all pixels (items with another
    channel count than the query are compared in grayscale, the channel mean). ``image``: a
    picture or (C, H, W) tensor (gives (k,) arrays) or a list of them / a (Q, C, H, W)
    tensor (gives (Q, k)). One streaming pass, memory flat. Equal distances are ordered by
    dataset index. ``engine="ray"`` scans shards on a Ray cluster and merges them exactly
    (same result; ``ray_options`` as in :func:`extract_features`).
    """
    from ._batches import as_dataset, as_queries, probe_input
    from ._patches import _shard_rows
    from ._store import check_engine

    check_engine(engine, ray_options)
    data = as_dataset(dataset)
    preprocessing = getattr(model, "preprocessing", None)
    queries, single = as_queries(image, preprocessing)
    if not 1 <= k <= len(data):
        raise InputError(f"k must be between 1 and the dataset's {len(data)} items, got {k}")
    if size is None:
        target = (int(queries.shape[-2]), int(queries.shape[-1]))
    else:
        target = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    # Compare in colour when items and query agree on channels, else in grayscale.
    channels = int(queries.shape[1])
    if int(probe_input(data, preprocessing).shape[1]) != channels:
        channels = 1
    q = _pixels(queries.float(), target, channels).double()
    total = len(data)
    job = PixelJob(
        q,
        target,
        channels,
        k,
        preprocessing,
        batch_size,
        _shard_rows(batch_size, total),
        total,
        num_workers,
    )
    with progress_bar(total, "pixels", enabled=progress, unit="img") as bar:
        if engine == "ray":
            from ._ray import run_remote

            best_d = torch.full((q.shape[0], 0), math.inf, dtype=torch.float64)
            best_i = torch.full((q.shape[0], 0), -1, dtype=torch.int64)
            for _, (d, i) in run_remote(job, None, data, None, ray_options, bar.advance):
                best_d, best_i = _closest(
                    torch.cat([best_d, d], dim=1), torch.cat([best_i, i], dim=1), k
                )
        else:
            best_d, best_i = job.scan(data, [(0, total)], num_workers, bar.advance)
    indices_np = best_i.numpy()
    distances_np = best_d.float().numpy()
    return (indices_np[0], distances_np[0]) if single else (indices_np, distances_np)
