"""(being written) Loading images and the bundled sample photos."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def load_image(path: str | Path) -> Image.Image:
    raise NotImplementedError("being written")


def sample_image(name: str) -> Image.Image:
    raise NotImplementedError("being written")


def sample_images() -> list[str]:
    raise NotImplementedError("being written")
