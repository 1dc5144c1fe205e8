"""Commands ``models`` (the named model specs and where their weights come from) and
``predict`` (top-k classes for pictures)."""

from __future__ import annotations

import argparse
from typing import Any

from ..models._load import (
    EFFICIENTNET_LITE0,
    FASHION_CNN,
    available_models,
    torchvision_weights_path,
)
from ..models._predict import predict
from ._common import DEFAULT_MODEL, add_count, add_image, add_model_args, open_image, open_model

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list the named models and whether their weights are available offline",
        description="List the named model specs for --model (* marks the default) and where "
        "their weights come from; a path to a model file (TorchScript, or a state dict with "
        "--arch) works too.",
        epilog="example:\n  cnnlens models --offline",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="only the models whose pretrained weights are available on this machine",
    )
    p.set_defaults(run=run_models)

    p = sub.add_parser(
        "predict",
        help="top classes for images",
        description="Print the most probable classes of each image (rank, probability, "
        "index, label). `cnnlens models --offline` lists the models (--model) whose weights "
        "are on this machine.",
        epilog="examples:\n  cnnlens predict cat coffee --top 3\n"
        "  cnnlens predict rocket camera --top 1",
    )
    add_image(p, nargs="+")
    add_model_args(p)
    add_count(p, "--top", default=5, help="how many classes (default 5)")
    p.set_defaults(run=run_predict)


def _weights_note(name: str) -> tuple[bool, str]:
    if name == EFFICIENTNET_LITE0:
        return True, "bundled ImageNet weights (default model)"
    if name == FASHION_CNN:
        return True, "bundled Fashion-MNIST weights"
    path = torchvision_weights_path(name)
    if path is None:
        return False, "no pretrained weights (use --random-weights)"
    if path.is_file():
        return True, f"ImageNet weights cached in {path.parent}"
    return False, "weights not cached offline (use --random-weights)"


def run_models(args: argparse.Namespace) -> int:
    names = available_models()
    width = max(len(n) for n in names)
    for name in names:
        available, note = _weights_note(name)
        if args.offline and not available:
            continue
        marker = "*" if name == DEFAULT_MODEL else " "
        print(f"{marker} {name:<{width}}  {note}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    images = [open_image(spec) for spec in args.images]  # every input checked before work
    model = open_model(args)
    for number, (spec, image) in enumerate(zip(args.images, images, strict=True)):
        if len(images) > 1:
            print(("\n" if number else "") + f"{spec}:")
        print(f"{'rank':>4}  {'prob':>6}  {'index':>5}  label")
        for p in predict(model, image, top=args.top):
            print(f"{p.rank:>4}  {p.probability:6.3f}  {p.index:>5}  {p.label}")
    return 0
