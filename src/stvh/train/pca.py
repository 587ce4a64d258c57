"""Channel PCA for the feature cache: a fixed linear projection C → k.

Backbone maps are wide (1280 channels for EfficientNet-Lite0, 2048 for
Inception-v3); a cache of raw ``(N, T, C, 5, 5)`` RoI features costs ~8 MB per
clip in float16, and the model's first 1x1 reduction (C → d_v) dominates a CPU
training step. Because that reduction is linear, projecting the channels onto
their top-k principal directions first loses only what those directions do not
explain; the learnable 1x1 reduction still follows in the model.
The projection is fitted on RoI features of real persons from training-split
clips only and stored beside the cache (``pca.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.atomic import atomic_path


def fit_pca(samples: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``samples (S, C)`` → ``(mean (C,), components (k, C), explained variance ratio (k,))``."""
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError("PCA needs a (samples, channels) array with at least 2 samples")
    if not 0 < k <= samples.shape[1]:
        raise ValueError(f"cannot keep {k} of {samples.shape[1]} channels")
    x = samples.astype(np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1][:k]
    comps = vectors[:, order].T  # (k, C)
    # a deterministic sign: the largest-magnitude entry of each component is positive
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(signs == 0, 1, signs)[:, None]
    ratio = values[order] / max(values.sum(), 1e-12)
    return mean.astype(np.float32), comps.astype(np.float32), ratio.astype(np.float32)


def project(roi: np.ndarray, mean: np.ndarray, comps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``roi (N, T, C, s, s)`` → ``(N, T, k, s, s)``; padded persons (``mask`` False) stay zero."""
    x = np.moveaxis(roi.astype(np.float32), 2, -1) - mean  # (N, T, s, s, C)
    out = np.moveaxis(x @ comps.T, -1, 2)  # (N, T, k, s, s)
    if mask is not None:
        out[~mask] = 0
    return out


def save_pca(path: str | Path, mean, comps, ratio) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=mean, components=comps, explained=ratio)


def load_pca(path: str | Path):
    with np.load(path) as d:
        return d["mean"], d["components"], d["explained"]
