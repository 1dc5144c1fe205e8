"""2-D (or 3-D) maps of a feature space: t-SNE (openTSNE), UMAP (umap-learn) and PCA."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .._progress import Progress
from .._progress import progress as progress_bar
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
    features: Any,
    method: str = "tsne",
    *,
    dims: int = 2,
    seed: int = 0,
    progress: bool | None = None,
    **options: Any,
) -> np.ndarray:
    """Embed ``features`` (N, D) — an array, a tensor or a :class:`FeatureStore` — into
    ``dims`` dimensions: ``"tsne"`` (openTSNE, perplexity ``min(30, (N - 1) / 3)`` unless
    given), ``"umap"`` (umap-learn) or ``"pca"`` (scikit-learn). Seeded and deterministic:
    the same seed gives the same map. ``options`` go to the underlying estimator.
    ``progress``: a bar on stderr (``None``: on a terminal only; t-SNE counts its
    iterations, UMAP shows one step). Returns float64 (N, dims).
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
        early = int(options.get("early_exaggeration_iter", 250))
        total = early + int(options.get("n_iter", 500))
        with progress_bar(total, "t-SNE", enabled=progress, unit="iteration") as bar:
            if bar.shown and "callbacks" not in options:
                options.update(callbacks=_tsne_counter(bar, early), callbacks_every_iters=25)
            tsne = TSNE(n_components=dims, random_state=seed, verbose=False, **options)
            points = np.asarray(tsne.fit(matrix), dtype=np.float64)
            bar.advance(total - bar.done)
            return points
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
        with progress_bar(1, "UMAP", enabled=progress, unit="fit") as bar:
            points = np.asarray(reducer.fit_transform(matrix), dtype=np.float64)
            bar.advance()
        return points


def _tsne_counter(bar: Progress, early: int) -> Any:
    """An openTSNE callback counting iterations over its two phases: ``early`` iterations
    of early exaggeration, then the main optimization (each phase counts from 1). openTSNE
    computes the KL divergence for each call, hence a call every 25 iterations only."""
    last = 0
    offset = 0

    def callback(iteration: int, error: float, embedding: Any) -> bool:
        nonlocal last, offset
        del embedding
        if iteration <= last:  # the count restarted: the main phase began
            offset = early
        last = iteration
        done = offset + iteration
        bar.advance(max(0, done - bar.done))
        bar.describe(f"KL divergence {error:.3g}")
        return False  # True would stop the optimization

    return callback
