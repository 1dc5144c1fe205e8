"""Image parametrizations: the tensors the optimizer changes, and how they become pictures.

Every parametrization holds a batch of ``N`` images and maps its leaf tensors to pixel
values in [0, 1], shape (N, 3, H, W). Two are provided:

* :class:`PixelParam` — the pixels themselves (Simonyan et al. 2013). After each update
  the values are projected back into [0, 1].
* :class:`FourierParam` — a scaled spectrum with decorrelated colours squashed by a
  sigmoid (Olah et al. 2017, lucid's ``fft_image`` + ``to_valid_rgb``). Low frequencies get
  larger steps (a 1/f scaling of the spectrum), which whitens the gradient and gives
  smooth, natural-looking images; the colour matrix does the same for the colour channels.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COLOR_CORRELATION",
    "FourierParam",
    "ImageParam",
    "PixelParam",
    "decorrelate_colors",
    "gaussian_blur",
]

# Square root of the colour covariance of ImageNet images (lucid's
# ``color_correlation_svd_sqrt``), normalized so its largest column has unit norm.
_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
COLOR_CORRELATION: Tensor = (_SVD_SQRT / _SVD_SQRT.norm(dim=0).max()).float()


class ImageParam(Protocol):
    """What the optimizer needs from a parametrization."""

    @property
    def tensors(self) -> list[Tensor]:
        """The leaf tensors to optimize; each has the batch as its first dimension."""
        ...

    def __call__(self) -> Tensor:
        """The images (N, 3, H, W) in [0, 1], differentiable w.r.t. :attr:`tensors`."""
        ...

    def project(self) -> None:
        """Bring the tensors back into their valid set after an update (in place)."""
        ...

    def blur(self, sigma: float) -> None:
        """Blur the current images by a Gaussian of ``sigma`` pixels (in place)."""
        ...


def decorrelate_colors(channels: Tensor) -> Tensor:
    """Map (N, 3, H, W) values in decorrelated colour space to correlated RGB values."""
    matrix = COLOR_CORRELATION.to(device=channels.device, dtype=channels.dtype)
    return torch.einsum("ij,njhw->nihw", matrix, channels)


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflected borders."""
    if sigma <= 0:
        return images
    kernel = _gaussian_kernel(sigma, images.dtype, images.device)
    r = kernel.numel() // 2
    c = images.shape[1]
    kx = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    mode = "reflect" if min(images.shape[-2:]) > r else "replicate"
    out = F.conv2d(F.pad(images, (r, r, 0, 0), mode=mode), kx, groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode=mode), ky, groups=c)


class PixelParam:
    """The pixels themselves, in [0, 1]; ``init="blank"`` starts from ``fill`` (the
    dataset's mean colour, i.e. a zero model input), ``"random"`` adds noise of ``std``."""

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        *,
        fill: tuple[float, float, float],
        init: str = "blank",
        std: float = 0.01,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        h, w = size
        base = torch.tensor(fill, dtype=torch.float32).view(1, 3, 1, 1).expand(n, 3, h, w)
        pixels = base.clone()
        if init == "random":
            pixels = pixels + std * torch.randn(n, 3, h, w, generator=generator)
        self.pixels = pixels.clamp(0.0, 1.0).to(device).requires_grad_(True)

    @property
    def tensors(self) -> list[Tensor]:
        return [self.pixels]

    def __call__(self) -> Tensor:
        return self.pixels

    @torch.no_grad()
    def project(self) -> None:
        self.pixels.clamp_(0.0, 1.0)

    @torch.no_grad()
    def blur(self, sigma: float) -> None:
        self.pixels.copy_(gaussian_blur(self.pixels, sigma))


def _frequencies(size: tuple[int, int]) -> Tensor:
    """|f| in cycles per pixel for each coefficient of a real 2-D FFT of ``size``."""
    h, w = size
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(w, dtype=torch.float64).view(1, -1)
    return torch.sqrt(fx * fx + fy * fy)


class FourierParam:
    """Lucid's decorrelated Fourier parametrization.

    The spectrum is stored as real and imaginary parts, shape (N, 3, H, W // 2 + 1, 2),
    scaled by ``1 / max(|f|, 1 / max(H, W)) ** decay_power`` before the inverse FFT
    (orthonormal), divided by 4, mapped through the colour matrix (``decorrelate``) and a
    sigmoid. ``init="random"`` draws the spectrum from N(0, ``std``²); ``"blank"`` is zero,
    a uniform grey image.
    """

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        *,
        init: str = "random",
        std: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        h, w = size
        self.size = size
        self.decorrelate = decorrelate
        shape = (n, 3, h, w // 2 + 1, 2)
        if init == "random":
            spectrum = std * torch.randn(shape, generator=generator)
        else:
            spectrum = torch.zeros(shape)
        self.spectrum = spectrum.to(device).requires_grad_(True)
        freqs = _frequencies(size)
        self._freqs = freqs.float().to(device)
        scale = 1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power
        self._scale = scale.float().to(device).view(1, 1, h, w // 2 + 1, 1)

    @property
    def tensors(self) -> list[Tensor]:
        return [self.spectrum]

    def __call__(self) -> Tensor:
        coefficients = torch.view_as_complex(self.spectrum * self._scale)
        channels = torch.fft.irfft2(coefficients, s=self.size, norm="ortho") / 4.0
        if self.decorrelate:
            channels = decorrelate_colors(channels)
        return torch.sigmoid(channels)

    def project(self) -> None:
        return None

    @torch.no_grad()
    def blur(self, sigma: float) -> None:
        """Blur before the sigmoid: multiply the spectrum by the Gaussian's transfer
        function exp(-2 π² σ² |f|²) — exact and cheap in this parametrization."""
        if sigma <= 0:
            return
        transfer = torch.exp(-2.0 * math.pi**2 * sigma**2 * self._freqs**2)
        self.spectrum.mul_(transfer.view(1, 1, *transfer.shape, 1))
