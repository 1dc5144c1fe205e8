"""Arguments and helpers shared by the commands."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..attribution.api import method_spec, registry
from ..dataset._sources import require_spec
from ..errors import InputError
from ..images import load_image, sample_image, sample_images
from ..models import LoadedModel, available_models, load_model
from ..render import PICTURE_FORMATS

DEFAULT_MODEL = "efficientnet_lite0"


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class Output:
    """The argparse ``type`` of every option naming a path a command writes: ``"file"``,
    ``"picture"`` (a file named .png, .jpg, .jpeg or .webp) or ``"folder"``. The path is checked as the arguments are parsed, before any work (see
    :func:`check_output`); ``cnnlens`` removes it again when it was created by a run that
    ends in bad input."""

    kind: str = "file"

    def __call__(self, text: str) -> str:
        try:
            check_output(text, self.kind)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    def __repr__(self) -> str:  # argparse names the type in some messages
        return f"{self.kind} path"


def check_output(text: str, kind: str = "file") -> Path:
    """``text`` names a ``kind`` ("file", "picture" or "folder") that can be written: not
    the other kind, under a folder that exists or can be created, where files can be
    created; a picture's suffix names a format cnnlens writes."""
    if not text:
        raise InputError("the output path is empty")
    path = Path(text)
    if kind in ("file", "picture"):
        if text.endswith(("/", os.sep)) or path.is_dir():
            raise InputError(f"{text} is a folder; name a file to write in it")
        if kind == "picture" and path.suffix.lower() not in PICTURE_FORMATS:
            raise InputError(
                f"{text}: pictures are written as PNG, JPEG or WebP; name the file .png, "
                ".jpg or .webp"
            )
        folder = path.parent
    else:
        if path.exists() and not path.is_dir():
            raise InputError(f"{text} is a file; name a folder to write in")
        folder = path
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot create {text}: {existing} is a file, not a folder")
    if path.is_file() and not os.access(path, os.W_OK):
        raise InputError(f"cannot overwrite {text}: the file is read-only")
    try:  # the only sure test of a place (permissions, read-only or virtual file systems)
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".cnnlens-probe-")
    except OSError as exc:
        raise InputError(
            f"cannot write {text}: no files can be created in {existing} ({exc.strerror})"
        ) from None
    os.close(handle)
    os.unlink(probe)
    return path


def wrote(path: str | Path) -> None:
    """Say that ``path`` was written: the same line for every file a command writes."""
    print(f"wrote {path}")


def first_missing(path: Path) -> Path | None:
    """The outermost part of ``path`` that does not exist yet (what writing it creates),
    or None when it exists."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_created(paths: Iterable[Path]) -> None:
    """Remove what a failed run created (paths that did not exist before it)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


_OUTPUT_HELP = {"picture": "picture to write (.png, .jpg or .webp)"}


def add_output(
    parser: argparse.ArgumentParser,
    help: str = "",
    *,
    kind: str = "file",
    required: bool = True,
    default: str | None = None,
) -> None:
    """``-o/--output``, the same option in every command that writes (``help`` defaults to
    what the kind is, for a picture)."""
    parser.add_argument(
        "-o",
        "--output",
        type=Output(kind),
        required=required,
        default=default,
        metavar={"folder": "FOLDER", "picture": "PICTURE"}.get(kind, "FILE"),
        help=help or _OUTPUT_HELP[kind],
    )


def positive_int(text: str) -> int:
    """argparse type: an int of at least 1 (counts, sizes, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_batch_size(parser: Any, default: int | None, what: str = "items per forward pass") -> None:
    add_count(
        parser,
        "--batch-size",
        default=default,
        help=what + ("" if default is None else f" (default {default})"),
    )


def add_count(parser: Any, *flags: str, default: int | None, help: str) -> None:
    """A count option (at least 1), shown as ``N`` in every command."""
    parser.add_argument(*flags, type=positive_int, default=default, metavar="N", help=help)


# ----------------------------------------------------------------------------- methods


def add_methods(
    parser: argparse.ArgumentParser,
    *,
    required: bool = False,
    default: Sequence[str] = (),
    aliases: Sequence[str] = (),
) -> None:
    """``-m/--method``, repeatable or comma-separated, the same in every command that runs
    explanation methods (``aliases``: earlier spellings still taken). Read it with
    :func:`method_names`."""
    shown = f" (default: {', '.join(default)})" if default else ""
    parser.add_argument(
        "-m",
        "--method",
        *aliases,
        dest="method",
        action="append",
        required=required,
        metavar="M",
        help=f"method; repeat or separate by commas for several{shown}: "
        + ", ".join(sorted(registry())),
    )


def comma_names(given: Sequence[str]) -> list[str]:
    """The names in ``given`` (each item one name or several separated by commas), in
    order, each once."""
    return list(dict.fromkeys(n.strip() for item in given for n in item.split(",") if n.strip()))


def method_names(given: Sequence[str] | None, default: Sequence[str] = ()) -> list[str]:
    """The methods of :func:`add_methods`'s option in order, each once; an unknown name is
    an error (with the closest names) before any work."""
    if given is None:
        return list(default)
    names = comma_names(given)
    if not names:
        raise InputError("--method needs a method name")
    for name in names:
        method_spec(name)
    return names


# ----------------------------------------------------------------------------- inputs

IMAGE_HELP = "image file, or a sample name such as cat"
DATASET_HELP = "a folder of pictures (class sub-folders give labels) or fashion-mnist[:train|:test]"


def add_image(parser: argparse.ArgumentParser, *, nargs: str | None = None, help: str = "") -> None:
    """The picture(s) a command looks at, ``IMAGE`` in every command: a path or a sample
    name (see :func:`open_image`); ``nargs`` "+" or "*" for several."""
    several = nargs in ("+", "*")
    parser.add_argument(
        "images" if several else "image",
        nargs=nargs,
        metavar="IMAGE",
        help=help or ("image files or sample names (cat, coffee, ...)" if several else IMAGE_HELP),
    )


def _dataset_spec(text: str) -> str:
    """The dataset argument, refused while the arguments are parsed (before the model
    loads) when :func:`~cnnlens.dataset._sources.require_spec` refuses it."""
    try:
        return require_spec(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_dataset(
    parser: argparse.ArgumentParser, *, nargs: str | None = None, note: str = ""
) -> None:
    """The dataset a command runs over, ``DATASET`` in every command."""
    parser.add_argument(
        "dataset", nargs=nargs, type=_dataset_spec, metavar="DATASET", help=DATASET_HELP + note
    )


# ----------------------------------------------------------------------------- models


def add_model_args(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = DEFAULT_MODEL,
    default_text: str = DEFAULT_MODEL,
) -> None:
    """The model options; ``default_text`` says in the help what a missing ``--model`` means."""
    parser.add_argument("--model", default=default, help=f"model spec (default: {default_text})")
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
    if not spec.strip():  # Path("") is the current folder
        raise InputError("the image path is empty")
    if not Path(spec).exists():
        if spec in sample_images():
            return sample_image(spec)
        if not any(sep in spec for sep in "/\\."):
            # `cnnlens check resnet18 ...` reads the model's name as the image
            hint = f"; to pick the model, use --model {spec}" if spec in available_models() else ""
            raise InputError(
                f"{spec}: no such file, nor a sample image ({', '.join(sample_images())}){hint}"
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
