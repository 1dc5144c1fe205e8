"""Data sources: Fashion-MNIST from its idx files, image folders, and any torch ``Dataset``.

Every source is a plain ``torch.utils.data.Dataset``. Items are ``(image, label)`` pairs
where ``image`` is a PIL picture (or whatever a user's dataset yields) and ``label`` an int
(``-1`` when the source has no labels). :func:`open_dataset` turns a textual spec (a folder
path or ``fashion-mnist[:split]``) into a source; sources made here remember their spec so a
feature store can reopen them.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FashionMNIST",
    "Head",
    "ImageFiles",
    "ImageFolder",
    "fashion_mnist",
    "fashion_mnist_root",
    "open_dataset",
    "open_item",
    "require_spec",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

# Where the Debian package ``dataset-fashion-mnist`` puts the files.
_FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_root() -> Path | None:
    """The folder holding Fashion-MNIST's idx files: ``$CNNLENS_FASHION_MNIST`` if set,
    else where the Debian package ``dataset-fashion-mnist`` installs them; ``None`` if absent."""
    env = os.environ.get("CNNLENS_FASHION_MNIST")
    candidates = [Path(env)] if env else [Path(d) for d in _FASHION_MNIST_DIRS]
    for directory in candidates:
        if _find_idx(directory, _FASHION_MNIST_FILES["test"][0]) is not None:
            return directory
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if len(data) < 8 or struct.unpack(">I", data[:4])[0] != magic:
        raise InputError(f"{path} is not an idx file of the expected kind")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise InputError(f"{path} is truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape).copy()  # writable, detached from the file's bytes


class FashionMNIST(Dataset[tuple[Any, int]]):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale pictures of clothing, 10 classes.

    Items are ``(PIL image in mode "L", label)``; ``transform`` (if given) is applied to the
    picture. ``images`` (N, 28, 28) uint8 and ``labels`` (N,) int64 give the raw arrays.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        split: str = "train",
        *,
        root: str | Path | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if split not in _FASHION_MNIST_FILES:
            raise InputError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        directory = Path(root) if root is not None else fashion_mnist_root()
        if directory is None:
            raise InputError(
                "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist) or set CNNLENS_FASHION_MNIST to the "
                "folder holding its idx files"
            )
        image_stem, label_stem = _FASHION_MNIST_FILES[split]
        image_path = _find_idx(directory, image_stem)
        label_path = _find_idx(directory, label_stem)
        if image_path is None or label_path is None:
            raise InputError(f"Fashion-MNIST {split} files ({image_stem}[.gz]) not in {directory}")
        self.split = split
        self.root = directory
        self.images: np.ndarray = _read_idx(image_path, 0x00000803)
        self.labels: np.ndarray = _read_idx(label_path, 0x00000801).astype(np.int64)
        if len(self.images) != len(self.labels):
            raise InputError(f"Fashion-MNIST {split}: image and label files differ in length")
        self.transform = transform

    @property
    def spec(self) -> str:
        return f"fashion-mnist:{self.split}"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index], mode="L")
        item = self.transform(image) if self.transform is not None else image
        return item, int(self.labels[index])

    def tensors(self) -> Tensor:
        """All pictures as one float tensor (N, 1, 28, 28) in [0, 1]."""
        return torch.from_numpy(self.images).float().div_(255.0).unsqueeze(1)


def fashion_mnist(
    split: str = "train",
    *,
    root: str | Path | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
) -> FashionMNIST:
    """Fashion-MNIST's ``"train"`` (60,000) or ``"test"`` (10,000) split as a ``Dataset``
    of ``(PIL image, label)``. Reads the files of the Debian package ``dataset-fashion-mnist``
    (or ``root`` / ``$CNNLENS_FASHION_MNIST``); raises :class:`InputError` when absent."""
    return FashionMNIST(split, root=root, transform=transform)


class ImageFolder(Dataset[tuple[Image.Image, int]]):
    """Pictures in a folder. With class sub-folders (``root/cat/1.jpg``) each sub-folder is a
    class (sorted names, label = position); a flat folder gives unlabelled items (label -1).
    Items are ``(RGB PIL image, label)``; ``paths`` lists the files in item order."""

    def __init__(self, root: str | Path) -> None:
        directory = Path(root)
        if not directory.is_dir():
            raise InputError(f"{root}: not a folder")
        # Paths from the resolved folder, so that ``source`` (relative to it) works for a
        # relative ``root`` too.
        self.root = directory = directory.resolve()
        subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and _images_in(p))
        if subdirs:
            self.classes: list[str] | None = [p.name for p in subdirs]
            self.paths = [f for label, d in enumerate(subdirs) for f in _images_in(d)]
            self.targets = [label for label, d in enumerate(subdirs) for _ in _images_in(d)]
        else:
            self.classes = None
            self.paths = _images_in(directory, recursive=False)
            self.targets = [-1] * len(self.paths)
        if not self.paths:
            raise InputError(f"{root}: no image files (.png, .jpg, ...) found")

    @property
    def spec(self) -> str:
        return str(self.root)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        from ..images import load_image

        return load_image(self.paths[index]), self.targets[index]

    def source(self, index: int) -> str:
        return str(self.paths[index].relative_to(self.root))


class ImageFiles(Dataset[tuple[Image.Image, int]]):
    """Pictures listed by path (``str``, ``Path`` or ``file://`` URI), in the given order;
    items are ``(RGB PIL image, -1)``."""

    classes = None

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        if not paths:
            raise InputError("the list of image files is empty")
        self.paths = [Path(_local_path(p)) for p in paths]
        self.targets = [-1] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        from ..images import load_image

        return load_image(self.paths[index]), -1

    def source(self, index: int) -> str:
        return str(self.paths[index])


def _local_path(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    if "://" in text:
        parsed = urlparse(text)
        if parsed.scheme != "file":
            raise InputError(
                f"{text}: only local files and file:// URIs are read directly; wrap other "
                "storage in a torch Dataset"
            )
        return unquote(parsed.path)
    return text


def _images_in(directory: Path, *, recursive: bool = True) -> list[Path]:
    files = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class Head(Dataset[Any]):
    """The first ``count`` items of a dataset, keeping its ``spec`` and ``classes``."""

    def __init__(self, dataset: Any, count: int) -> None:
        if count < 1:
            raise InputError(f"the item limit must be at least 1, got {count}")
        self.dataset = dataset
        self.count = min(count, len(dataset))
        self.classes = item_labels(dataset)
        spec = getattr(dataset, "spec", None)
        self.spec = spec if isinstance(spec, str) else None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.dataset[index]


def require_spec(text: str) -> str:
    """``text`` if it can name a dataset; an empty one is an :class:`InputError`
    (``Path("")`` is the current folder, which nobody means)."""
    if not text.strip():
        raise InputError("the dataset is empty: name a folder of pictures or fashion-mnist")
    return text


def open_dataset(spec: str | os.PathLike[str]) -> FashionMNIST | ImageFolder:
    """A source from its spec: ``fashion-mnist`` / ``fashion-mnist:train`` /
    ``fashion-mnist:test``, or a folder path."""
    text = require_spec(os.fspath(spec))
    lowered = text.lower()
    if lowered in ("fashion-mnist", "fashion_mnist", "fashionmnist") or lowered.startswith(
        ("fashion-mnist:", "fashion_mnist:")
    ):
        split = text.split(":", 1)[1] if ":" in text else "train"
        return fashion_mnist(split)
    if not Path(text).exists():
        raise InputError(f"dataset {text!r}: no such folder (or use fashion-mnist[:train|:test])")
    return ImageFolder(text)


def open_item(spec: str) -> tuple[Any, int] | None:
    """``DATASET@INDEX`` (e.g. ``fashion-mnist:test@17``): that item; ``None`` if ``spec`` has
    no ``@INDEX`` suffix."""
    head, sep, tail = spec.rpartition("@")
    if not sep or not tail.isdigit() or not head:
        return None
    dataset = open_dataset(head)
    index = int(tail)
    if not 0 <= index < len(dataset):
        raise InputError(f"{spec}: index out of range for {len(dataset)} items")
    return dataset[index]


def item_labels(dataset: Any) -> Sequence[str] | None:
    """Class names of a dataset when it declares them (``classes``), else ``None``."""
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, list | tuple) and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None
