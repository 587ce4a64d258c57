"""Channel PCA for the feature cache: a fixed linear projection C → k.

Backbone maps are wide (1280 channels for EfficientNet-Lite0, 2048 for
Inception-v3); a cache of raw ``(N, T, C, 5, 5)`` RoI features costs ~8 MB per
clip in float16, and the model's first 1x1 reduction (C → d_v) dominates a CPU
training step. Because that reduction is linear, projecting the channels onto
their top-k principal directions first loses only what those directions do not
explain; the learnable 1x1 reduction still follows in the model.
The projection is fitted on RoI features of real persons from training-split
clips only and stored beside the cache (``pca.npz``); :func:`fit_rows` picks
the rows of a clip the fit uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import scipy.linalg

from ..data.atomic import atomic_path


def fit_pca(samples: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``samples (S, C)`` → ``(mean (C,), components (k, C), explained variance ratio (k,))``."""
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError("PCA needs a (samples, channels) array with at least 2 samples")
    if not 0 < k <= samples.shape[1]:
        raise ValueError(f"cannot keep {k} of {samples.shape[1]} channels")
    mean = samples.mean(axis=0, dtype=np.float64)
    x = np.asarray(samples, dtype=np.float32) - mean.astype(np.float32)  # one centred float32 copy
    # float32 products (2x faster than float64; relative error ~1e-5 at 70k rows, far below the gaps
    # between the leading eigenvalues), eigenpairs in float64
    cov = (x.T @ x).astype(np.float64) / (x.shape[0] - 1)  # (C, C)
    del x
    return _top_components(cov, mean, k)


class Moments:
    """Sums of the fit rows of RoI features, accumulated from backbone maps without forming the rows.

    A fit row is ``x = a @ F.T``: RoIAlign weights ``a (P,)`` of one RoI cell (``models.visual.roi_weights``)
    applied to the frame's map ``F (C, P)``. For a frame's rows ``X = A F.T`` (``A (r, P)``), when
    ``r > P``, ``X.T X = F R.T R F.T`` with ``A = Q R`` (QR, ``R (P, P)``): the Gram matrix, the cost of a
    fit (rows x C^2), is summed over P rows of ``R F.T`` instead of r rows (at 112x200 the map has 28
    cells, a frame of 12 persons 108 rows at 3x3 cells each). :meth:`fit` centres in float64.
    """

    def __init__(self):
        self.factors: list[torch.Tensor] = []  # (rows', C) float32: sum of their outer products = X.T X
        self.total: torch.Tensor | None = None  # (C,) float64: sum of the rows
        self.n = 0

    def add(self, fmap: torch.Tensor, weights: torch.Tensor) -> None:
        """``fmap (T, C, P)`` of one clip, ``weights (T, r, P)``: the RoIAlign weights of its fit rows."""
        T, r, P = weights.shape
        fmap, weights = fmap.float(), weights.float()
        total = torch.matmul(weights.sum(1, keepdim=True), fmap.transpose(1, 2)).sum((0, 1))  # (C,)
        self.total = total.double() if self.total is None else self.total + total.double()
        self.n += T * r
        if r > P:
            weights = torch.linalg.qr(weights, mode="r").R  # (T, P, P)
        self.factors.append(torch.matmul(weights, fmap.transpose(1, 2)).reshape(-1, fmap.shape[1]))  # (T*r', C)

    def fit(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`fit_pca` of the rows added: ``(mean (C,), components (k, C), ratio (k,))``."""
        if self.n < 2 or self.total is None:
            raise ValueError("PCA needs at least 2 samples")
        y = torch.cat(self.factors)  # (S', C)
        if not 0 < k <= y.shape[1]:
            raise ValueError(f"cannot keep {k} of {y.shape[1]} channels")
        mean = self.total / self.n  # (C,) float64
        gram = (y.T @ y).double()  # (C, C): float32 products, as fit_pca
        cov = (gram - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return _top_components(cov.numpy(), mean.numpy(), k)


def _top_components(cov: np.ndarray, mean: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k eigenpairs of ``cov (C, C)`` float64 -> ``(mean, components (k, C), ratio (k,))`` float32."""
    c = cov.shape[0]
    # the top k eigenpairs only (LAPACK syevr): 3-4x faster than all 1280 of them
    values, vectors = scipy.linalg.eigh(cov, subset_by_index=[c - k, c - 1], driver="evr")  # ascending
    order = np.argsort(values)[::-1]
    comps = vectors[:, order].T  # (k, C)
    # a deterministic sign: the largest-magnitude entry of each component is positive
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(signs == 0, 1, signs)[:, None]
    ratio = values[order] / max(float(np.trace(cov)), 1e-12)  # the trace: the sum of all C eigenvalues
    return mean.astype(np.float32), comps.astype(np.float32), ratio.astype(np.float32)


def fit_rows(roi: np.ndarray, mask: np.ndarray, cell_step: int = 2) -> np.ndarray:
    """Rows ``(n * T * cells, C)`` of ``roi (N, T, C, s, s)`` a fit uses: real persons (``mask``), every
    frame, the RoI cells at ``cell_step`` (3x3 of 5x5 at 2). RoIAlign's cells interpolate the same few
    stride-32 map cells, so the skipped ones repeat their neighbours; the covariance, whose cost is
    rows x C^2 (as much as the backbone's own work on a clip at C = 1280), gets 2.8x cheaper."""
    x = roi[mask][..., ::cell_step, ::cell_step]  # (n, T, C, s', s')
    x = np.moveaxis(x, 2, -1)  # (n, T, s', s', C)
    return x.reshape(-1, x.shape[-1])


def project(roi: np.ndarray, mean: np.ndarray, comps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``roi (N, T, C, s, s)`` → ``(N, T, k, s, s)``; padded persons (``mask`` False) stay zero.

    ``comps @ (x - mean)`` per frame, in the cache's own layout: no transposed copy of the C channels (2x
    faster than moving C last; float16 values of caches made before this differ by 1 ulp in ~0.1 % of them).
    The product runs in torch, on torch's thread count (what ``--threads`` sets for the backbone too), not
    in numpy's BLAS: BLAS's result depends on its own thread count, which Ray sets to 1 in its workers, so
    a cache extracted with ``--engine ray`` differed from the single process in the last bits.
    """
    x = np.asarray(roi, dtype=np.float32)
    n, t, c = x.shape[:3]
    x = x.reshape(n * t, c, -1) - mean[:, None]  # (N*T, C, s*s), one copy
    prod = torch.matmul(torch.from_numpy(np.ascontiguousarray(comps, dtype=np.float32)), torch.from_numpy(x))
    out = prod.numpy().reshape(n, t, comps.shape[0], *roi.shape[3:])  # (N, T, k, s, s)
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
