"""The conversion CAM needs (Zhou et al. 2016): global average pooling and a linear layer
put on a chosen layer of a frozen backbone, and a quick way to train that head only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .._guard import guard
from .._modules import layer_name, resolve_layer
from .._progress import track
from ..errors import InputError

__all__ = ["CamModel", "cam_model"]

DatasetLike = Dataset[Any] | tuple[Tensor, Tensor]


class _StopForwardError(Exception):
    """Raised by the feature hook to end the backbone's forward pass at the layer."""


class CamModel(nn.Module):
    """``backbone`` up to ``layer``, then global average pooling and a linear layer.

    The backbone's forward pass ends at the first call of the layer (nothing after it is
    computed), so the last feature map this model computes is the layer's, and
    ``cnnlens.explain(cam_model, x, "cam")`` uses it by default. :meth:`fit` trains the head
    only; the backbone's weights are never changed.
    """

    def __init__(self, backbone: nn.Module, layer: str, channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        self.history: list[float] = []

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, inputs: Tensor) -> Tensor:
        """The layer's feature map (B, C, h, w); the backbone stops there."""
        return _layer_features(self.backbone, self.layer, inputs)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.pool(self.features(inputs)).flatten(1))

    @torch.inference_mode()
    def pooled_features(
        self, dataset: DatasetLike, *, batch_size: int = 64, progress: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Spatial means of the layer's feature map over ``dataset`` (N, C) and the labels
        (N,), with the backbone in eval mode."""
        loader = DataLoader(_as_dataset(dataset), batch_size=batch_size, shuffle=False)
        device = self.head.weight.device
        pooled: list[Tensor] = []
        labels: list[Tensor] = []
        with guard(self.backbone, needs="cam_model"):
            for batch in track(loader, "features", enabled=None if progress else False):
                if not isinstance(batch, Sequence) or len(batch) != 2:
                    raise InputError("the dataset must give (image tensor, class index) pairs")
                images, targets = batch
                pooled.append(self.features(images.to(device)).mean(dim=(2, 3)).float().cpu())
                labels.append(torch.as_tensor(targets, dtype=torch.long).cpu())
        if not pooled:
            raise InputError("the dataset is empty")
        return torch.cat(pooled), torch.cat(labels)

    def fit(
        self,
        dataset: DatasetLike,
        *,
        epochs: int = 100,
        lr: float = 0.01,
        batch_size: int = 64,
        seed: int = 0,
        weight_decay: float = 0.0,
        progress: bool = True,
    ) -> CamModel:
        """Train the head (cross-entropy, Adam) on ``dataset`` — a torch ``Dataset`` of
        (image tensor, class index) pairs or a tuple (images (N, C, H, W), labels (N,)).
        Pooled features are computed once, then ``epochs`` passes are made over them.
        The head is re-initialized from ``seed``; returns ``self`` (``history`` holds the
        mean loss of each epoch)."""
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise InputError("epochs and batch_size must be at least 1 and lr positive")
        features, labels = self.pooled_features(dataset, batch_size=batch_size, progress=progress)
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise InputError(
                f"labels range over {int(labels.min())}..{int(labels.max())} but the head has "
                f"{self.num_classes} classes"
            )
        generator = torch.Generator().manual_seed(seed)
        weight = torch.empty_like(self.head.weight, device="cpu", dtype=torch.float32)
        bound = 1.0 / float(features.shape[1]) ** 0.5
        weight.uniform_(-bound, bound, generator=generator)
        w = weight.requires_grad_(True)
        b = torch.zeros(self.num_classes, requires_grad=True)
        optimizer = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
        self.history = []
        with torch.enable_grad():
            for _ in track(
                range(epochs), "head", enabled=None if progress else False, unit="epoch"
            ):
                order = torch.randperm(features.shape[0], generator=generator)
                total = 0.0
                for start in range(0, features.shape[0], batch_size):
                    rows = order[start : start + batch_size]
                    loss = F.cross_entropy(F.linear(features[rows], w, b), labels[rows])
                    optimizer.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    optimizer.step()
                    total += float(loss.detach()) * rows.numel()
                self.history.append(total / features.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(w.detach())
            self.head.bias.copy_(b.detach())
        return self

    @torch.inference_mode()
    def accuracy(self, dataset: DatasetLike, *, batch_size: int = 64) -> float:
        """Fraction of ``dataset`` whose top class is the label."""
        features, labels = self.pooled_features(dataset, batch_size=batch_size, progress=False)
        weight, bias = self.head.weight.detach().cpu(), self.head.bias.detach().cpu()
        predicted = F.linear(features, weight, bias).argmax(dim=1)
        return float((predicted == labels).float().mean())

    def save_head(self, path: str | Path, **extra: Any) -> None:
        """Write the head (and ``extra`` metadata) to ``path`` with ``torch.save``."""
        torch.save({"layer": self.layer, "head": self.head.state_dict(), **extra}, Path(path))

    def load_head(self, path: str | Path) -> CamModel:
        """Read a head written by :meth:`save_head`; returns ``self``."""
        try:
            saved = torch.load(Path(path), map_location=self.head.weight.device, weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise InputError(f"cannot read a CAM head from {path}: {exc}") from None
        if not isinstance(saved, dict) or "head" not in saved:
            raise InputError(f"{path} is not a CAM head written by cnnlens cam-fit")
        if saved.get("layer") != self.layer:
            raise InputError(
                f"{path} is a head for layer {saved.get('layer')!r}, not {self.layer!r}"
            )
        try:
            self.head.load_state_dict(saved["head"])
        except RuntimeError as exc:
            raise InputError(f"{path} does not fit this head: {exc}") from None
        return self


def _layer_features(backbone: nn.Module, name: str, inputs: Tensor) -> Tensor:
    """Run ``backbone`` until the first call of its submodule ``name``; that call's output."""
    layer = backbone.get_submodule(name)
    found: list[Tensor] = []

    def stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
        found.append(output)
        raise _StopForwardError

    handle = layer.register_forward_hook(stop)
    try:
        backbone(inputs)
    except _StopForwardError:
        pass
    finally:
        handle.remove()
    if not found:
        raise InputError(f"layer {name!r} was not called by the backbone")
    features = found[0]
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise InputError(f"layer {name!r} gives {shape}, not a feature map (B, C, h, w)")
    return features


def _as_dataset(dataset: DatasetLike) -> Dataset[Any]:
    if isinstance(dataset, tuple):
        if len(dataset) != 2 or not all(isinstance(t, Tensor) for t in dataset):
            raise InputError("a dataset tuple must be (images (N, C, H, W), labels (N,))")
        images, labels = dataset
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise InputError(
                f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match"
            )
        return TensorDataset(images, labels)
    if not isinstance(dataset, Dataset):
        raise InputError(
            f"expected a torch Dataset or (images, labels), got {type(dataset).__name__}"
        )
    return dataset


def _probe_channels(module: nn.Module) -> int:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def cam_model(
    model: Any,
    layer: nn.Module | str,
    num_classes: int,
    *,
    input_size: tuple[int, int] | None = None,
) -> CamModel:
    """A :class:`CamModel`: ``model``'s layer ``layer``, global average pooling and a new
    linear layer with ``num_classes`` outputs (train it with :meth:`CamModel.fit`).

    The number of channels is read from one dry forward pass of a blank image of
    ``input_size`` (default: the ``LoadedModel``'s input size, else 224×224).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    if input_size is None:
        size = getattr(model, "input_size", None)
        input_size = tuple(size) if isinstance(size, tuple) else (224, 224)  # type: ignore[assignment]
    assert input_size is not None
    with torch.inference_mode(), guard(model, needs="cam_model") as module:
        name = layer_name(module, resolve_layer(module, layer))
        parameter = next(module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        probe = torch.zeros(1, _probe_channels(module), *input_size, device=device)
        channels = int(_layer_features(module, name, probe).shape[1])
    converted = CamModel(module, name, channels, num_classes)
    converted.head.to(device)
    return converted
