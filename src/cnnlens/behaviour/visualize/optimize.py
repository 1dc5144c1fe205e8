"""The optimization core: parametrization, transforms, objective, steps. Returns tensors;
nothing here saves or shows anything.

Each step: images = param(); view = transforms(images); score the objectives on
model(normalize(view)); loss = −Σ scores + penalties; gradient by ``torch.autograd.grad``
with respect to the parametrization's tensors only (the model's parameters are frozen,
eval mode is on, and the only hooks are a :class:`~cnnlens._hooks.Recorder` on the layers
the objectives read — all restored or removed afterwards); optimizer update; projection
and the periodic blur.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..._guard import guard
from ..._hooks import Recorder
from ..._modules import resolve_layer
from ..._progress import progress as progress_bar
from ...errors import InputError
from .objectives import Context, Objective
from .param import FourierParam, ImageParam, PixelParam
from .transforms import RandomAffine

__all__ = [
    "FAST_STEPS",
    "RECIPES",
    "Rendering",
    "Settings",
    "coarse_view",
    "learning_rate",
    "render",
    "settings_for",
]

FAST_STEPS = 192  # the "fast" recipe's step count (measured in docs/visualize.md)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Settings:
    """Every knob of the optimization. ``visualize(**regularizers)`` sets these by name on
    top of a recipe (see :data:`RECIPES`).

    * ``param``: ``"fourier"`` (decorrelated spectrum, sigmoid) or ``"pixel"`` (raw
      pixels projected into [0, 1]); ``init``: ``"random"`` or ``"blank"``; ``init_std``,
      ``decay_power`` (spectrum scaling 1/|f|^p), ``decorrelate`` (colour matrix, Fourier).
    * ``optimizer``: ``"adam"`` or ``"sgd"`` (plain gradient ascent); ``lr``.
    * ``l2``: λ of −λ‖I‖², with I the model input (normalized image) summed over pixels,
      as in Simonyan et al. 2013; ``tv``: weight of the total variation (sum of absolute
      neighbour differences of the [0, 1] image).
    * ``jitter`` (pixels), ``scale`` (zoom in [1 − s, 1 + s]), ``rotate`` (degrees):
      random transforms each step, grey surround.
    * ``blur_every``/``blur_sigma``: every k steps blur the image by σ pixels (0: off;
      never after the last step).
    * ``normalize_grad``: divide each image's gradient by its mean absolute value.
    * ``schedule``: ``"constant"`` learning rate or ``"cosine"`` (decaying from ``lr`` to
      0 over the steps, so the last steps settle the image instead of shaking it).
    * ``coarse_size``/``coarse_steps``: the model sees a view resampled to
      ``coarse_size`` pixels (shorter side) for the first ``coarse_steps`` fraction of the
      steps, then the full image: the cheap steps shape the picture, the full-size steps
      finish it at the size it is returned and judged at (0 / None: always full size).
    * ``diversity``: weight of the batch diversity term on ``diversity_layer`` (default:
      the layer of the first layer objective, else the model's last feature map).
    * ``size`` (H, W), ``mean``, ``std``: input size and normalization (default: the
      LoadedModel's preprocessing, else 224×224 and ImageNet statistics); ``grayscale``:
      the model takes one channel (the image's luminance; the images come back grey).
    * ``progress``: show a progress bar (``None``: only on a terminal).
    """

    param: str = "fourier"
    init: str = "random"
    init_std: float = 0.01
    decay_power: float = 1.0
    decorrelate: bool = True
    optimizer: str = "adam"
    lr: float = 0.05
    l2: float = 0.0
    tv: float = 0.0
    jitter: float = 16.0
    scale: float = 0.15
    rotate: float = 15.0
    blur_every: int = 4
    blur_sigma: float = 0.5
    normalize_grad: bool = False
    schedule: str = "constant"
    coarse_size: int | None = None
    coarse_steps: float = 0.0
    diversity: float = 0.0
    diversity_layer: str | None = None
    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    grayscale: bool = False
    progress: bool | None = None

    def check(self) -> None:
        if self.param not in ("fourier", "pixel"):
            raise InputError(f"param must be 'fourier' or 'pixel', got {self.param!r}")
        if self.init not in ("random", "blank"):
            raise InputError(f"init must be 'random' or 'blank', got {self.init!r}")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.coarse_size is not None and self.coarse_size < 8:
            raise InputError(f"coarse_size must be at least 8 pixels, got {self.coarse_size}")
        if not 0.0 <= self.coarse_steps <= 1.0:
            raise InputError(f"coarse_steps must be a fraction in [0, 1], got {self.coarse_steps}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        for name in ("lr", "l2", "tv", "jitter", "scale", "rotate", "blur_sigma", "diversity"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"{name} must be a non-negative number, got {value!r}")
        if self.scale >= 1:
            raise InputError(f"scale must be below 1 (zoom in [1 - s, 1 + s]), got {self.scale}")
        if self.blur_every < 0:
            raise InputError(f"blur_every must be >= 0, got {self.blur_every}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise InputError(f"size must be (height, width), got {self.size!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise InputError(f"{name} needs 3 values (R, G, B), got {value!r}")

    @property
    def transforms(self) -> RandomAffine:
        return RandomAffine(jitter=self.jitter, scale=self.scale, rotate=self.rotate)


RECIPES: dict[str, Settings] = {
    # The quality default: lucid-style decorrelated Fourier image, transformation robustness.
    "lucid": Settings(),
    # lucid in fewer, cheaper steps (the CLI's default, with FAST_STEPS steps): the model
    # sees a 128-pixel view for the first three quarters of the steps (a third of the
    # cost of a 224-pixel step), then the full image; the learning rate decays along a
    # cosine, so the short run ends settled.
    "fast": Settings(lr=0.08, schedule="cosine", coarse_size=128, coarse_steps=0.75),
    # Simonyan et al. 2013: pixels from a blank (mean) image, plain gradient ascent on
    # S_c(I) − λ‖I‖², nothing else.
    "simonyan": Settings(
        param="pixel",
        init="blank",
        optimizer="sgd",
        lr=1.0,
        l2=1e-4,
        jitter=0.0,
        scale=0.0,
        rotate=0.0,
        blur_every=0,
    ),
}


def settings_for(recipe: str = "lucid", **overrides: object) -> Settings:
    """The recipe's settings with ``overrides`` applied; unknown names raise InputError."""
    if recipe not in RECIPES:
        raise InputError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(
            f"unknown visualize option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}"
        )
    for key in ("size", "mean", "std"):
        value = overrides.get(key)
        if value is not None:
            if isinstance(value, int) and key == "size":
                value = (value, value)
            overrides[key] = tuple(value)  # type: ignore[arg-type,call-overload]
    settings = dataclasses.replace(RECIPES[recipe], **overrides)  # type: ignore[arg-type]
    settings.check()
    return settings


@dataclass(frozen=True)
class Rendering:
    """The result of :func:`render`: ``images`` (N, 3, H, W) in [0, 1] and ``history``
    (steps, N), each image's objective (under that step's transforms) at every step."""

    images: Tensor
    history: Tensor


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _make_param(
    settings: Settings,
    n: int,
    size: tuple[int, int],
    mean: tuple[float, float, float],
    generator: torch.Generator,
    device: torch.device,
) -> ImageParam:
    if settings.param == "pixel":
        return PixelParam(
            n,
            size,
            fill=mean,
            init=settings.init,
            std=settings.init_std,
            generator=generator,
            device=device,
        )
    return FourierParam(
        n,
        size,
        init=settings.init,
        std=settings.init_std,
        decay_power=settings.decay_power,
        decorrelate=settings.decorrelate,
        generator=generator,
        device=device,
    )


def learning_rate(settings: Settings, step: int, steps: int) -> float:
    """The learning rate of ``step`` (0-based) of ``steps``: ``lr``, or along a cosine from
    ``lr`` at the first step towards 0 after the last."""
    if settings.schedule == "cosine":
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return settings.lr


def coarse_view(settings: Settings, size: tuple[int, int]) -> tuple[int, int] | None:
    """The (H, W) of the coarse views: the shorter side ``coarse_size``, the aspect kept;
    None when there are none."""
    short = min(size)
    if not settings.coarse_size or not settings.coarse_steps or settings.coarse_size >= short:
        return None
    ratio = settings.coarse_size / short
    return max(1, round(size[0] * ratio)), max(1, round(size[1] * ratio))


def _grey(images: Tensor) -> Tensor:
    """Luminance (ITU-R 601-2, as PIL's "L" mode), repeated over the three channels."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    luma = torch.einsum("c,nchw->nhw", weights, images).unsqueeze(1)
    return luma.expand(-1, 3, -1, -1)


def _total_variation(images: Tensor) -> Tensor:
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).sum(dim=1)
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).sum(dim=1)
    return dy + dx


def render(
    module: nn.Module,
    objectives: Sequence[Objective],
    settings: Settings,
    *,
    steps: int,
    seed: int,
) -> Rendering:
    """Optimize one image per objective (the batch), deterministically for ``seed``.

    ``settings.size``, ``mean`` and ``std`` must be filled in (the public wrapper does it).
    """
    if not objectives:
        raise InputError("visualize needs at least one objective")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be a non-negative int, got {steps!r}")
    assert settings.size is not None and settings.mean is not None and settings.std is not None
    n = len(objectives)
    size = (int(settings.size[0]), int(settings.size[1]))
    device = _device_of(module)
    generator = torch.Generator().manual_seed(int(seed))
    names = sorted(set().union(*(o.layers for o in objectives)))
    layers = {name: resolve_layer(module, name) for name in names}
    param = _make_param(settings, n, size, settings.mean, generator, device)
    tensors = param.tensors
    optimizer: torch.optim.Optimizer
    if settings.optimizer == "adam":
        fused = device.type == "cuda" or None  # one kernel for the update on the GPU
        optimizer = torch.optim.Adam(tensors, lr=settings.lr, fused=fused)
    else:
        optimizer = torch.optim.SGD(tensors, lr=settings.lr)
    mean = torch.tensor(settings.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(settings.std, device=device).view(1, 3, 1, 1)
    transforms = settings.transforms

    def to_model(pixels: Tensor) -> Tensor:
        normalized = (pixels - mean) / std
        return normalized[:, :1] if settings.grayscale else normalized

    coarse = coarse_view(settings, size)
    coarse_until = round(settings.coarse_steps * steps) if coarse is not None else 0
    history = torch.zeros(steps, n, device=device)  # on the device: no sync per step
    items = torch.arange(n, device=device)

    with (
        guard(module, needs="a layer objective" if layers else None),
        Recorder(layers.values()) as recorder,
        progress_bar(steps, "visualize", enabled=settings.progress) as bar,
    ):
        for step in range(steps):
            recorder.clear()
            images = _grey(param()) if settings.grayscale else param()
            view = transforms(images, generator, coarse if step < coarse_until else None)
            output = module(to_model(view))
            context = Context(
                output=output,
                activations={name: recorder.last(m) for name, m in layers.items()},
                images=images,
            )
            scores = torch.stack([o(context) for o in objectives])[items, items]
            loss = -scores.sum()
            if settings.l2 > 0:
                loss = loss + settings.l2 * to_model(images).pow(2).sum()
            if settings.tv > 0:
                loss = loss + settings.tv * _total_variation(images).sum()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, step, steps)
            grads = torch.autograd.grad(loss, tensors)
            for tensor, grad in zip(tensors, grads, strict=True):
                if settings.normalize_grad:
                    norm = grad.abs().flatten(1).mean(dim=1).clamp(min=1e-12)
                    grad = grad / norm.view(-1, *([1] * (grad.dim() - 1)))
                tensor.grad = grad
            optimizer.step()
            for tensor in tensors:
                tensor.grad = None
            param.project()
            if settings.blur_every and (step + 1) % settings.blur_every == 0 and step + 1 < steps:
                param.blur(settings.blur_sigma)
            history[step] = scores.detach()
            bar.advance()
            if bar.shown and (step % 8 == 0 or step + 1 == steps):
                # Reading the score waits for the device: only every few steps.
                bar.describe(f"score {float(scores.detach().mean()):.3g}")
        with torch.no_grad():
            final = (_grey(param()) if settings.grayscale else param()).detach().clamp(0.0, 1.0)
    return Rendering(images=final, history=history.cpu())
