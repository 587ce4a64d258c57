"""Pure-numpy brute force: the reference backend and the fallback of the others.

Distances: XOR of the packed codes viewed as machine words, then a popcount
(``np.bitwise_count`` on numpy >= 2, else a 256-entry lookup table over the
bytes).  Top-k without sorting the database: distances are integers in
``[0, K]``, so the k-th smallest distance ``t`` is found by counting (rows
within a sampled guess of ``t`` are selected, then counted), then all rows
with distance ``< t`` and the first rows (in insertion order) with distance
``== t`` are taken: O(n), exact, ties in insertion order.
"""

from __future__ import annotations

import numpy as np

from .base import InMemoryIndex

_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
_LUT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_WORD = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def popcount(a: np.ndarray) -> np.ndarray:
    """Per-element popcount of an unsigned integer array, as uint8."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(a).astype(np.uint8, copy=False)
    a = np.ascontiguousarray(a)
    b = a.view(np.uint8).reshape(a.shape + (a.dtype.itemsize,))
    return _LUT[b].sum(axis=-1, dtype=np.uint8)


def as_words(packed: np.ndarray) -> np.ndarray:
    """Packed ``uint8 (n, nb)`` -> word view: ``(n,)`` uint16/32/64 for nb in {2,4,8}, else ``(n, nb/8)`` uint64."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    nb = packed.shape[-1]
    if nb in _WORD:
        return packed.view(_WORD[nb]).reshape(packed.shape[:-1])
    if nb % 8 == 0:
        return packed.view(np.uint64)
    raise ValueError(f"unsupported code size {nb} bytes")


def hamming_to_all(db_words: np.ndarray, q_words: np.ndarray) -> np.ndarray:
    """Hamming distances (uint8, n) between one query (word view) and all rows."""
    if db_words.ndim == 1:
        return popcount(db_words ^ q_words)
    c = popcount(db_words[:, 0] ^ q_words[0])
    for j in range(1, db_words.shape[1]):
        c += popcount(db_words[:, j] ^ q_words[j])
    return c


def counting_topk(dist: np.ndarray, k: int, bits: int, lo: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of integer distances in [0, bits] with ties by position.

    ``lo`` is a known lower bound of the k-th distance.  Returns
    ``(positions int64 (k',), distances (k',))`` with k' = min(k, n).

    One pass in the common case: the k-th distance is guessed from a strided
    sample (with a safety margin), the rows within the guess are selected,
    and the exact threshold is then counted on that small selection.
    """
    n = dist.shape[0]
    k = min(k, n)
    if k == 0:
        return np.empty(0, np.int64), dist[:0]
    if k == n:
        order = np.argsort(dist, kind="stable")
        return order, dist[order]
    stride = n // 8192
    if stride > 1:
        sample = dist[::stride]
        cum = np.cumsum(np.bincount(sample, minlength=bits + 1))
        guess = int(np.searchsorted(cum, 2.0 * k * sample.shape[0] / n + 2.0))
        guess = min(max(guess, lo), bits)
    else:
        guess = bits
    while True:
        sel = np.flatnonzero(dist <= guess)
        if sel.shape[0] >= k or guess >= bits:
            break
        guess = min(bits, guess + max(1, (bits - guess) // 4))
    ds = dist[sel]
    cum = np.cumsum(np.bincount(ds, minlength=bits + 1))
    t = int(np.searchsorted(cum, k))               # smallest t with count(dist <= t) >= k
    lt = sel[ds < t]
    eq = sel[ds == t][:k - lt.shape[0]]
    out = np.concatenate([lt, eq])
    # lt and eq are each ascending by position; a stable sort by distance keeps that order
    out = out[np.argsort(dist[out], kind="stable")]
    return out, dist[out]


def brute_force_topk(db: np.ndarray, queries: np.ndarray, k: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k positions/distances for packed queries ``(q, nb)`` over packed ``db (n, nb)``."""
    words = as_words(db)
    qw = as_words(queries)
    kk = min(k, db.shape[0])
    pos = np.empty((queries.shape[0], kk), np.int64)
    dis = np.empty((queries.shape[0], kk), np.int32)
    for i in range(queries.shape[0]):
        p, d = counting_topk(hamming_to_all(words, qw[i]), kk, bits)
        pos[i], dis[i] = p, d
    return pos, dis


class NumpyIndex(InMemoryIndex):
    """Brute-force numpy scan (reference; no extra dependency)."""

    backend = "numpy"

    def _search_positions(self, d, q, k):
        return brute_force_topk(self.depth_codes(d), q, k, self._bits)
