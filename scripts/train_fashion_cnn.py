"""Train the shipped Fashion-MNIST CNN (model spec ``fashion_cnn``), seeded.

    .venv/bin/python scripts/train_fashion_cnn.py [--epochs 6] [--out src/cnnlens/assets/fashion_cnn.pt]

With ``--permute-labels`` it trains the copy for Adebayo et al.'s data-randomization test
(model spec ``fashion_cnn_permuted``): the same architecture on a random permutation of the
training labels, which it can only memorize. A subset keeps that short:

    .venv/bin/python scripts/train_fashion_cnn.py --permute-labels --subset 1000 --epochs 80 --batch-size 64 \
        --out src/cnnlens/assets/fashion_cnn_permuted.pt

Reads Fashion-MNIST from the Debian package ``dataset-fashion-mnist``; inputs are prepared
exactly as ``load_model("fashion_cnn").preprocess`` prepares them (pixels / 255, then
normalized). A few minutes on one CPU core; prints the test accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlens.datasets import fashion_mnist
from cnnlens.models.fashion_cnn import FASHION_CNN_PREPROCESSING, FashionCNN

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "cnnlens" / "assets" / "fashion_cnn.pt"


def normalized(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = fashion_mnist(split)
    pre = FASHION_CNN_PREPROCESSING
    x = (data.tensors() - pre.mean[0]) / pre.std[0]
    return x, torch.from_numpy(data.labels)


@torch.no_grad()
def accuracy(model: FashionCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), 1000):
        correct += int((model(x[start : start + 1000]).argmax(1) == y[start : start + 1000]).sum())
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--permute-labels", action="store_true", help="train on randomly permuted labels"
    )
    parser.add_argument("--subset", type=int, default=0, help="first N training images (0: all)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x_train, y_train = normalized("train")
    x_test, y_test = normalized("test")
    if args.subset:
        x_train, y_train = x_train[: args.subset], y_train[: args.subset]
    if args.permute_labels:
        shuffle = torch.Generator().manual_seed(args.seed + 1)
        y_train = y_train[torch.randperm(len(y_train), generator=shuffle)]
    model = FashionCNN()
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            batch = order[i : i + args.batch_size]
            xb = x_train[batch]
            # Random horizontal flips: clothes look the same mirrored (not for permuted
            # labels, which are memorized per picture).
            flip = torch.rand(len(batch), generator=generator) < (
                0.0 if args.permute_labels else 0.5
            )
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        # The per-epoch test accuracy costs more than an epoch on a small subset.
        measured = "" if args.subset else f", test accuracy {accuracy(model, x_test, y_test):.4f}"
        print(
            f"epoch {epoch + 1}: loss {total / len(x_train):.4f}{measured} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    print(
        f"train accuracy {accuracy(model, x_train, y_train):.4f}, "
        f"test accuracy {accuracy(model, x_test, y_test):.4f}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
