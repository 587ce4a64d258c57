"""stvh's own exact Hamming top-k kernel (the C extension ``stvh.index._hamming``).

One pass over the packed codes per query (queries of a batch share each
block of rows while it is in cache): XOR + popcount (AVX2 nibble tables
where the CPU has AVX2, ``popcnt`` otherwise), a row is kept only if its
distance is below a threshold ``T`` -- the smallest distance with at least
``k`` kept rows at or below it, lowered as rows come in -- and the kept rows
(in position order) are finally ordered by a stable counting sort over the
``K + 1`` distances.  Exact, ties in position (insertion) order, O(n + k)
per query.  See ``_hamming.c``.

The extension is built by ``pip install`` (``setup.py``; a C compiler is
needed).  Without it :data:`AVAILABLE` is False, the auto backend uses its
other engines (FAISS, the short-code tables) and backend ``"kernel"`` raises.
"""

from __future__ import annotations

import logging

import numpy as np

from .base import InMemoryIndex

log = logging.getLogger(__name__)

API_VERSION = 2   # the knn() contract this module expects (_hamming.c: STVH_HAMMING_API_VERSION)

try:
    from . import _hamming
    if getattr(_hamming, "API_VERSION", None) != API_VERSION:
        raise ImportError(f"stale build of stvh.index._hamming (API_VERSION "
                          f"{getattr(_hamming, 'API_VERSION', None)}, expected {API_VERSION}): reinstall stvh")
except ImportError as exc:  # pragma: no cover - depends on the build
    _hamming = None
    log.debug("stvh.index._hamming is not available (%s); using the FAISS / numpy engines", exc)

AVAILABLE = _hamming is not None


def simd() -> str | None:
    """The kernel's scan: ``"avx2"``, ``"scalar"``, or None when the extension is missing."""
    return _hamming.simd() if AVAILABLE else None


def kernel_topk(db: np.ndarray, queries: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of packed ``queries (q, nb)`` over packed ``db (n, nb)`` with the C kernel.

    Returns ``(positions int64 (q, k'), distances int32 (q, k'))``, k' = min(k, n),
    ascending by (distance, position).  ``threads`` (1..64) splits the queries
    over that many threads (same results).  Raises ImportError without the extension.
    """
    if not AVAILABLE:
        raise ImportError("stvh's C kernel (stvh.index._hamming) is not built: reinstall stvh with a C "
                          "compiler (pip install -e .), or use backend 'faiss' / 'numpy'")
    db = np.ascontiguousarray(db, dtype=np.uint8)
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    if db.ndim != 2 or queries.ndim != 2 or queries.shape[1] != db.shape[1]:
        raise ValueError(f"kernel_topk takes packed codes db (n, nb) and queries (q, nb); "
                         f"got {db.shape} and {queries.shape}")
    kk = min(int(k), db.shape[0]) if k > 0 else 0
    pos = np.empty((queries.shape[0], kk), np.int64)
    dis = np.empty((queries.shape[0], kk), np.int32)
    _hamming.knn(db, queries, db.shape[1], k, pos, dis, int(threads))
    return pos, dis


class KernelIndex(InMemoryIndex):
    """Always stvh's C kernel (exact, ties in insertion order)."""

    backend = "kernel"

    def __init__(self, bits, depth=1, **kw):
        if not AVAILABLE:
            raise ImportError("backend 'kernel' needs stvh's compiled extension stvh.index._hamming "
                              "(reinstall stvh with a C compiler); backend 'faiss' works without it")
        super().__init__(bits, depth, **kw)

    def _search_positions(self, d, q, k):
        return kernel_topk(self.depth_codes(d), q, k)
