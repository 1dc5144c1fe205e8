"""Turning dataset items into model inputs, and running a model up to one layer.

Items may be ``(image, label)`` pairs, bare pictures or tensors, or dicts with an
``"image"`` and a ``"label"``. Pictures go through the model's preprocessing when the model
is a :class:`LoadedModel`, else ``to_tensor`` (values in [0, 1]); tensors are used as they
are. The forward pass stops as soon as the chosen layer has produced the output we want.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import functional as TF

from .._guard import guard, require_eager, unwrap
from .._modules import layer_name, resolve_layer
from .._trace import default_feature_layer, trace_calls
from ..errors import InputError
from ..models import LoadedModel, Preprocessing

__all__ = [
    "POOLS",
    "Collate",
    "LayerTap",
    "ModelInfo",
    "as_dataset",
    "batches",
    "fingerprint",
    "grouped_batches",
    "pool_features",
    "range_batches",
    "to_input",
]

POOLS = ("avg", "max", "flatten")


def to_input(image: Any, preprocessing: Preprocessing | None) -> Tensor:
    """One picture or tensor to a (C, H, W) float tensor."""
    if isinstance(image, Image.Image):
        if preprocessing is not None:
            return preprocessing(image)[0]
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return TF.to_tensor(image)
    if isinstance(image, np.ndarray):
        array = torch.from_numpy(np.ascontiguousarray(image))
        tensor = array.float().div(255.0) if array.dtype == torch.uint8 else array.float()
        if tensor.dim() == 3 and tensor.shape[-1] in (1, 3) and tensor.shape[0] not in (1, 3):
            tensor = tensor.permute(2, 0, 1)
        image = tensor
    if isinstance(image, Tensor):
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3:
            raise InputError(
                f"dataset items must be pictures or (C, H, W) tensors, got shape {tuple(image.shape)}"
            )
        return image if image.is_floating_point() else image.float()
    raise InputError(f"cannot use a dataset item of type {type(image).__name__} as an image")


def _label(value: Any) -> int:
    if isinstance(value, bool):
        return -1
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return -1


def split_item(item: Any) -> tuple[Any, int]:
    """``(image, label)`` of a dataset item (label -1 when it has none)."""
    if isinstance(item, tuple | list):
        if not item:
            raise InputError("a dataset item is an empty sequence")
        return item[0], (_label(item[1]) if len(item) > 1 else -1)
    if isinstance(item, dict):
        image = item.get("image", item.get("pixel_values"))
        if image is None:
            raise InputError("a dataset item is a dict without an 'image' key")
        return image, _label(item.get("label", -1))
    return item, -1


class _Indexed(Dataset[tuple[int, Any]]):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


@dataclass(frozen=True)
class Collate:
    """DataLoader ``collate_fn``: a list of ``(index, item)`` to (inputs, labels, indices)."""

    preprocessing: Preprocessing | None

    def __call__(self, batch: Sequence[tuple[int, Any]]) -> tuple[Tensor, Tensor, Tensor]:
        images: list[Tensor] = []
        labels: list[int] = []
        for _, item in batch:
            # Fast path: (float tensor (C, H, W), int or integer 0-d tensor) items.
            if type(item) is tuple and len(item) == 2 and type(item[0]) is Tensor:
                image, label = item
                if image.dim() == 3 and image.is_floating_point():
                    images.append(image)
                    labels.append(label if type(label) is int else _label(label))
                    continue
            image, label = split_item(item)
            images.append(to_input(image, self.preprocessing))
            labels.append(label)
        shape = images[0].shape
        if any(t.shape != shape for t in images):
            shapes = sorted({tuple(t.shape) for t in images})
            raise InputError(
                f"dataset items have different shapes {shapes[:3]}; use a LoadedModel "
                "(its preprocessing resizes pictures) or a dataset of equal-sized tensors"
            )
        return (
            torch.stack(images),
            torch.tensor(labels, dtype=torch.int64),
            torch.tensor([i for i, _ in batch], dtype=torch.int64),
        )


def as_dataset(dataset: Any) -> Any:
    """A spec (folder path, ``fashion-mnist[:split]``) opened as a source, a list of image
    file paths as :class:`ImageFiles`; a dataset as is."""
    if isinstance(dataset, str | os.PathLike):
        from ._sources import open_dataset

        return open_dataset(dataset)
    if (
        isinstance(dataset, list | tuple)
        and dataset
        and all(isinstance(item, str | os.PathLike) for item in dataset)
    ):
        from ._sources import ImageFiles

        return ImageFiles(dataset)
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise InputError(
            f"dataset must be a folder, 'fashion-mnist' or a torch Dataset with a length, "
            f"got {type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise InputError("the dataset is empty")
    return dataset


def batches(
    dataset: Any,
    indices: Iterable[int],
    *,
    preprocessing: Preprocessing | None,
    batch_size: int,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(inputs, labels, indices) batches of ``dataset`` items in the order of ``indices``."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    order = list(indices)
    groups = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    yield from grouped_batches(
        dataset, groups, preprocessing=preprocessing, num_workers=num_workers
    )


def range_batches(ranges: Iterable[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches of consecutive indices, each range cut from its own start: every engine
    that processes a range batches it the same way (and so computes the same bits)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    return [
        list(range(first, min(first + batch_size, stop)))
        for start, stop in ranges
        for first in range(start, stop, batch_size)
    ]


def grouped_batches(
    dataset: Any,
    groups: Sequence[list[int]],
    *,
    preprocessing: Preprocessing | None,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(inputs, labels, indices) of ``dataset`` items, one batch per list of indices."""
    if num_workers < 0:
        raise InputError(f"num_workers must be 0 or more, got {num_workers}")
    tensors = _tensor_batches(dataset)
    if tensors is not None:
        # A TensorDataset of (N, C, H, W) inputs: whole batches by slicing, no per-item work.
        x, y = tensors
        for rows in groups:
            ids = torch.tensor(rows, dtype=torch.int64)
            contiguous = rows[-1] - rows[0] == len(rows) - 1 and rows == sorted(rows)
            take: slice | Tensor = slice(rows[0], rows[-1] + 1) if contiguous else ids
            labels = y[take] if y is not None else torch.full((len(rows),), -1)
            yield x[take], labels.to(torch.int64), ids
        return
    loader = DataLoader(
        _Indexed(dataset),
        batch_sampler=groups,
        num_workers=num_workers,
        collate_fn=Collate(preprocessing),
    )
    yield from loader


