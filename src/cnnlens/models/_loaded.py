"""LoadedModel: a module together with what is needed to feed it images and read its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

__all__ = ["LoadedModel", "Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into the model's input: resize the short side, centre-crop,
    normalize. ``resize`` is the short side before cropping to ``crop`` (H, W)."""

    crop: tuple[int, int] = (224, 224)
    resize: int = 256
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    grayscale: bool = False

    def crop_image(self, image: Image.Image) -> Image.Image:
        """The exact crop the model sees, as an RGB picture."""
        image = image.convert("RGB")
        image = TF.resize(image, self.resize, interpolation=self.interpolation)
        out = TF.center_crop(image, list(self.crop))
        assert isinstance(out, Image.Image)
        return out

    def __call__(self, image: Image.Image) -> Tensor:
        cropped = self.crop_image(image)
        if self.grayscale:
            cropped = cropped.convert("L")
        tensor = TF.to_tensor(cropped)
        tensor = TF.normalize(
            tensor, list(self.mean[: tensor.shape[0]]), list(self.std[: tensor.shape[0]])
        )
        return tensor.unsqueeze(0)

    def invert(self, tensor: Tensor) -> Tensor:
        """Undo the normalization: (B, C, H, W) or (C, H, W) back to [0, 1] pixel values."""
        c = tensor.shape[-3]
        mean = torch.tensor(self.mean[:c], dtype=tensor.dtype, device=tensor.device).view(c, 1, 1)
        std = torch.tensor(self.std[:c], dtype=tensor.dtype, device=tensor.device).view(c, 1, 1)
        return (tensor * std + mean).clamp(0.0, 1.0)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for cnnlens: the module in eval mode, its class names and its input
    pipeline. Every API function accepts it wherever it accepts a plain module."""

    module: nn.Module
    name: str
    labels: list[str]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.crop

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def preprocess(self, image: Image.Image | Sequence[Image.Image]) -> Tensor:
        """Image(s) to the model's input tensor (B, C, H, W), on the model's device."""
        images = [image] if isinstance(image, Image.Image) else list(image)
        return torch.cat([self.preprocessing(im) for im in images]).to(self.device)

    def deprocess(self, tensor: Tensor) -> Image.Image:
        """A preprocessed tensor (1, C, H, W) or (C, H, W) back to the picture the model saw."""
        if tensor.dim() == 4:
            tensor = tensor[0]
        pixels = self.preprocessing.invert(tensor.detach().float().cpu())
        if pixels.shape[0] == 1:
            pixels = pixels.expand(3, -1, -1)
        # Rounded, not truncated: the 8-bit picture that was preprocessed comes back exactly.
        return TF.to_pil_image((pixels * 255.0).round().to(torch.uint8))

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``model(x)`` is ``model.module(x)``: the raw outputs (logits)."""
        return self.module(*args, **kwargs)

    def to(self, *args: Any, **kwargs: Any) -> LoadedModel:
        """Move or cast the module in place, as :meth:`torch.nn.Module.to` (a device such
        as ``"cuda"``, a dtype, or both); returns this model. :meth:`preprocess` follows the
        module's device. An unavailable device raises :class:`~cnnlens.InputError`."""
        from ._load import _device

        device = kwargs.get("device", args[0] if args else None)
        if isinstance(device, (str, torch.device)):
            _device(device)  # a clear error before torch's
        self.module.to(*args, **kwargs)
        return self

    def eval(self) -> LoadedModel:
        """Put the module in eval mode (it is loaded in eval mode; this undoes a
        ``model.module.train()``); returns this model."""
        self.module.eval()
        return self
