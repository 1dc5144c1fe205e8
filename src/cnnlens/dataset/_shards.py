"""The feature store's on-disk layout: shards with checksums, a manifest that lists the
completed ones, one writer at a time, and atomic creation.

::

    STORE/
      manifest.json            identity, ``shard_rows`` and every completed shard with the
                               size and SHA-256 of its two files
      lock                     held (``flock``) by the one process writing the store
      shards/000003.npy        float32 (rows, dim): features of rows [3 * shard_rows, ...)
      shards/000003.rows.npy   int64 (rows, 2): each row's id and label
      sources.json             item paths, for image folders (its SHA-256 is in the manifest)

Shard ``i`` holds rows ``[i * shard_rows, min((i + 1) * shard_rows, total))``. A shard's
files are written to temporary names, synced and renamed, and only then is the shard added
to the manifest (itself replaced atomically), so a shard listed in the manifest is whole
and a shard that is not listed is recomputed. Nothing here trusts the manifest's word:
:func:`check_manifest` rejects impossible values and :func:`damaged_shards` compares every
listed shard with its recorded size, checksum and row ids.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from ..errors import InputError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "ShardedArray",
    "check_manifest",
    "create_folder",
    "damage_message",
    "damaged_shards",
    "read_manifest",
    "read_shard",
    "shard_range",
    "shard_total",
    "write_manifest",
    "write_shard",
    "writer_lock",
]

FORMAT = "cnnlens.feature-store"
VERSION = 2
MANIFEST = "manifest.json"
SOURCES = "sources.json"
LOCK = "lock"
SHARDS = "shards"
_CHUNK = 1 << 24  # bytes hashed per read


def shard_total(total: int, shard_rows: int) -> int:
    """How many shards cover ``total`` rows."""
    return -(-total // shard_rows)


def shard_range(index: int, shard_rows: int, total: int) -> tuple[int, int]:
    start = index * shard_rows
    return start, min(start + shard_rows, total)


def _files(folder: Path, index: int) -> tuple[Path, Path]:
    base = folder / SHARDS / f"{index:06d}"
    return base.with_suffix(".npy"), base.with_suffix(".rows.npy")


def _sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_shard(
    folder: Path, index: int, start: int, features: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Write shard ``index`` (rows ``start`` ...) and return its manifest entry."""
    rows = len(features)
    ids = np.arange(start, start + rows, dtype=np.int64)
    table = np.stack([ids, np.asarray(labels, dtype=np.int64)], axis=1)
    feature_bytes = _npy_bytes(np.asarray(features, dtype=np.float32))
    row_bytes = _npy_bytes(table)
    feature_path, row_path = _files(folder, index)
    feature_path.parent.mkdir(exist_ok=True)
    _write_bytes(feature_path, feature_bytes)
    _write_bytes(row_path, row_bytes)
    return {
        "shard": index,
        "start": start,
        "stop": start + rows,
        "features": {"bytes": len(feature_bytes), "sha256": _sha256(feature_bytes)},
        "rows": {"bytes": len(row_bytes), "sha256": _sha256(row_bytes)},
    }


