"""2-D (or 3-D) maps of a feature space: t-SNE (openTSNE), UMAP (umap-learn) and PCA."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["EMBED_METHODS", "embed"]

EMBED_METHODS = ("tsne", "umap", "pca")


def _matrix(features: Any) -> np.ndarray:
    from ._store import FeatureStore

    if isinstance(features, FeatureStore):
        features = features.features
    try:
        import torch

        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    matrix = np.asarray(features, dtype=np.float32)
    if matrix.ndim != 2:
        raise InputError(f"features must be a (N, D) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputError("features contain NaN or infinite values")
    return np.ascontiguousarray(matrix)


def embed(
    features: Any, method: str = "tsne", *, dims: int = 2, seed: int = 0, **options: Any
) -> np.ndarray:
    """Embed ``features`` (N, D) — an array, a tensor or a :class:`FeatureStore` — into
    ``dims`` dimensions: ``"tsne"`` (openTSNE, perplexity ``min(30, (N - 1) / 3)`` unless
    given), ``"umap"`` (umap-learn) or ``"pca"`` (scikit-learn). Seeded and deterministic:
    the same seed gives the same map. ``options`` go to the underlying estimator.
    Returns float64 (N, dims).
    """
    if method not in EMBED_METHODS:
        raise InputError(f"method must be one of {', '.join(EMBED_METHODS)}, got {method!r}")
    matrix = _matrix(features)
    n = matrix.shape[0]
    if not 1 <= dims <= matrix.shape[1]:
        raise InputError(f"dims must be between 1 and the {matrix.shape[1]} feature dimensions")
    if n < max(4, dims + 1):
        raise InputError(f"need at least {max(4, dims + 1)} rows to embed, got {n}")
    if method == "pca":
        from sklearn.decomposition import PCA

        options.setdefault("svd_solver", "full")
        return np.asarray(
            PCA(n_components=dims, random_state=seed, **options).fit_transform(matrix),
            dtype=np.float64,
        )
    if method == "tsne":
        from openTSNE import TSNE

        options.setdefault("perplexity", float(min(30.0, (n - 1) / 3.0)))
        options.setdefault("n_jobs", 1)
        if dims > 2:
            options.setdefault("negative_gradient_method", "bh")
        tsne = TSNE(n_components=dims, random_state=seed, verbose=False, **options)
        return np.asarray(tsne.fit(matrix), dtype=np.float64)
    with warnings.catch_warnings():
        # umap-learn's import warns that TensorFlow (ParametricUMAP) is missing, and numba /
        # pynndescent emit import-time deprecation notices; none is about this call.
        warnings.simplefilter("ignore", ImportWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import umap

    options.setdefault("n_neighbors", min(15, n - 1))
    options.setdefault("n_jobs", 1)  # a seed makes umap single-threaded anyway; say so
    reducer = umap.UMAP(n_components=dims, random_state=seed, **options)
    with warnings.catch_warnings():
        # Small inputs make umap's spectral init warn about disconnected graphs / falling
        # back; the result is still deterministic and usable.
        warnings.filterwarnings("ignore", message=".*(disconnected|spectral|n_jobs).*")
        return np.asarray(reducer.fit_transform(matrix), dtype=np.float64)