def _tensor_batches(dataset: Any) -> tuple[Tensor, Tensor | None] | None:
    """(inputs, labels or None) of a ``TensorDataset`` whose items are float (C, H, W)
    inputs with optional integer labels; ``None`` for any other dataset."""
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) not in (1, 2):
        return None
    x = dataset.tensors[0]
    if x.dim() != 4 or not x.is_floating_point():
        return None
    if len(dataset.tensors) == 1:
        return x, None
    y = dataset.tensors[1]
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        return None
    return x, y


class _StopForwardError(Exception):
    """Raised from the tap's hook to end the forward pass once the layer has run."""


class LayerTap:
    """Run ``module`` forward and return ``layer``'s output at its ``calls``-th call (the last
    call of a forward pass), skipping the rest of the network. The hook lives while the
    context is open and is removed in ``finally``; ``module`` runs in eval and inference mode.
    """

    def __init__(self, module: nn.Module, layer: nn.Module, calls: int) -> None:
        self.module = module
        self.layer = layer
        self.calls = calls
        self._seen = 0
        self._output: Tensor | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._eval = guard(module, needs="feature extraction")

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self._seen += 1
        if self._seen == self.calls:
            if not isinstance(output, Tensor):
                raise InputError(f"the layer's output is a {type(output).__name__}, not a tensor")
            self._output = output
            raise _StopForwardError

    def __enter__(self) -> LayerTap:
        self._eval.__enter__()
        try:
            self._handle = self.layer.register_forward_hook(self._hook)
        except BaseException:
            self._eval.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
        finally:
            self._eval.__exit__(None, None, None)

    def __call__(self, inputs: Tensor) -> Tensor:
        self._seen = 0
        self._output = None
        with torch.inference_mode(), contextlib.suppress(_StopForwardError):
            self.module(inputs)
        out, self._output = self._output, None
        if out is None:
            raise InputError(f"layer {type(self.layer).__name__} did not run in the forward pass")
        return out


