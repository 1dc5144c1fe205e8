"""Command ``cam-fit``: put global average pooling and a new linear layer on a chosen layer
of a model and train that head on an image folder (``cnnlens.cam_model(...).fit``), so that
CAM (Zhou et al. 2016) applies to models without such a head."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, random_split

from .._trace import default_feature_layer
from ..attribution.cam import cam_model
from ..errors import InputError
from ._common import add_batch_size, add_count, add_model_args, add_output, open_model

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cam-fit",
        help="train a GAP + linear head on a layer so that CAM applies (image folder)",
        description="Train global average pooling + a linear layer on LAYER of the model, "
        "the backbone frozen, on DATASET_FOLDER (one sub-folder per class). Pooled features "
        "are computed once; the head is saved with torch.save.",
        epilog="example:\n  cnnlens cam-fit photos/ --layer _blocks.15 -o head.pt   # photos/cats/, photos/dogs/, ...",
    )
    p.add_argument("dataset", metavar="DATASET_FOLDER", help="folder with one sub-folder per class")
    add_model_args(p)
    p.add_argument(
        "--layer", default=None, help="layer name (default: the last layer with a feature map)"
    )
    add_output(p, "where to write the head (torch.save, .pt)")
    add_count(p, "--epochs", default=100, help="passes over the features (default 100)")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    add_batch_size(p, 32, "images per batch")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the split and the training (default 0)"
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of images kept out of training to measure accuracy (default 0.2; 0: none)",
    )
    p.set_defaults(run=run)


class _Preprocessed(Dataset[tuple[Tensor, int]]):
    def __init__(self, folder: Any, preprocess: Any) -> None:
        self.folder = folder
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.folder[index]
        return self.preprocess(image)[0], int(label)


def _open_folder(path: str) -> tuple[Any, list[str]]:
    from torchvision.datasets import ImageFolder

    if not Path(path).is_dir():
        raise InputError(f"{path}: not a folder")
    try:
        folder = ImageFolder(path)
    except (FileNotFoundError, OSError) as exc:
        raise InputError(
            f"{path}: needs one sub-folder of images per class ({exc})".replace("\n", " ")
        ) from None
    return folder, list(folder.classes)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.holdout < 1.0:
        raise InputError(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise InputError("--epochs and --batch-size must be at least 1 and --lr positive")
    folder, classes = _open_folder(args.dataset)
    if len(classes) < 2:
        raise InputError(f"{args.dataset}: found {len(classes)} class folder; need at least 2")
    loaded = open_model(args)
    module = loaded.module
    dataset = _Preprocessed(folder, loaded.preprocessing)
    layer: Any = args.layer
    if layer is None:
        first = dataset[0][0].unsqueeze(0).to(loaded.device)
        layer = default_feature_layer(module, first)
    converted = cam_model(loaded, layer, len(classes))
    held = round(len(dataset) * args.holdout)
    if args.holdout > 0 and (held < 1 or held >= len(dataset)):
        raise InputError(f"--holdout {args.holdout} leaves no image to train or to test on")
    generator = torch.Generator().manual_seed(args.seed)
    train, test = random_split(dataset, [len(dataset) - held, held], generator=generator)
    converted.fit(train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    train_accuracy = converted.accuracy(train, batch_size=args.batch_size)
    test_accuracy = converted.accuracy(test, batch_size=args.batch_size) if held else None
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    converted.save_head(
        out,
        model=str(args.model),
        classes=classes,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
    )
    shown = test_accuracy if test_accuracy is not None else float("nan")
    print(
        f"layer {converted.layer}: {converted.head.in_features} channels -> {len(classes)} "
        f"classes; {len(train)} training images, accuracy {train_accuracy:.1%}; "
        f"{held} held-out images, accuracy {shown:.1%}; head written to {out}"
    )
    return 0