def read_shard(folder: Path, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(features memmap (rows, dim) read-only, rows table (rows, 2) int64) of a shard."""
    feature_path, row_path = _files(folder, int(entry["shard"]))
    return np.load(feature_path, mmap_mode="r"), np.load(row_path)


def remove_shard(folder: Path, index: int) -> None:
    for path in _files(folder, index):
        path.unlink(missing_ok=True)


# -- manifest ------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest as JSON, with its format and version checked (nothing else)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: not a feature store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: unreadable manifest ({exc}); the store cannot be trusted: delete "
            f"{folder} and extract again"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a cnnlens feature store manifest")
    version = manifest.get("version")
    if version == 1:
        raise InputError(
            f"{folder} is a version-1 feature store (one file, no checksums), which cannot "
            "prove its rows; rebuild it into a new folder with extract_features(..., out=NEW) "
            "or `cnnlens index DATASET ... -o NEW`"
        )
    if version != VERSION:
        raise InputError(f"{path}: store version {version!r} is not supported")
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Atomically replace the manifest; ``count`` is recomputed from the shard list."""
    manifest["shards"] = sorted(manifest["shards"], key=lambda e: int(e["shard"]))
    manifest["count"] = sum(int(e["stop"]) - int(e["start"]) for e in manifest["shards"])
    _write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def redo_hint(folder: Path, shards: Sequence[int] | str) -> str:
    which = shards if isinstance(shards, str) else ", ".join(str(s) for s in shards)
    listed = repr(shards) if isinstance(shards, str) else f"[{which}]"
    cli = shards if isinstance(shards, str) else ",".join(str(s) for s in shards)
    return (
        f"redo {'every shard' if shards == 'all' else 'shard(s) ' + which}: "
        f"extract_features(..., out={str(folder)!r}, redo={listed}) or "
        f"`cnnlens index DATASET ... -o {folder} --redo {cli}`"
    )


def check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Reject a manifest whose numbers cannot be true (edited or damaged): one line saying
    what is wrong, and that every shard must be redone since its list cannot be trusted."""

    def bad(what: str) -> InputError:
        return InputError(f"{folder / MANIFEST} is damaged: {what}; {redo_hint(folder, 'all')}")

    for key in ("total", "dim", "shard_rows"):
        if not _whole(manifest.get(key)) or manifest[key] < 1:
            raise bad(f"{key} {manifest.get(key)!r} is not a positive whole number")
    total, shard_rows = int(manifest["total"]), int(manifest["shard_rows"])
    count = manifest.get("count")
    if not _whole(count):
        raise bad(f"count {count!r} is not a whole number")
    if not 0 <= count <= total:
        raise bad(f"count {count} is not between 0 and the store's {total} rows")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise bad("it has no list of shards")
    seen: set[int] = set()
    rows = 0
    for entry in shards:
        index = entry.get("shard") if isinstance(entry, dict) else None
        if not _whole(index) or not 0 <= index < shard_total(total, shard_rows):
            raise bad(f"shard entry {entry!r} is not a shard of this store")
        if index in seen:
            raise bad(f"shard {index} is listed twice")
        seen.add(index)
        start, stop = shard_range(index, shard_rows, total)
        if entry.get("start") != start or entry.get("stop") != stop:
            raise bad(f"shard {index} says rows {entry.get('start')}-{entry.get('stop')}")
        for part in ("features", "rows"):
            record = entry.get(part)
            if not (
                isinstance(record, dict)
                and _whole(record.get("bytes"))
                and isinstance(record.get("sha256"), str)
            ):
                raise bad(f"shard {index} has no size and checksum for its {part} file")
        rows += stop - start
    if rows != count:
        raise bad(f"count {count} is not the {rows} rows of its {len(shards)} completed shards")


@dataclass(frozen=True)
class Damage:
    shard: int
    start: int
    stop: int
    reason: str


def damaged_shards(
    folder: Path, manifest: dict[str, Any], *, checksums: bool = True
) -> list[Damage]:
    """Every listed shard whose files are missing, of the wrong size, of another checksum
    (with ``checksums``), or whose row ids or shape are not the shard's."""
    dim = int(manifest["dim"])
    found = []
    for entry in manifest["shards"]:
        index, start, stop = int(entry["shard"]), int(entry["start"]), int(entry["stop"])
        reason = _shard_problem(folder, entry, dim, checksums)
        if reason is not None:
            found.append(Damage(index, start, stop, reason))
    return found


def _shard_problem(folder: Path, entry: dict[str, Any], dim: int, checksums: bool) -> str | None:
    paths = dict(zip(("features", "rows"), _files(folder, int(entry["shard"])), strict=True))
    for part, path in paths.items():
        expected = entry[part]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{part} file {path.name} is missing"
        if size != expected["bytes"]:
            cut = " (truncated)" if size < expected["bytes"] else ""
            return f"{part} file {path.name} is {size} bytes, not {expected['bytes']}{cut}"
        if checksums and file_sha256(path) != expected["sha256"]:
            return f"{part} file {path.name} does not match its checksum (changed bytes)"
    try:
        features, table = read_shard(folder, entry)
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    start, stop = int(entry["start"]), int(entry["stop"])
    if features.shape != (stop - start, dim) or features.dtype != np.float32:
        return f"features have shape {features.shape} {features.dtype}, not ({stop - start}, {dim})"
    if table.shape != (stop - start, 2) or not np.array_equal(
        table[:, 0], np.arange(start, stop, dtype=np.int64)
    ):
        return "its row ids are not the shard's rows"
    return None


def damage_message(folder: Path, damage: Sequence[Damage]) -> str:
    parts = "; ".join(f"shard {d.shard} (rows {d.start}-{d.stop - 1}): {d.reason}" for d in damage)
    return (
        f"{folder}: damaged feature store: {parts}; {redo_hint(folder, [d.shard for d in damage])}"
    )


def write_sources(folder: Path, sources: list[str]) -> str:
    data = json.dumps(sources).encode()
    _write_bytes(folder / SOURCES, data)
    return _sha256(data)


def read_sources(folder: Path, manifest: dict[str, Any]) -> list[str] | None:
    expected = manifest.get("sources_sha256")
    path = folder / SOURCES
    if expected is None:
        return None
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{folder}: {SOURCES} is missing; {redo_hint(folder, 'all')}") from None
    if _sha256(data) != expected:
        raise InputError(
            f"{folder}: {SOURCES} does not match its checksum; {redo_hint(folder, 'all')}"
        )
    sources = json.loads(data)
    return [str(s) for s in sources]


# -- one writer, atomic creation -----------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (the OS releases it if the process dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise InputError(
                f"{path.parent} is being written by another process ({holder}); wait for it "
                "to finish or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Lock an existing store against a second writer for the duration of the block."""
    with _locked(folder / LOCK):
        yield


def create_folder(folder: Path, manifest: dict[str, Any], sources: list[str] | None) -> None:
    """Make a new store at ``folder`` atomically: everything is written into a temporary
    sibling folder that is renamed into place, so an interrupted creation leaves nothing at
    ``folder`` (and its leftover is removed by the next creation)."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"{folder}: exists and is not a feature store; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.creating-", dir=folder.parent))
    try:
        with _locked(tmp / LOCK):
            (tmp / SHARDS).mkdir()
            if sources is not None:
                manifest["sources_sha256"] = write_sources(tmp, sources)
            write_manifest(tmp, manifest)
            try:
                # rename() replaces an empty folder and fails on a non-empty one.
                os.rename(tmp, folder)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise InputError(
                    f"{folder}: another process created this store at the same time; run again"
                ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_abandoned(folder: Path) -> None:
    """Remove temporary folders of creations that were interrupted (their lock is free)."""
    for leftover in folder.parent.glob(f".{folder.name}.creating-*"):
        try:
            with _locked(leftover / LOCK):
                shutil.rmtree(leftover, ignore_errors=True)
        except (InputError, OSError):
            continue  # still being created by a live process


# -- reading shards as one array -----------------------------------------------------------


class ShardedArray:
    """Read-only rows (N, D) spread over memory-mapped shards, indexed like a numpy array
    along the first axis (an int, a slice, an integer array of any shape, a boolean mask,
    optionally followed by column indices). Results are numpy arrays;
    ``np.asarray(store.features)`` reads every row into memory."""

    def __init__(self, parts: Sequence[np.ndarray], dim: int) -> None:
        self.parts = list(parts)
        self.dim = dim
        self._starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return (self._starts[-1], self.dim)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.dim * self.dtype.itemsize

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, shards={len(self.parts)})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self._rows(slice(None))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        for part in self.parts:
            yield from np.asarray(part)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self._rows(key)
        if not key:
            return self._rows(slice(None))
        first, rest = key[0], key[1:]
        if isinstance(first, int | np.integer):
            return self._rows(first)[rest]
        if isinstance(first, slice):
            return self._rows(first)[(slice(None), *rest)]
        # An index array: read each needed row once, then index as numpy would (so a
        # second index array pairs with the first instead of crossing it).
        index = np.asarray(first)
        index = np.flatnonzero(index) if index.dtype == np.bool_ else index
        needed, where = np.unique(index, return_inverse=True)
        return self._take(needed)[(where.reshape(index.shape), *rest)]

    def _rows(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, int | np.integer):
            row = int(key) + n if key < 0 else int(key)
            if not 0 <= row < n:
                raise IndexError(f"row {int(key)} out of range for {n} rows")
            part = bisect.bisect_right(self._starts, row) - 1
            return np.array(self.parts[part][row - self._starts[part]])
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self._take(np.arange(start, stop, step))
            pieces = []
            for part, (lo, hi) in enumerate(pairwise(self._starts)):
                a, b = max(start, lo), min(stop, hi)
                if a < b:
                    pieces.append(self.parts[part][a - lo : b - lo])
            if not pieces:
                return np.empty((0, self.dim), dtype=self.dtype)
            return np.concatenate(pieces) if len(pieces) > 1 else np.array(pieces[0])
        index = np.asarray(key)
        if index.dtype == np.bool_:
            if index.shape != (n,):
                raise IndexError(f"boolean index of shape {index.shape} for {n} rows")
            return self._take(np.flatnonzero(index))
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"rows must be indexed by integers, got {index.dtype}")
        return self._take(index)

    def _take(self, index: np.ndarray) -> np.ndarray:
        n = len(self)
        flat = index.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((flat.size, self.dim), dtype=self.dtype)
        which = np.searchsorted(np.asarray(self._starts[1:]), flat, side="right")
        for part in np.unique(which).tolist():
            chosen = which == part
            out[chosen] = self.parts[part][flat[chosen] - self._starts[part]]
        return out.reshape((*index.shape, self.dim))
