"""The feature store: pooled layer features of a whole dataset, on disk or in memory.

On disk a store is a folder::

    manifest.json   what made it (model name and fingerprint, layer, pooling, input shape),
                    its size, and ``count``: how many rows are complete
    features.npy    float32 (total, dim), memory-mapped
    labels.npy      int64 (total,), -1 where the item had no label
    sources.json    the item paths for an image folder (else absent: a row's source is its
                    dataset index)

Rows are written in dataset order and ``count`` is committed only after they are flushed,
so an interrupted extraction resumes at ``count`` without writing a committed row twice or
losing one. A store is only ever extended by the same model, layer and pooling.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import progress as progress_bar
from ..errors import InputError
from ._batches import (
    LayerTap,
    ModelInfo,
    as_dataset,
    as_queries,
    batches,
    check_pool,
    model_info,
    pool_features,
    probe_input,
)
from ._nearest import Searcher

__all__ = ["FeatureStore", "extract_features"]

FORMAT = "cnnlens.feature-store"
VERSION = 1
MANIFEST = "manifest.json"
FEATURES = "features.npy"
LABELS = "labels.npy"
SOURCES = "sources.json"
# Rows are committed at least this often (seconds) and at the end.
COMMIT_EVERY = 2.0
# Above this many rows nearest() uses an approximate (IVF) index unless told otherwise.
APPROXIMATE_ABOVE = 200_000

_IDENTITY_KEYS = ("model", "fingerprint", "layer", "pool", "dim", "input_shape", "total")


class FeatureStore:
    """Features (N, D) float32 of a dataset's items at one layer, with their labels.

    Made by :func:`extract_features`; reopened with :meth:`open`. ``features`` and
    ``labels`` cover the complete rows only (``count`` of ``total``). On disk the arrays are
    memory-mapped read-only views.
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        features: np.ndarray,
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
    def open(cls, path: str | os.PathLike[str]) -> FeatureStore:
        """Reopen a store folder written by :func:`extract_features` (read-only)."""
        return cls._open(Path(path), writable=False)

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

    @classmethod
    def _open(cls, folder: Path, *, writable: bool) -> FeatureStore:
        manifest = read_manifest(folder)
        try:
            if writable:
                features = np.load(folder / FEATURES, mmap_mode="r+")
                labels = np.load(folder / LABELS, mmap_mode="r+")
            else:
                features = np.load(folder / FEATURES, mmap_mode="r")
                labels = np.load(folder / LABELS, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder}: feature store arrays unreadable ({exc})") from None
        shape = (manifest["total"], manifest["dim"])
        if features.shape != shape or labels.shape != shape[:1]:
            raise InputError(f"{folder}: arrays do not match the manifest (damaged store)")
        sources = None
        if (folder / SOURCES).is_file():
            sources = json.loads((folder / SOURCES).read_text())
        return cls(manifest, features, labels, path=folder, sources=sources)

    # -- contents --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Rows complete."""
        return int(self.manifest["count"])

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
    def features(self) -> np.ndarray:
        """(count, dim) float32."""
        return self._features[: self.count]

    @property
    def labels(self) -> np.ndarray:
        """(count,) int64; -1 for unlabelled items."""
        return self._labels[: self.count]

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
        use_exact = self.count <= self.approximate_above if exact is None else exact
        key = (metric, use_exact)
        searcher = self._searchers.get(key)
        if searcher is None or searcher.rows != self.count:
            searcher = Searcher(self.features, metric, exact=use_exact)
            self._searchers[key] = searcher
        indices, distances = searcher.search(np.ascontiguousarray(matrix, dtype=np.float32), k)
        return (indices[0], distances[0]) if single else (indices, distances)

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


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: not a feature store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a cnnlens feature store manifest")
    if manifest.get("version") != VERSION:
        raise InputError(f"{path}: store version {manifest.get('version')} is not supported")
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest (write a temporary file, fsync, rename)."""
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)


def _dataset_spec(dataset: Any) -> str | None:
    spec = getattr(dataset, "spec", None)
    return spec if isinstance(spec, str) else None


def _dataset_sources(dataset: Any) -> list[str] | None:
    source = getattr(dataset, "source", None)
    if callable(source) and hasattr(dataset, "paths"):
        return [str(source(i)) for i in range(len(dataset))]
    return None


def _create(folder: Path, manifest: dict[str, Any], sources: list[str] | None) -> FeatureStore:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder}: exists and is not a feature store; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    shape = (manifest["total"], manifest["dim"])
    features = np.lib.format.open_memmap(folder / FEATURES, "w+", np.float32, shape)
    labels = np.lib.format.open_memmap(folder / LABELS, "w+", np.int64, shape[:1])
    labels[:] = -1
    features.flush()
    labels.flush()
    if sources is not None:
        (folder / SOURCES).write_text(json.dumps(sources))
    _write_manifest(folder, manifest)
    return FeatureStore(manifest, features, labels, path=folder, sources=sources)


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
) -> FeatureStore:
    """Features of every item of ``dataset`` at ``layer``, streamed batch by batch.

    ``dataset``: a torch ``Dataset`` (items ``(picture or tensor, label)``, bare pictures or
    tensors), a folder path or ``"fashion-mnist[:train|:test]"``. Pictures go through the
    model's preprocessing when ``model`` is a :class:`LoadedModel`. ``layer``: a module or
    dotted name (default: the last 4-D feature map). ``pool``: ``"avg"`` (global average,
    default), ``"max"`` or ``"flatten"``. ``out``: a folder to persist the store in
    (memory-mapped, memory stays flat); an interrupted extraction into the same folder
    resumes where it stopped; a folder holding another model's, layer's or dataset's
    features is refused. ``meta``: extra JSON-able facts kept in the manifest.
    """
    check_pool(pool)
    data = as_dataset(dataset)
    total = len(data)
    preprocessing = getattr(model, "preprocessing", None)
    info = model_info(model, layer, probe_input(data, preprocessing))
    fields = identity(info, pool, total)
    folder = Path(out) if out is not None else None

    if folder is not None and (folder / MANIFEST).is_file():
        store = FeatureStore._open(folder, writable=True)
        store._check_identity(info, pool, total)
    else:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            **fields,
            "count": 0,
            "output_shape": list(info.output_shape),
            "dataset": _dataset_spec(data),
            "classes": _classes(data),
            "meta": meta or {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if folder is not None:
            store = _create(folder, manifest, _dataset_sources(data))
        else:
            features = np.zeros((total, fields["dim"]), dtype=np.float32)
            labels = np.full((total,), -1, dtype=np.int64)
            store = FeatureStore(manifest, features, labels, sources=_dataset_sources(data))
    if store.complete:
        return store
    _fill(store, info, data, pool, batch_size, num_workers, progress)
    return FeatureStore.open(folder) if folder is not None else store


def _classes(dataset: Any) -> list[str] | None:
    from ._sources import item_labels

    names = item_labels(dataset)
    return None if names is None else list(names)


def _fill(
    store: FeatureStore,
    info: ModelInfo,
    data: Any,
    pool: str,
    batch_size: int,
    num_workers: int,
    progress: bool | None,
) -> None:
    """Compute rows ``store.count`` onwards; commit progress after each flush."""
    features, labels = store._features, store._labels
    done = store.count
    committed = done
    last_commit = time.monotonic()
    device = _device_of(info)

    def commit() -> None:
        nonlocal committed, last_commit
        if done == committed:
            return
        if store.path is not None:
            assert isinstance(features, np.memmap) and isinstance(labels, np.memmap)
            features.flush()
            labels.flush()
            store.manifest["count"] = done
            _write_manifest(store.path, store.manifest)
        else:
            store.manifest["count"] = done
        committed = done
        last_commit = time.monotonic()

    try:
        with (
            progress_bar(
                store.total, "features", enabled=progress, unit="img", initial=done
            ) as bar,
            LayerTap(info.module, info.layer, info.calls) as tap,
        ):
            for inputs, batch_labels, indices in batches(
                data,
                range(done, store.total),
                preprocessing=info.preprocessing,
                batch_size=batch_size,
                num_workers=num_workers,
            ):
                rows = pool_features(tap(inputs.to(device)), pool)
                if rows.shape[1] != store.dim:
                    raise InputError(
                        f"item {int(indices[0])} gives {rows.shape[1]} features, not {store.dim}"
                    )
                start, stop = int(indices[0]), int(indices[-1]) + 1
                assert start == done and stop - start == len(indices)
                features[start:stop] = rows.float().cpu().numpy()
                labels[start:stop] = batch_labels.numpy()
                done = stop
                bar.advance(len(indices))
                if store.path is None or time.monotonic() - last_commit >= COMMIT_EVERY:
                    commit()
    finally:
        # Rows up to ``done`` are complete even when a later item failed.
        commit()


def load_store(store: FeatureStore | str | os.PathLike[str]) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else FeatureStore.open(store)


def subset_rows(store: FeatureStore, rows: Sequence[int]) -> np.ndarray:
    return np.asarray(store.features[np.asarray(rows, dtype=np.int64)])