def pool_features(output: Tensor, pool: str) -> Tensor:
    """(B, C, h, w) layer output to (B, D) features: global average (``"avg"``), global max
    (``"max"``) or all values (``"flatten"``); a (B, D) output is used as is."""
    if output.dim() == 2:
        return output
    if pool == "avg" and output.dim() > 2:
        return output.flatten(2).mean(dim=2)
    if pool == "max" and output.dim() > 2:
        return output.flatten(2).amax(dim=2)
    return output.flatten(1)


def check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")


def fingerprint(module: nn.Module) -> str:
    """A short hash identifying the weights: every state entry's name, shape and sums, plus
    the raw bytes of a few tensors spread over the model."""
    digest = hashlib.sha256()
    state = list(module.state_dict().items())
    with torch.no_grad():
        for name, tensor in state:
            t = tensor.detach()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            if t.numel():
                values = t.double().cpu()
                digest.update(np.array([values.sum().item(), values.abs().sum().item()]).tobytes())
        picks = {0, len(state) // 3, (2 * len(state)) // 3, len(state) - 1} if state else set()
        for i in sorted(picks):
            digest.update(state[i][1].detach().cpu().contiguous().numpy().tobytes()[: 1 << 20])
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a feature extractor: which model, which layer, how it is pooled."""

    module: nn.Module
    layer: nn.Module
    name: str
    layer_name: str
    preprocessing: Preprocessing | None
    calls: int
    output_shape: tuple[int, ...]
    input_shape: tuple[int, ...]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.module)


def model_info(model: Any, layer: Any, probe: Tensor) -> ModelInfo:
    """Resolve ``model`` and ``layer`` (default: the last 4-D feature map) and run ``probe``
    (1, C, H, W) once to learn how often the layer runs and its output shape."""
    module = unwrap(model)
    require_eager(module, "feature extraction")
    preprocessing = model.preprocessing if isinstance(model, LoadedModel) else None
    device = _device(module)
    probe = probe.to(device)
    target = default_feature_layer(module, probe) if layer is None else resolve_layer(module, layer)
    calls = [c for c in trace_calls(module, probe) if c.module is target]
    if not calls:
        raise InputError(f"layer {layer_name(module, target)!r} did not run in the forward pass")
    shape = calls[-1].output_shape
    if shape is None:
        raise InputError(f"layer {layer_name(module, target)!r} does not output a tensor")
    name = model.name if isinstance(model, LoadedModel) else type(module).__name__
    return ModelInfo(
        module=module,
        layer=target,
        name=name,
        layer_name=layer_name(module, target),
        preprocessing=preprocessing,
        calls=len(calls),
        output_shape=tuple(shape[1:]),
        input_shape=tuple(probe.shape[1:]),
    )


def _device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def probe_input(dataset: Any, preprocessing: Preprocessing | None) -> Tensor:
    """The first item of ``dataset`` as a (1, C, H, W) input."""
    inputs, _, _ = Collate(preprocessing)([(0, dataset[0])])
    return inputs


def as_queries(images: Any, preprocessing: Preprocessing | None) -> tuple[Tensor, bool]:
    """Query picture(s) or tensor(s) to inputs (Q, C, H, W); the flag says a single query."""
    if isinstance(images, Image.Image):
        return to_input(images, preprocessing).unsqueeze(0), True
    if isinstance(images, Tensor | np.ndarray):
        tensor = torch.as_tensor(images)
        if tensor.dim() == 4:
            return tensor.float(), False
        return to_input(images, preprocessing).unsqueeze(0), True
    if isinstance(images, Sequence) and images:
        return torch.stack([to_input(im, preprocessing) for im in images]), False
    raise InputError(
        f"expected a picture, a tensor or a list of pictures, got {type(images).__name__}"
    )
