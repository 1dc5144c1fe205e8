"""The four map similarities of Adebayo et al. (2018): Spearman rank correlation of the
absolute maps and of the signed maps, SSIM, and the Pearson correlation of HOG features."""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["SIMILARITIES", "hog_similarity", "spearman", "ssim"]

SIMILARITIES = ("spearman_abs", "spearman_signed", "ssim", "hog")


def _array(m: Tensor) -> np.ndarray:
    return m.detach().double().cpu().numpy()


def _unit(m: Tensor) -> np.ndarray:
    """Absolute values scaled to [0, 1] (zeros for a constant map)."""
    x = np.abs(_array(m))
    span = np.ptp(x)
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def spearman(a: Tensor, b: Tensor, *, absolute: bool = True) -> float:
    """Spearman rank correlation of two maps, of their absolute values by default
    (0 when either map is constant)."""
    from scipy.stats import spearmanr

    x, y = _array(a).reshape(-1), _array(b).reshape(-1)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def ssim(a: Tensor, b: Tensor) -> float:
    """Structural similarity of two maps' absolute values, each scaled to [0, 1]."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_unit(a), _unit(b), data_range=1.0))  # type: ignore[no-untyped-call]


def hog_similarity(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of the histograms of oriented gradients of two maps' absolute
    values scaled to [0, 1] (cells of 1/14 of the map side, 2 x 2 blocks; 0 when either
    descriptor is constant)."""
    from skimage.feature import hog

    side = max(2, min(a.shape[-2:]) // 14)

    def features(m: Tensor) -> np.ndarray:
        return np.asarray(
            hog(
                _unit(m),
                orientations=9,
                pixels_per_cell=(side, side),
                cells_per_block=(2, 2),
                feature_vector=True,
            )
        )

    x, y = features(a), features(b)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])
