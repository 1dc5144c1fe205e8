"""A dataset's identity by content, so that a store is never resumed or searched with the
rows of another dataset of the same size.

Cheap by design (it runs on every resume):

- image folders and file lists: each file's path (relative to the folder), size and
  modification time, and the labels; no pixel is read;
- Fashion-MNIST and ``TensorDataset``: every byte of the arrays (they are in memory, and
  hashing runs at about 1.8 GB/s); a ``TensorDataset`` over 512 MB is sampled as below;
- any other ``Dataset``: its length and 32 items spread evenly over it (first and last
  included), each as the tensor and label it gives. Two datasets that differ only in
  items between the samples get the same id: the one case this check cannot see.

A :class:`~cnnlens.dataset._sources.Head` (``--limit N``) is its dataset's first N items.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["content_id"]

SAMPLES = 32
_FULL_BYTES = 512 << 20


def content_id(dataset: Any) -> str:
    """``"<how>:<sha256 prefix>"``: how the id was made (``files``, ``arrays``, ``sample``)
    and a hash of the dataset's content."""
    from ._sources import FashionMNIST, Head, ImageFiles, ImageFolder

    limit = len(dataset)
    inner = dataset
    while isinstance(inner, Head):
        inner = inner.dataset
    digest = hashlib.sha256(f"{type(inner).__name__}:{limit}".encode())
    if isinstance(inner, ImageFolder | ImageFiles):
        how = "files"
        root = inner.root if isinstance(inner, ImageFolder) else None
        for path, label in zip(inner.paths[:limit], inner.targets[:limit], strict=True):
            stat = os.stat(path)
            name = os.path.relpath(path, root) if root is not None else os.fspath(path)
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
    elif isinstance(inner, FashionMNIST):
        how = "arrays"
        digest.update(inner.split.encode())
        digest.update(np.ascontiguousarray(inner.images[:limit]).data)
        digest.update(np.ascontiguousarray(inner.labels[:limit]).data)
        if inner.transform is not None:
            digest.update(repr(inner.transform).encode())
    elif (
        isinstance(inner, TensorDataset)
        and sum(t[:limit].nbytes for t in inner.tensors) <= _FULL_BYTES
    ):
        how = "arrays"
        for tensor in inner.tensors:
            _update_tensor(digest, tensor[:limit])
    else:
        how = "sample"
        _sample(digest, dataset, limit)
    return f"{how}:{digest.hexdigest()[:32]}"


def _update_tensor(digest: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
    digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")


def sample_indices(length: int) -> list[int]:
    """The items a generic dataset's content id reads."""
    return np.unique(np.linspace(0, length - 1, SAMPLES).round().astype(np.int64)).tolist()


def _sample(digest: Any, dataset: Any, limit: int) -> None:
    from ._batches import split_item, to_input

    for index in sample_indices(limit):
        image, label = split_item(dataset[int(index)])
        digest.update(f"{int(index)}:{label}".encode())
        _update_tensor(digest, to_input(image, None))
