"""Data sources: ``cnnlens.datasets.fashion_mnist()``, image folders, dataset specs."""

from __future__ import annotations

from .dataset._sources import (
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    ImageFolder,
    fashion_mnist,
    open_dataset,
)

__all__ = ["FASHION_MNIST_CLASSES", "FashionMNIST", "ImageFolder", "fashion_mnist", "open_dataset"]
