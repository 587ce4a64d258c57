"""FAISS backend ("faiss", the default = auto) and raw FAISS ("faiss-flat").

``faiss-flat`` runs FAISS's exact binary k-NN kernel (``hammings_knn_hc``, the
one behind ``IndexBinaryFlat.search``) directly over the index's own packed
codes (no second copy).  Its k-heap orders by (distance, id) and only
replaces the top on a strictly smaller distance while scanning ids upward,
so ties come out in insertion order; a one-time self-check against numpy
verifies that on first use (if a FAISS build ever disagrees, the numpy scan
is used instead, with a warning).

``faiss`` (auto) picks per search between two engines (rule measured by
``benchmarks/search.py --crossover``):

* the short-code bucket tables (:mod:`stvh.index.short_codes`) for K = 16
  and K = 32 once n >= :data:`SHORT_MIN_ROWS` ``[K]``: their cost grows with
  the probed buckets, not with n;
* otherwise a flat scan ("faiss" in :meth:`FaissIndex.engine`), run by
  stvh's C kernel (:mod:`stvh.index.kernel`; at 1M rows 1.7-2.3x faster than
  FAISS's at K = 128, 3-5x at K = 64, faster at every size measured) when
  the extension is built, else by FAISS's kernel.

The thresholds depend on which flat scan is available: against the C
kernel the tables only pay off from 500k rows (K = 16) / 1.5M rows (K = 32);
against FAISS (whose heap drowns in ties at K = 16) from 20k / 200k rows.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from . import kernel, mih
from .base import InMemoryIndex
from .mih_backend import MIHMixin
from .numpy_backend import brute_force_topk
from .short_codes import ShortCodeMixin

# measured crossovers, tables vs flat scan (benchmarks/search.py --crossover; docs/index.md)
SHORT_MIN_ROWS_VS_KERNEL = {16: 500_000, 32: 1_500_000}
SHORT_MIN_ROWS_VS_FAISS = {16: 20_000, 32: 200_000}
SHORT_MIN_ROWS = dict(SHORT_MIN_ROWS_VS_KERNEL if kernel.AVAILABLE else SHORT_MIN_ROWS_VS_FAISS)
_faiss = None
_TIES_OK: bool | None = None


def import_faiss():
    global _faiss
    if _faiss is None:
        try:
            import faiss  # noqa: PLC0415
        except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
            raise ImportError("the 'faiss' index backend needs faiss: pip install faiss-cpu "
                              "(or use backend='numpy')") from exc
        _faiss = faiss
    return _faiss


_local = threading.local()


def _heap(nq: int, k: int):
    """A reusable FAISS result heap with its output buffers, per thread and (nq, k)."""
    cache = getattr(_local, "heaps", None)
    if cache is None:
        cache = _local.heaps = {}
    hit = cache.get((nq, k))
    if hit is None:
        faiss = import_faiss()
        D = np.empty((nq, k), np.int32)
        I = np.empty((nq, k), np.int64)
        heap = faiss.int_maxheap_array_t()
        heap.k = k
        heap.nh = nq
        heap.ids = faiss.swig_ptr(I)
        heap.val = faiss.swig_ptr(D)
        if len(cache) >= 16:
            cache.clear()
        hit = cache[(nq, k)] = (heap, D, I)
    return hit


def faiss_knn(db: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS exact Hamming k-NN: ``(positions int64 (q,k), distances int32 (q,k))``; k <= n."""
    faiss = import_faiss()
    db = np.ascontiguousarray(db, dtype=np.uint8)
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    nq, nb = queries.shape
    heap, D, I = _heap(nq, k)
    faiss.hammings_knn_hc(heap, faiss.swig_ptr(queries), faiss.swig_ptr(db), db.shape[0], nb, 1)
    return I.copy(), D.copy()


