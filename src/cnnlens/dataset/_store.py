"""The feature store: pooled layer features of a whole dataset, on disk or in memory.

On disk a store is a folder of shards with checksums and a manifest that lists the
completed ones (layout in :mod:`._shards`). The manifest also says what made the rows —
model name and weight fingerprint, layer, pooling, input shape — and which dataset, by
spec and by content (:func:`._content.content_id`). Extraction computes the shards the
manifest does not list, on this machine (``engine="local"``) or on a Ray cluster
(``engine="ray"``), and commits each one when it is whole, so a killed job resumes with no
row lost or duplicated. Opening and resuming verify every shard; any damage is an
``InputError`` that names the shards to redo.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import progress as progress_bar
from ..errors import InputError
from . import _shards as shards
from ._batches import (
    LayerTap,
    ModelInfo,
    as_dataset,
    as_queries,
    check_pool,
    grouped_batches,
    model_info,
    pool_features,
    probe_input,
    range_batches,
)
from ._content import content_id
from ._nearest import Searcher
from ._shards import FORMAT, VERSION, ShardedArray

__all__ = ["ENGINES", "FeatureStore", "extract_features"]

ENGINES = ("local", "ray")
# Above this many rows nearest() uses an approximate (IVF) index unless told otherwise.
APPROXIMATE_ABOVE = 200_000
# Default shard size: about this many bytes of features, at most this many rows.
SHARD_BYTES = 32 << 20
SHARD_MAX_ROWS = 8192

_IDENTITY_KEYS = ("model", "fingerprint", "layer", "pool", "dim", "input_shape", "total")

FeatureRows = np.ndarray | ShardedArray
# A producer of finished shards: (shard index, features (rows, dim), labels (rows,)).
ShardResults = Iterator[tuple[int, np.ndarray, np.ndarray]]


class FeatureStore:
    """Features (N, D) float32 of a dataset's items at one layer, with their labels.

    Made by :func:`extract_features`; reopened with :meth:`open`. ``features`` and
    ``labels`` cover the complete rows from the first on (``count`` of ``total``; row ``i``
    is dataset item ``i``). On disk ``features`` is a :class:`ShardedArray` over the
    memory-mapped shards (index it like an array; ``np.asarray`` reads it all), in memory
    a numpy array.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        features: FeatureRows,
        labels: np.ndarray,
        *,
        path: Path | None = None,
        sources: list[str] | None = None,
    ) -> None:
        self.manifest = manifest
        self._features = features
        self._labels = labels
        self.path = path
        self._sources = sources
        self.approximate_above = APPROXIMATE_ABOVE
        self._searchers: dict[tuple[str, bool], Searcher] = {}

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> FeatureStore:
        """Reopen a store folder written by :func:`extract_features` (read-only).

        Every shard's size and row ids are checked, and with ``verify`` (default) its
        SHA-256 too (about 1.8 GB/s); damage raises ``InputError`` naming the shards to redo.
        """
        folder = Path(path)
        manifest = shards.read_manifest(folder)
        shards.check_manifest(folder, manifest)
        damage = shards.damaged_shards(folder, manifest, checksums=verify)
        if damage:
            raise InputError(shards.damage_message(folder, damage))
        return cls._load(folder, manifest)

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> FeatureStore:
        """The store over the complete prefix of shards of a checked manifest."""
        entries = {int(e["shard"]): e for e in manifest["shards"]}
        parts, labels = [], []
        index = 0
        while index in entries:
            features, table = shards.read_shard(folder, entries[index])
            parts.append(features)
            labels.append(table[:, 1])
            index += 1
        label_array = np.concatenate(labels) if labels else np.empty(0, np.int64)
        label_array.flags.writeable = False
        sources = shards.read_sources(folder, manifest)
        rows = ShardedArray(parts, int(manifest["dim"]))
        return cls(manifest, rows, label_array, path=folder, sources=sources)

    @classmethod
    def from_arrays(
        cls,
        features: Any,
        labels: Any = None,
        *,
        classes: Sequence[str] | None = None,
        model: str = "arrays",
        layer: str = "",
    ) -> FeatureStore:
        """An in-memory store over given feature vectors (N, D), e.g. to search them."""
        matrix = np.ascontiguousarray(_as_vectors(features), dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise InputError(f"features must be a non-empty (N, D) matrix, got {matrix.shape}")
        n, dim = matrix.shape
        label_array = (
            np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
        )
        if label_array.shape != (n,):
            raise InputError(f"{label_array.shape[0]} labels for {n} feature vectors")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": model,
            "fingerprint": None,
            "layer": layer,
            "pool": "none",
            "dim": dim,
            "input_shape": None,
            "total": n,
            "count": n,
            "dataset": None,
            "classes": None if classes is None else list(classes),
            "meta": {},
        }
        return cls(manifest, matrix, label_array)

    def verify(self) -> None:
        """Check every shard of an on-disk store against its recorded size, SHA-256 and row
        ids; raise ``InputError`` naming the damaged shards (an in-memory store passes)."""
        if self.path is None:
            return
        manifest = shards.read_manifest(self.path)
        shards.check_manifest(self.path, manifest)
        damage = shards.damaged_shards(self.path, manifest)
        if damage:
            raise InputError(shards.damage_message(self.path, damage))
        shards.read_sources(self.path, manifest)

    def check_dataset(self, dataset: Any) -> None:
        """Refuse a dataset whose content is not the one the store was made from."""
        self._check_dataset_id(content_id(as_dataset(dataset)))

    def _check_dataset_id(self, actual: str) -> None:
        recorded = self.manifest.get("dataset_id")
        if recorded is not None and actual != recorded:
            where = self.path if self.path is not None else "the store"
            raise InputError(
                f"{where} was made from another dataset (content id {recorded}, this one "
                f"{actual}); its rows would not match the items: use the original data, or "
                "another store folder for this dataset"
            )

    # -- contents --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Rows complete from the first on (row ``i`` is dataset item ``i``)."""
        return len(self._labels)

    @property
    def done(self) -> int:
        """Rows in completed shards, including any after a missing shard."""
        return int(self.manifest.get("count", self.count))

    @property
    def total(self) -> int:
        """Rows in the dataset."""
        return int(self.manifest["total"])

    @property
    def complete(self) -> bool:
        return self.count == self.total

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"])

    @property
    def layer(self) -> str:
        return str(self.manifest["layer"])

    @property
    def pool(self) -> str:
        return str(self.manifest["pool"])

    @property
    def dataset(self) -> str | None:
        """The spec of the dataset (``fashion-mnist:train`` or a folder) when known."""
        spec = self.manifest.get("dataset")
        return None if spec is None else str(spec)

    @property
    def classes(self) -> list[str] | None:
        classes = self.manifest.get("classes")
        return None if classes is None else [str(c) for c in classes]

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.manifest.get("meta") or {})

    @property
    def features(self) -> FeatureRows:
        """(count, dim) float32."""
        return self._features

    @property
    def labels(self) -> np.ndarray:
        """(count,) int64; -1 for unlabelled items."""
        return self._labels

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else " in memory"
        return (
            f"FeatureStore({self.count}/{self.total} x {self.dim}, model={self.model_name}, "
            f"layer={self.layer!r}, pool={self.pool}{where})"
        )

    def source(self, row: int) -> str | int:
        """Where row ``row`` came from: its file (image folders) or its dataset index."""
        if not 0 <= row < self.count:
            raise InputError(f"row {row} out of range for {self.count} rows")
        return self._sources[row] if self._sources is not None else row

    def label_name(self, row: int) -> str | None:
        label = int(self.labels[row])
        if label < 0:
            return None
        classes = self.classes
        return classes[label] if classes is not None and label < len(classes) else str(label)

    # -- queries ---------------------------------------------------------------------------
    def features_of(self, model: Any, images: Any, *, batch_size: int = 64) -> np.ndarray:
        """Features (Q, D) of pictures or input tensors, computed like the stored ones.

        ``model`` must be the model that made the store (checked by fingerprint)."""
        inputs, single = as_queries(images, getattr(model, "preprocessing", None))
        info = model_info(model, self.layer, inputs[:1])
        self._check_identity(info, self.pool, None)
        out = np.empty((inputs.shape[0], self.dim), dtype=np.float32)
        device = _device_of(info)
        with LayerTap(info.module, info.layer, info.calls) as tap:
            for start in range(0, len(inputs), batch_size):
                chunk = inputs[start : start + batch_size].to(device)
                out[start : start + len(chunk)] = (
                    pool_features(tap(chunk), self.pool).float().cpu().numpy()
                )
        return out[0] if single else out

    def nearest(
        self,
        query: Any,
        k: int = 8,
        *,
        metric: str = "cosine",
        model: Any = None,
        exact: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows nearest to ``query`` in feature space: ``(indices, distances)``.

        ``query``: a feature vector (D,) or matrix (Q, D); or, with ``model``, a picture, a
        list of pictures or an input tensor (C, H, W) / (Q, C, H, W) whose features are
        computed at the store's layer. ``metric``: ``"cosine"`` (distance 1 - cosine
        similarity) or ``"l2"`` (Euclidean distance). Search is exact (FAISS flat index)
        up to ``approximate_above`` rows, approximate (IVF, recall@10 calibrated to at least
        0.95) above; ``exact`` forces either. A single query gives (k,) arrays, else (Q, k).
        """
        if metric not in ("cosine", "l2"):
            raise InputError(f"metric must be 'cosine' or 'l2', got {metric!r}")
        if not 1 <= k <= self.count:
            raise InputError(f"k must be between 1 and the store's {self.count} rows, got {k}")
        if model is not None:
            vectors = np.asarray(self.features_of(model, query), dtype=np.float32)
        else:
            vectors = _as_vectors(query)
        single = vectors.ndim == 1
        matrix = vectors.reshape(1, -1) if single else vectors
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise InputError(
                f"query has shape {tuple(vectors.shape)}; expected ({self.dim},) or (Q, {self.dim})"
                " feature vectors, or pass model= to search with pictures"
            )
        searcher = self._searcher(metric, exact)
        indices, distances = searcher.search(np.ascontiguousarray(matrix, dtype=np.float32), k)
        return (indices[0], distances[0]) if single else (indices, distances)

    def index_info(self, metric: str = "cosine", *, exact: bool | None = None) -> dict[str, Any]:
        """The index :meth:`nearest` searches with these settings (built or loaded if
        needed): ``kind`` (``flat``, ``ivf-flat``, ``ivf-pq``), ``rows``, ``nlist``,
        ``nprobe``, ``recall_at_10`` (measured against exact search when it was built; 1.0
        for exact search), ``build_seconds``."""
        return self._searcher(metric, exact).info()

    def _searcher(self, metric: str, exact: bool | None) -> Searcher:
        use_exact = self.count <= self.approximate_above if exact is None else exact
        key = (metric, use_exact)
        searcher = self._searchers.get(key)
        if searcher is not None and searcher.rows == self.count:
            return searcher
        saved = None if use_exact or self.path is None else self.path / f"index-{metric}.faiss"
        fingerprint = self._rows_key()
        if saved is not None:
            searcher = Searcher.load(saved, self.features, metric, fingerprint)
        if searcher is None or searcher.rows != self.count:
            searcher = Searcher(self.features, metric, exact=use_exact)
            if saved is not None:
                with contextlib.suppress(OSError):  # a read-only store just is not cached
                    searcher.save(saved, fingerprint)
        self._searchers[key] = searcher
        return searcher

    def _rows_key(self) -> str:
        """What the stored rows are, for a saved index: the checksums of the shards."""
        entries = sorted(self.manifest.get("shards") or [], key=lambda e: int(e["shard"]))
        text = "".join(e["features"]["sha256"] for e in entries[: len(self._shard_parts())])
        return hashlib.sha256(f"{self.count}:{text}".encode()).hexdigest()[:32]

    def _shard_parts(self) -> list[Any]:
        return self._features.parts if isinstance(self._features, ShardedArray) else []

    # -- identity --------------------------------------------------------------------------
    def _check_identity(self, info: ModelInfo, pool: str, total: int | None) -> None:
        """Refuse a model, layer or pooling other than the store's; with ``total`` (an
        extraction) also another input shape or dataset size."""
        wanted = identity(info, pool, total if total is not None else self.total)
        keys = _IDENTITY_KEYS if total is not None else ("model", "fingerprint", "layer", "pool")
        for key in keys:
            if self.manifest.get(key) != wanted[key]:
                raise InputError(_mismatch(self, key, self.manifest.get(key), wanted[key]))


def _mismatch(store: FeatureStore, key: str, ours: Any, theirs: Any) -> str:
    where = store.path if store.path is not None else "the store"
    what = {
        "model": "model",
        "fingerprint": "model weights",
        "layer": "layer",
        "pool": "pooling",
        "dim": "feature size",
        "input_shape": "input shape",
        "total": "dataset size",
    }[key]
    return (
        f"{where} was made with {what} {ours!r}, not {theirs!r}; features of different "
        f"models, layers or datasets are never mixed (use another store)"
    )


def identity(info: ModelInfo, pool: str, total: int) -> dict[str, Any]:
    dim = int(np.prod(info.output_shape)) if pool == "flatten" else int(info.output_shape[0])
    if len(info.output_shape) == 1:
        dim = int(info.output_shape[0])
    return {
        "model": info.name,
        "fingerprint": info.fingerprint,
        "layer": info.layer_name,
        "pool": pool,
        "dim": dim,
        "input_shape": list(info.input_shape),
        "total": total,
    }


def _device_of(info: ModelInfo) -> Any:
    for p in info.module.parameters():
        return p.device
    return "cpu"


def _as_vectors(query: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(query, torch.Tensor):
            return query.detach().float().cpu().numpy()
        return np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(
            f"query of type {type(query).__name__} is not a feature vector; pass model= to "
            "search with pictures"
        ) from None


def _dataset_spec(dataset: Any) -> str | None:
    spec = getattr(dataset, "spec", None)
    return spec if isinstance(spec, str) else None


def _dataset_sources(dataset: Any) -> list[str] | None:
    source = getattr(dataset, "source", None)
    if callable(source) and hasattr(dataset, "paths"):
        return [str(source(i)) for i in range(len(dataset))]
    return None


def _classes(dataset: Any) -> list[str] | None:
    from ._sources import item_labels

    names = item_labels(dataset)
    return None if names is None else list(names)


def default_shard_rows(dim: int, batch_size: int) -> int:
    """About :data:`SHARD_BYTES` of features, at most :data:`SHARD_MAX_ROWS` rows, a
    multiple of the batch size (so every engine batches a shard the same way)."""
    rows = min(SHARD_BYTES // (4 * dim), SHARD_MAX_ROWS)
    return max(batch_size, rows // batch_size * batch_size)


def check_engine(engine: str, ray_options: dict[str, Any]) -> None:
    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and ray_options:
        raise InputError(f"options {sorted(ray_options)} only apply to engine='ray'")
    if engine == "ray":
        from ._ray import require_ray

        require_ray()


def extract_features(
    model: Any,
    dataset: Any,
    layer: Any = None,
    *,
    batch_size: int = 64,
    out: str | os.PathLike[str] | None = None,
    pool: str = "avg",
    num_workers: int = 0,
    progress: bool | None = None,
    meta: dict[str, Any] | None = None,
    engine: str = "local",
    shard_rows: int | None = None,
    redo: Sequence[int] | str | None = None,
    **ray_options: Any,
) -> FeatureStore:
    """Features of every item of ``dataset`` at ``layer``, streamed batch by batch.

    ``dataset``: a torch ``Dataset`` (items ``(picture or tensor, label)``, bare pictures or
    tensors), a folder path, a list of image files or ``"fashion-mnist[:train|:test]"``.
    Pictures go through the model's preprocessing when ``model`` is a :class:`LoadedModel`.
    ``layer``: a module or dotted name (default: the last 4-D feature map). ``pool``:
    ``"avg"`` (global average, default), ``"max"`` or ``"flatten"``.

    ``out``: a folder to persist the store in, as shards of ``shard_rows`` rows (default:
    about 32 MB each) with checksums. Extracting into an existing store resumes it: the
    shards it lists are verified and kept, the others computed. A store of another model,
    layer, pooling or dataset (compared by content) is refused, and so is a second writer.
    ``redo``: shard numbers (or ``"all"``) to compute again, as a damage error advises.
    ``meta``: extra JSON-able facts kept in the manifest.

    ``engine="ray"`` computes the shards on a Ray cluster (``pip install 'cnnlens[ray]'``)
    with the same results (``num_workers``: DataLoader processes inside each actor);
    ``ray_options`` (``address``, ``workers``, ``num_cpus``, ``num_gpus``, ``model_spec``)
    are described in :class:`cnnlens.dataset._ray.RayOptions` and docs/scale.md.
    """
    check_pool(pool)
    check_engine(engine, ray_options)
    data = as_dataset(dataset)
    total = len(data)
    preprocessing = getattr(model, "preprocessing", None)
    info = model_info(model, layer, probe_input(data, preprocessing))
    fields = identity(info, pool, total)
    if shard_rows is None:
        shard_rows = default_shard_rows(fields["dim"], batch_size)
    elif shard_rows < 1:
        raise InputError(f"shard_rows must be at least 1, got {shard_rows}")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        **fields,
        "count": 0,
        "output_shape": list(info.output_shape),
        "dataset": _dataset_spec(data),
        "dataset_id": content_id(data),
        "classes": _classes(data),
        "meta": meta or {},
        "shard_rows": shard_rows,
        "shards": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def produce(plan: ShardPlan, tick: Callable[[int], None]) -> ShardResults:
        if engine == "ray":
            from ._ray import ray_shards

            return ray_shards(
                model, data, info, pool, batch_size, plan, tick, num_workers, **ray_options
            )
        return local_shards(info, data, pool, batch_size, num_workers, plan, tick)

    if out is None:
        return _in_memory(manifest, data, produce, progress)
    folder = Path(out)
    if not (folder / shards.MANIFEST).is_file():
        shards.create_folder(folder, manifest, _dataset_sources(data))
    with shards.writer_lock(folder):
        stored = _resumable(folder, info, pool, total, manifest["dataset_id"], redo)
        done = {int(e["shard"]) for e in stored["shards"]}
        count = shards.shard_total(total, int(stored["shard_rows"]))
        pending = [i for i in range(count) if i not in done]
        plan = ShardPlan(int(stored["shard_rows"]), total, pending)
        with _bar(total, int(stored["count"]), progress) as bar:
            for index, features, labels in plan.check(produce(plan, bar.advance)):
                start, _ = plan.range(index)
                entry = shards.write_shard(folder, index, start, features, labels)
                stored["shards"].append(entry)
                shards.write_manifest(folder, stored)
        return FeatureStore._load(folder, stored)


class ShardPlan:
    """Which shards to compute: shard ``i`` is rows ``[i * rows, min((i + 1) * rows,
    total))``."""

    def __init__(self, rows: int, total: int, pending: list[int]) -> None:
        count = shards.shard_total(total, rows)
        if any(not 0 <= index < count for index in pending):
            raise ValueError(f"shards {pending} are not all among the {count} of {total} rows")
        self.rows = rows
        self.total = total
        self.pending = pending

    def range(self, index: int) -> tuple[int, int]:
        return shards.shard_range(index, self.rows, self.total)

    def check(self, results: ShardResults) -> ShardResults:
        """``results``, each checked to be a pending shard of the right size, once; and
        then that none is missing."""
        left = set(self.pending)
        for index, features, labels in results:
            start, stop = self.range(index)
            if index not in left or len(features) != stop - start or len(labels) != stop - start:
                raise RuntimeError(f"the engine returned shard {index} twice or of a wrong size")
            left.discard(index)
            yield index, features, labels
        if left:
            raise RuntimeError(f"the engine did not return shard(s) {sorted(left)}")


def _resumable(
    folder: Path,
    info: ModelInfo,
    pool: str,
    total: int,
    dataset_id: str,
    redo: Sequence[int] | str | None,
) -> dict[str, Any]:
    """The manifest of the store at ``folder``, checked to be this extraction's, with the
    ``redo`` shards dropped and every other listed shard verified (held under the lock)."""
    manifest = shards.read_manifest(folder)
    # Whose store this is comes first: nothing is removed from another extraction's store.
    store = FeatureStore(manifest, np.empty((0, 0), np.float32), np.empty(0, np.int64), path=folder)
    store._check_identity(info, pool, total)
    store._check_dataset_id(dataset_id)
    if redo == "all":
        for entry in manifest.get("shards") or []:
            if isinstance(entry, dict) and isinstance(entry.get("shard"), int):
                shards.remove_shard(folder, entry["shard"])
        manifest["shards"] = []
        manifest["count"] = 0
    shards.check_manifest(folder, manifest)
    if redo is not None and redo != "all":
        if isinstance(redo, str):
            raise InputError(f"redo must be shard numbers or 'all', got {redo!r}")
        count = shards.shard_total(total, int(manifest["shard_rows"]))
        bad = [s for s in redo if not 0 <= int(s) < count]
        if bad:
            raise InputError(f"redo: shard(s) {bad} do not exist (the store has 0-{count - 1})")
        dropped = {int(s) for s in redo}
        for index in dropped:
            shards.remove_shard(folder, index)
        manifest["shards"] = [e for e in manifest["shards"] if int(e["shard"]) not in dropped]
    shards.write_manifest(folder, manifest)
    damage = shards.damaged_shards(folder, manifest)
    if damage:
        raise InputError(shards.damage_message(folder, damage))
    shards.read_sources(folder, manifest)
    return manifest


def _in_memory(
    manifest: dict[str, Any],
    data: Any,
    produce: Callable[[ShardPlan, Callable[[int], None]], ShardResults],
    progress: bool | None,
) -> FeatureStore:
    total, dim = int(manifest["total"]), int(manifest["dim"])
    features = np.zeros((total, dim), dtype=np.float32)
    labels = np.full((total,), -1, dtype=np.int64)
    rows_per_shard = int(manifest["shard_rows"])
    plan = ShardPlan(rows_per_shard, total, list(range(shards.shard_total(total, rows_per_shard))))
    with _bar(total, 0, progress) as bar:
        for index, rows, row_labels in plan.check(produce(plan, bar.advance)):
            start, stop = plan.range(index)
            features[start:stop] = rows
            labels[start:stop] = row_labels
    manifest["count"] = total
    return FeatureStore(manifest, features, labels, sources=_dataset_sources(data))


def _bar(total: int, initial: int, progress: bool | None) -> Any:
    return progress_bar(total, "features", enabled=progress, unit="img", initial=initial)


def local_shards(
    info: ModelInfo,
    data: Any,
    pool: str,
    batch_size: int,
    num_workers: int,
    plan: ShardPlan,
    tick: Callable[[int], None],
) -> ShardResults:
    """The pending shards computed in this process, in order, through one ``DataLoader``
    (its workers live for the whole job); each shard is batched from its own start."""
    dim = int(identity(info, pool, plan.total)["dim"])
    device = _device_of(info)
    ranges = [plan.range(index) for index in plan.pending]
    groups = range_batches(ranges, batch_size)
    position = 0  # which pending shard is being filled
    features = np.empty((0, dim), dtype=np.float32)
    labels = np.empty(0, dtype=np.int64)
    filled = 0
    with LayerTap(info.module, info.layer, info.calls) as tap:
        for inputs, batch_labels, indices in grouped_batches(
            data, groups, preprocessing=info.preprocessing, num_workers=num_workers
        ):
            start, stop = ranges[position]
            if filled == 0:
                features = np.empty((stop - start, dim), dtype=np.float32)
                labels = np.empty((stop - start,), dtype=np.int64)
            rows = pool_features(tap(inputs.to(device)), pool)
            if rows.shape[1] != dim:
                raise InputError(
                    f"item {int(indices[0])} gives {rows.shape[1]} features, not {dim}"
                )
            first = int(indices[0]) - start
            assert first == filled, "batches arrive in order"
            features[first : first + len(indices)] = rows.float().cpu().numpy()
            labels[first : first + len(indices)] = batch_labels.numpy()
            filled += len(indices)
            tick(len(indices))
            if filled == stop - start:
                yield plan.pending[position], features, labels
                position += 1
                filled = 0


def load_store(store: FeatureStore | str | os.PathLike[str]) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else FeatureStore.open(store)


def subset_rows(store: FeatureStore, rows: Sequence[int]) -> np.ndarray:
    return np.asarray(store.features[np.asarray(rows, dtype=np.int64)])
