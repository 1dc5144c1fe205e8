"""Loading images as RGB pictures, and the sample photos available offline."""

from __future__ import annotations

import difflib
import importlib.util
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InputError

__all__ = ["MAX_PIXELS", "decode_image", "load_image", "sample_image", "sample_images"]

MAX_PIXELS = 100_000_000
"""Images with more pixels than this are refused before they are decoded."""

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """The picture in the file at ``path`` as an RGB image, fully decoded.

    Any mode Pillow reads is converted: grey, palette and CMYK to RGB; transparent pixels
    (RGBA, LA, palette transparency) composited on white; 16-bit and 32-bit integer or
    float pictures scaled to 8 bits. The EXIF orientation is applied, and only the first
    frame of an animation is kept. A missing, empty, truncated or non-image file, a
    directory, or a picture over 100 megapixels raises ``InputError`` naming the path.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"{file}: no such file")
    if file.is_dir():
        raise InputError(f"{file}: is a directory, not an image file")
    try:
        if file.stat().st_size == 0:
            raise InputError(f"{file}: empty file, not an image")
    except OSError as exc:
        raise InputError(f"{file}: cannot read ({exc.strerror or exc})") from None
    return decode_image(file, name=str(file))


def decode_image(
    source: str | os.PathLike[str] | IO[bytes], *, name: str, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """The picture in ``source`` (a path or a binary file object) as an RGB image, fully
    decoded, as :func:`load_image` describes. The pixel count is checked from the header
    before anything is decoded; every failure raises ``InputError`` starting with ``name``."""
    truncated_setting = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        # Our own size limit applies, checked before decoding; Pillow's bomb warning
        # (which pytest and some applications turn into errors) is replaced by it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise InputError(
                        f"{name}: {width}x{height} is over the limit of "
                        f"{_megapixels(max_pixels)} megapixels"
                    )
                image.seek(0)
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image), name)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{name}: image too large (over Pillow's decompression limit)") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image file (Pillow cannot identify it)") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except _DECODE_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: truncated or corrupt image ({reason})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_setting


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:g}"


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    has_alpha = mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise InputError(f"{name}: cannot convert a {mode} picture to RGB ({exc})") from None


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (I;16*), 32-bit integer (I) and float (F) grey pictures to 8-bit RGB.

    I;16 spans 0..65535 and is divided by 257 (65535 -> 255). I holds 8-bit values when
    they all fit, else 16-bit ones (Pillow's reading of 16-bit PNGs). F is taken as [0, 1]
    when all values fit, else as [0, 255]."""
    mode = image.mode
    values = np.asarray(image, dtype=np.float64)
    if mode.startswith("I;16"):
        scaled = values / 257.0
    elif mode == "I":
        top = float(values.max()) if values.size else 0.0
        scaled = values if top <= 255 else values / 257.0
    else:
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 0.0
        bottom = float(finite.min()) if finite.size else 0.0
        scaled = values * 255.0 if bottom >= 0.0 and top <= 1.0 else values
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


# --------------------------------------------------------------------------- samples


def _skimage(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from skimage import data

        array = getattr(data, name)()
        if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
            array = array[0]
        return Image.fromarray(np.asarray(array)).convert("RGB")

    return load


def _sklearn(filename: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        # The file ships in sklearn/datasets/images; found without importing scikit-learn
        # (seconds of imports), else through its API.
        spec = importlib.util.find_spec("sklearn")
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = Path(root, "datasets", "images", filename)
            if path.is_file():
                return load_image(path)
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(filename)).convert("RGB")

    return load


def _matplotlib(filename: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from matplotlib import cbook

        return load_image(cbook.get_sample_data(filename, asfileobj=False))

    return load


# name -> (what it shows and where it comes from, loader). All ship inside installed
# packages: nothing is downloaded.
_SAMPLES: dict[str, tuple[str, Callable[[], Image.Image]]] = {
    "cat": ("Chelsea the cat (scikit-image)", _skimage("chelsea")),
    "coffee": ("a cup of coffee (scikit-image)", _skimage("coffee")),
    "astronaut": ("astronaut Eileen Collins (scikit-image)", _skimage("astronaut")),
    "rocket": ("a rocket on the launch pad (scikit-image)", _skimage("rocket")),
    "camera": ("the cameraman, grey (scikit-image)", _skimage("camera")),
    "motorcycle": ("a motorcycle (scikit-image stereo pair, left)", _skimage("stereo_motorcycle")),
    "china": ("a Chinese temple (scikit-learn)", _sklearn("china.jpg")),
    "flower": ("a flower (scikit-learn)", _sklearn("flower.jpg")),
    "grace_hopper": ("Grace Hopper (matplotlib)", _matplotlib("grace_hopper.jpg")),
}


def sample_images() -> list[str]:
    """Names of the sample photos (``cat`` and ``coffee`` first), all available offline."""
    return list(_SAMPLES)


def sample_description(name: str) -> str:
    """What the sample photo ``name`` shows and which package ships it."""
    return _sample(name)[0]


def sample_image(name: str) -> Image.Image:
    """The sample photo ``name`` (see :func:`sample_images`) as an RGB image."""
    _, loader = _sample(name)
    try:
        return loader()
    except InputError:
        raise
    except Exception as exc:  # a package reorganised its data: say which sample failed
        raise InputError(
            f"sample image {name!r} is unavailable ({type(exc).__name__}: {exc})"
        ) from None


def _sample(name: str) -> tuple[str, Callable[[], Image.Image]]:
    try:
        return _SAMPLES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_SAMPLES), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"unknown sample image {name!r}: {hint}available: {', '.join(_SAMPLES)}"
        ) from None