def faiss_ties_in_order() -> bool:
    """One-time check: does FAISS return ties in insertion order (as numpy does)?"""
    global _TIES_OK
    if _TIES_OK is None:
        rng = np.random.default_rng(12345)
        pool = rng.integers(0, 256, (6, 8), dtype=np.uint8)
        db = pool[rng.integers(0, 6, 3000)]
        q = pool[:3]
        ok = True
        for k in (1, 7, 50, 600, 3000):
            a = faiss_knn(db, q, k)
            b = brute_force_topk(db, q, k, 64)
            ok &= bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
        _TIES_OK = ok
        if not ok:  # pragma: no cover - depends on the FAISS build
            warnings.warn("this FAISS build does not return Hamming ties in insertion order; "
                          "stvh uses its numpy scan instead (exact, slower)", RuntimeWarning, stacklevel=2)
    return _TIES_OK


def flat_topk(db: np.ndarray, queries: np.ndarray, k: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    if faiss_ties_in_order():
        return faiss_knn(db, queries, k)
    return brute_force_topk(db, queries, k, bits)  # pragma: no cover


class FaissFlatIndex(InMemoryIndex):
    """Always FAISS's flat binary k-NN kernel (exact, ties in insertion order)."""

    backend = "faiss-flat"

    def __init__(self, bits, depth=1, **kw):
        import_faiss()
        super().__init__(bits, depth, **kw)

    def _search_positions(self, d, q, k):
        return flat_topk(self.depth_codes(d), q, k, self._bits)


class FaissIndex(MIHMixin, ShortCodeMixin, FaissFlatIndex):
    """The default backend ("faiss" = auto): short-code tables for large K <= 32 indexes, multi-index hashing
    for large K = 64 / 128 indexes whose codes it pays on (measured, :mod:`stvh.index.mih_backend`), a flat
    scan otherwise."""

    backend = "faiss"

    def engine(self, n: int | None = None, *, detail: bool = False) -> str:
        """Which engine a search of the deepest focus uses: ``"short"`` (tables), ``"mih"`` (multi-index
        hashing) or ``"faiss"`` (flat scan).

        ``n`` asks about an index of ``n`` rows instead (short tables or scan; MIH is
        decided by measurement on the index itself, so only for the index's own size).
        ``detail=True`` names the flat scan's implementation instead of ``"faiss"``:
        ``"kernel"`` (stvh's C kernel) or ``"faiss-flat"`` (FAISS).  Asking may build
        and measure the MIH tables (what the first search would do).
        """
        own = n is None
        n = len(self) if n is None else n
        if self._bits in SHORT_MIN_ROWS and n >= SHORT_MIN_ROWS[self._bits]:
            return "short"
        if own and self.mih_engine():
            return "mih"
        if not detail:
            return "faiss"
        return "kernel" if kernel.AVAILABLE else "faiss-flat"

    def _search_positions(self, d, q, k):
        m = SHORT_MIN_ROWS.get(self._bits)
        if m is not None and self._n >= m:
            return self._short_table(d).search(q, k)
        hit = self._mih_search(d, q, k)
        if hit is not None:
            return hit
        if kernel.AVAILABLE:
            return kernel.kernel_topk(self._codes[d, :self._n], q, k, self._threads)
        return flat_topk(self._codes[d, :self._n], q, k, self._bits)


class MIHIndex(MIHMixin, FaissFlatIndex):
    """Always multi-index hashing (64- or 128-bit codes); the scan answers only queries over their budget."""

    backend = "mih"
    force_mih = True

    def __init__(self, bits, depth=1, **kw):
        if not mih.AVAILABLE:
            raise ImportError("backend 'mih' needs stvh's compiled extensions (stvh.index._mih): reinstall stvh "
                              "with a C compiler; backend 'faiss' works without them")
        if bits not in (64, 128):
            raise ValueError(f"backend 'mih' takes 64- or 128-bit codes, not {bits}; use 'faiss' (auto)")
        super().__init__(bits, depth, **kw)

    def _search_positions(self, d, q, k):
        return self._mih_search(d, q, k)
