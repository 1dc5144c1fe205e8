"""Top-k class predictions of a loaded model for one picture or input tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from .._guard import guard
from ..errors import InputError
from ._loaded import LoadedModel

__all__ = ["Prediction", "predict"]


@dataclass(frozen=True)
class Prediction:
    """One of the top classes: ``rank`` from 1, softmax ``probability`` over all classes."""

    rank: int
    index: int
    label: str
    probability: float
    logit: float


def predict(model: LoadedModel, image: Image.Image | Tensor, top: int = 5) -> list[Prediction]:
    """The ``top`` most probable classes for ``image`` (a picture, preprocessed here, or an
    already preprocessed tensor (1, C, H, W)), best first. The model is run in eval mode
    without gradients and left as it was."""
    if top < 1:
        raise InputError(f"top must be at least 1, got {top}")
    if isinstance(image, Image.Image):
        inputs = model.preprocess(image)
    else:
        inputs = image
        if inputs.dim() == 3:
            inputs = inputs.unsqueeze(0)
        if inputs.dim() != 4 or inputs.shape[0] != 1:
            raise InputError(
                f"predict takes one picture or one input tensor (1, C, H, W), "
                f"got shape {tuple(image.shape)}"
            )
        inputs = inputs.to(model.device)
    with torch.no_grad(), guard(model) as module:
        output = module(inputs)
    if not isinstance(output, Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InputError(f"{model.name} does not output class scores (B, classes): got {shape}")
    logits = output[0].float()
    probabilities = logits.softmax(0)
    k = min(top, logits.numel())
    values, indices = probabilities.topk(k)
    return [
        Prediction(
            rank=rank,
            index=int(index),
            label=model.label(int(index)),
            probability=float(value),
            logit=float(logits[index]),
        )
        for rank, (value, index) in enumerate(zip(values, indices, strict=True), start=1)
    ]
