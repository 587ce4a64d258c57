"""Exact fast path for short codes (K = 16 or 32): bucket tables searched by Hamming balls.

Why: a flat scan with a k-heap (FAISS ``IndexBinaryFlat``) drowns in ties when
distances only take K+1 values; at 16 bits over 1M codes it is *slower* than
at 128 bits.  Short codes allow a direct table instead.

How (multi-index hashing, exact):

* The code is cut into ``m = K/16`` substrings of 16 bits (m = 1 for K = 16,
  2 for K = 32).  For each substring, a bucket table over all 2^16 values:
  rows sorted by (substring value, position), with bucket offsets (CSR); for
  K = 32 the codes are also stored in bucket order so a probe reads
  contiguous runs.
* K = 16: the query probes the buckets at Hamming distance r = 0, 1, 2, ...
  (precomputed masks of weight r); the radius *is* the distance.  Bucket
  sizes are known before gathering, so the ring that holds the k-th row is
  found by counting; only the first rows (by position) of each of its buckets
  are read.
* K = 32: the tables are probed radius by radius, alternately.  By the
  pigeonhole principle, once table 0 is probed up to radius r0 and table 1 up
  to r1, every row at full distance ``<= r0 + r1 + 1`` has been seen (a row is
  kept from one table only: its distance on the other half tells whether that
  table saw it already).  Stop as soon as at least k seen rows lie within
  that bound: the true top-k (by distance, then position) is among them; pick
  it by counting.  The first probe reaches at once the smallest final bound
  of the last few queries (fewer numpy calls).
* If the probes would touch more than 1/8 of the rows (a query far from
  dense clusters), switch to a full numpy scan with counting top-k.

Cost per query: O(#buckets probed + #rows seen) instead of O(n); memory per
focus: one int64 permutation and 2^16 offsets per table (plus the codes in
bucket order for K = 32).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .base import InMemoryIndex
from .numpy_backend import counting_topk, hamming_to_all, popcount

SUB = 16
NVAL = 1 << SUB
_VALUES = np.arange(NVAL, dtype=np.int64)
_WEIGHT = np.bitwise_count(_VALUES.astype(np.uint16)) if hasattr(np, "bitwise_count") else \
    np.array([bin(v).count("1") for v in range(NVAL)], dtype=np.uint8)
MASKS = [_VALUES[_WEIGHT == w] for w in range(SUB + 1)]     # masks of Hamming weight w
MASKS_BY_WEIGHT = np.concatenate(MASKS)                    # all masks, by weight
RING = np.concatenate([[0], np.cumsum([m.shape[0] for m in MASKS])])  # weight w: [RING[w], RING[w+1])
# uint32 word whose set bits are the first two bytes of the code (the first 16-bit substring)
HALF0 = np.frombuffer(b"\xff\xff\x00\x00", dtype=np.uint32)[0]
FALLBACK_FRACTION = 0.125


def _gather_index(starts: np.ndarray, lens: np.ndarray, total: int) -> np.ndarray:
    """Indices ``starts[i] + arange(lens[i])`` concatenated over i (``total = lens.sum()``)."""
    if lens.shape[0] == 1:
        return np.arange(int(starts[0]), int(starts[0]) + total)
    ends = np.cumsum(lens)
    return np.repeat(starts - (ends - lens), lens) + np.arange(total)


class ShortCodeTable:
    """Bucket tables over the packed codes ``(n, K/8)`` of one focus (K in {16, 32})."""

    def __init__(self, packed: np.ndarray, bits: int):
        if bits not in (16, 32):
            raise ValueError(f"the short-code path handles 16 or 32 bits, not {bits}")
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        self.bits = bits
        self.m = bits // SUB
        n = self.n = packed.shape[0]
        self.full = packed.view(np.uint16 if bits == 16 else np.uint32).reshape(n)
        subs = packed.view(np.uint16).reshape(n, self.m)
        orders, starts, counts = [], [], []
        for t in range(self.m):
            keys = subs[:, t]
            orders.append(np.argsort(keys, kind="stable").astype(np.int64, copy=False))  # (key, position)
            c = np.bincount(keys, minlength=NVAL).astype(np.int64)
            st = np.zeros(NVAL, np.int64)
            np.cumsum(c[:-1], out=st[1:])
            counts.append(c)
            starts.append(st + t * n)
        # table t's bucket v is entry t * 2^16 + v of the concatenated arrays
        self.order = np.concatenate(orders)
        self.starts = np.concatenate(starts)
        self.counts = np.concatenate(counts)
        self.codes = self.full[self.order] if self.m > 1 else None
        self._recent: deque[int] = deque(maxlen=8)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k for packed queries ``(q, K/8)``; 1 <= k <= n."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        nq = queries.shape[0]
        qfull = queries.view(self.full.dtype).reshape(nq)
        qsub = queries.view(np.uint16).reshape(nq, self.m).astype(np.int64)
        pos = np.empty((nq, k), np.int64)
        dis = np.empty((nq, k), np.int32)
        one = self._search_one16 if self.m == 1 else self._search_one32
        for i in range(nq):
            pos[i], dis[i] = one(qfull[i], qsub[i], k)
        return pos, dis

    # ---- K = 16: one table, the probe radius is the distance
    def _search_one16(self, qfull, qsub, k):
        order, starts, counts = self.order, self.starts, self.counts
        q = int(qsub[0])
        need = k
        ps, ds = [], []
        for r in range(SUB + 1):
            b = MASKS[r] ^ q
            c = counts[b]
            tot = int(c.sum())
            if tot == 0:
                continue
            nz = np.flatnonzero(c)
            b, c = b[nz], c[nz]
            if tot <= need:
                p = order[_gather_index(starts[b], c, tot)]
                if nz.shape[0] > 1:
                    p = np.sort(p)
                need -= tot
            else:
                lens = np.minimum(c, need)       # each bucket is position-sorted: its first rows suffice
                p = order[_gather_index(starts[b], lens, int(lens.sum()))]
                if p.shape[0] > need:
                    p = np.partition(p, need - 1)[:need]
                p = np.sort(p)
                need = 0
            ps.append(p)
            ds.append(np.full(p.shape[0], r, np.int32))
            if need == 0:
                break
        return np.concatenate(ps), np.concatenate(ds)

    # ---- K = 32: multi-index hashing over two 16-bit halves
    def _search_one32(self, qfull, qsub, k):
        n, bits = self.n, self.bits
        limit = FALLBACK_FRACTION * n
        q0, q1 = int(qsub[0]), int(qsub[1]) | NVAL   # table 1's buckets are offset by 2^16 (masks < 2^16)
        found_p, found_d = [], []
        hist = np.zeros(bits + 1, np.int64)
        nfound = 0
        done0 = done1 = -1                          # radius probed so far in table 0 / table 1
        target = min(self._recent) if self._recent else 1
        hi0, hi1 = target // 2, (target - 1) // 2   # first step: radii reaching bound `target` at once
        while True:
            m0 = MASKS_BY_WEIGHT[RING[done0 + 1]:RING[hi0 + 1]]
            m1 = MASKS_BY_WEIGHT[RING[done1 + 1]:RING[hi1 + 1]]
            b = np.concatenate([m0 ^ q0, m1 ^ q1])
            c = self.counts[b]
            tot = int(c.sum())
            if nfound + tot > limit:                # would touch too many rows: scan them all
                return counting_topk(hamming_to_all(self.full, qfull), k, bits, lo=done0 + done1 + 2)
            if tot:
                split = int(c[:m0.shape[0]].sum())
                idx = _gather_index(self.starts[b], c, tot)
                x = self.codes[idx] ^ qfull
                d = popcount(x)
                d0 = popcount(x & HALF0)            # distance on the first half
                # a table-0 row was seen before iff table 1 had probed its second-half distance;
                # a table-1 row iff table 0 has (now) probed its first-half distance
                keep = np.empty(tot, bool)
                np.greater(d[:split] - d0[:split], done1, out=keep[:split])
                np.greater(d0[split:], hi0, out=keep[split:])
                p = self.order[idx][keep]
                d = d[keep]
                if p.shape[0]:
                    found_p.append(p)
                    found_d.append(d)
                    hist += np.bincount(d, minlength=bits + 1)
                    nfound += p.shape[0]
            done0, done1 = hi0, hi1
            bound = done0 + done1 + 1               # every row with distance <= bound is found
            if nfound == n or hist[:bound + 1].sum() >= k or done1 >= SUB:
                self._recent.append(bound)
                return self._select(found_p, found_d, hist, k)
            if done0 <= done1:                      # extend one table by one radius
                hi0 = done0 + 1
            else:
                hi1 = done1 + 1

    @staticmethod
    def _select(found_p, found_d, hist, k):
        P = np.concatenate(found_p)
        D = np.concatenate(found_d)
        t = int(np.searchsorted(np.cumsum(hist), k))      # k-th smallest distance
        lt = np.flatnonzero(D < t)
        lt = lt[np.lexsort((P[lt], D[lt]))]
        eqp = P[D == t]
        need = k - lt.shape[0]
        if eqp.shape[0] > need:
            eqp = np.partition(eqp, need - 1)[:need]
        eqp = np.sort(eqp)
        return (np.concatenate([P[lt], eqp]),
                np.concatenate([D[lt].astype(np.int32), np.full(eqp.shape[0], t, np.int32)]))


class ShortCodeMixin:
    """Caches one :class:`ShortCodeTable` per focus, rebuilt lazily after changes."""

    def _short_table(self, d: int) -> ShortCodeTable:
        cache = self.__dict__.setdefault("_short_cache", {})
        hit = cache.get(d)
        if hit is not None and hit[0] == self._version:
            return hit[1]
        table = ShortCodeTable(self.depth_codes(d), self._bits)
        cache[d] = (self._version, table)
        return table

    def _on_change(self, appended_from):
        self.__dict__.get("_short_cache", {}).clear()


class ShortCodeIndex(ShortCodeMixin, InMemoryIndex):
    """Always the short-code path (K in {16, 32})."""

    backend = "short"

    def __init__(self, bits, depth=1, **kw):
        if bits not in (16, 32):
            raise ValueError(f"backend 'short' handles 16- or 32-bit codes, not {bits}; use 'faiss' (auto)")
        super().__init__(bits, depth, **kw)

    def _search_positions(self, d, q, k):
        return self._short_table(d).search(q, k)
