"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError
from ..images import load_image, sample_image, sample_images
from ..models import LoadedModel, load_model

DEFAULT_MODEL = "efficientnet_lite0"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model spec (default: {DEFAULT_MODEL})"
    )
    parser.add_argument("--arch", default=None, help="architecture name for a state-dict file")
    parser.add_argument(
        "--random-weights", action="store_true", help="do not load pretrained weights"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a model file holding a pickled module (unpickling can run arbitrary code)",
    )


def open_model(args: argparse.Namespace) -> LoadedModel:
    device = str(args.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return load_model(
        args.model,
        pretrained=not args.random_weights,
        device=device,
        arch=getattr(args, "arch", None),
        trust_pickle=bool(getattr(args, "trust_pickle", False)),
    )


def open_image(spec: str) -> Image.Image:
    """An image path, or the name of a bundled sample photo (``cat``, ``coffee``, ...)."""
    if not Path(spec).exists():
        if spec in sample_images():
            return sample_image(spec)
        if not any(sep in spec for sep in "/\\."):
            raise InputError(
                f"{spec}: no such file, nor a sample image ({', '.join(sample_images())})"
            )
    return load_image(spec)


def parse_target(model: LoadedModel, text: str | None) -> int | None:
    """A class index, or a label (exact, else unique case-insensitive substring)."""
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < max(len(model.labels), 1):
            raise InputError(f"--target {index} is out of range for {len(model.labels)} classes")
        return index
    lowered = text.lower()
    exact = [i for i, label in enumerate(model.labels) if label.lower() == lowered]
    if exact:
        return exact[0]
    partial = [i for i, label in enumerate(model.labels) if lowered in label.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        shown = ", ".join(f"{i}:{model.labels[i]}" for i in partial[:6])
        raise InputError(f"--target {text!r} matches several classes: {shown}")
    raise InputError(f"--target {text!r} matches no class label of {model.name}")
