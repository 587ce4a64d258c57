"""Exact Hamming top-k by multi-index hashing (MIH): :class:`MIHTables`.

Norouzi, Punjani, Fleet, *Fast Exact Search in Hamming Space with Multi-Index
Hashing* (arXiv 1307.2982): split each K-bit code into m substrings; a row
within distance ``r`` of the query agrees within ``floor(r / m)`` bits with it
on at least one substring, so probing each substring's table at growing radii
finds every row of the top-k while reading a small part of the archive.  The
search itself is C (``_mih.c``, which states the algorithm and its changes);
this module chooses the tables, builds them, and answers what the C side gives
up on (its work budget ran out) with the scan, so that the result is always
exactly the scan's: same positions, same distances, ties in position order.

Choices (docs/index.md, "Multi-index hashing"):

* m <= :data:`MAX_TABLES` (4) tables of s <= 24 bits, s near log2(n) as the
  paper advises: 4 bytes per clip per table, so the tables add at most 16 bytes
  per clip (the memory goal of issue 15).  128-bit codes at 4 x 24 bits leave
  32 bits out of the tables: a subset of the bits still certifies distances
  (the distance over all bits is at least the distance over the subset).
* Which bits: the most variable ones (entropy of each bit on a sample of the
  codes), spread over the tables so that each gets a similar share -- trained
  codes have many nearly constant bits, and a substring of constant bits is one
  huge bucket.
* Rows appended after the tables were built are scanned (a "tail") and merged;
  the owner rebuilds when the tail grows (:meth:`MIHTables.stale`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import kernel

try:
    from . import _mih
    if getattr(_mih, "API_VERSION", None) != 1:
        raise ImportError("stale build of stvh.index._mih: reinstall stvh")
except ImportError:  # pragma: no cover - depends on the build
    _mih = None

AVAILABLE = _mih is not None and kernel.AVAILABLE
MAX_TABLES = 4
MAX_SUB_BITS = 24
MIN_SUB_BITS = 8
SAMPLE_ROWS = 65_536
# cost of one unit of MIH work (a probed key or a checked row) in rows of the scan (8-byte codes): 15-21 ns
# against 0.27-0.29 ns a row on trained-like codes at 1M and 10M on the reference machine (benchmarks/scale.py)
UNIT_IN_SCAN_ROWS = 60.0
# a query may spend this share of a scan's cost before the scan answers it: its worst case is 1.5x the scan,
# while the budget lets 85-97 % of trained-like queries finish in MIH (at 0.1, 64 % fell back at 10M)
FALLBACK_SHARE = 0.5


def plan_sizes(n: int, bits: int) -> list[int]:
    """Substring sizes for ``n`` rows of ``bits``-bit codes (see the module docstring)."""
    if bits not in (64, 128):
        raise ValueError(f"multi-index hashing takes 64- or 128-bit codes, got {bits}")
    target = min(MAX_SUB_BITS, max(MIN_SUB_BITS, round(math.log2(max(n, 2)))))
    return split_bits(bits, min(MAX_TABLES, math.ceil(bits / target)), target)


def split_bits(bits: int, m: int, cap: int = MAX_SUB_BITS) -> list[int]:
    """``bits`` over ``m`` tables as evenly as possible (the first tables one bit more), each at most ``cap``."""
    base, extra = divmod(bits, m)
    return [min(cap, base + (1 if j < extra else 0)) for j in range(m)]


def assign_bits(sample: np.ndarray, bits: int, sizes: list[int]) -> list[np.ndarray]:
    """Bit indices of each table: the most variable bits of ``sample`` (packed ``(s, K/8)``), spread evenly.

    Bits are taken in order of decreasing entropy (ties by index) and each goes
    to the table with the smallest entropy so far that still has room.
    """
    p = np.unpackbits(sample, axis=1)[:, :bits].mean(axis=0) if len(sample) else np.full(bits, 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.nan_to_num(p * np.log2(p)) + np.nan_to_num((1 - p) * np.log2(1 - p)))
    order = np.argsort(-np.round(h, 9), kind="stable")[:sum(sizes)]
    tables: list[list[int]] = [[] for _ in sizes]
    load = np.zeros(len(sizes))
    for b in order:
        room = [j for j in range(len(sizes)) if len(tables[j]) < sizes[j]]
        j = min(room, key=lambda t: (load[t], t))
        tables[j].append(int(b))
        load[j] += h[b]
    return [np.array(sorted(t), np.int64) for t in tables]


def key_luts(bit_sets: list[np.ndarray], nbytes: int) -> np.ndarray:
    """``uint32 (m, nbytes, 256)``: OR over a code's bytes of ``lut[j, b, byte]`` is its table-j key.

    Key bit t of table j is code bit ``bit_sets[j][t]`` (packbits order: bit i is
    bit ``7 - i % 8`` of byte ``i // 8``).
    """
    values = np.arange(256)
    lut = np.zeros((len(bit_sets), nbytes, 256), np.uint32)
    for j, bset in enumerate(bit_sets):
        for t, i in enumerate(bset):
            lut[j, i // 8] |= (((values >> (7 - i % 8)) & 1) << t).astype(np.uint32)
    return lut


def bit_masks(bit_sets: list[np.ndarray], bits: int) -> np.ndarray:
    """``uint64 (m, 2)``: each table's bits as masks over the code's two 8-byte words (native order)."""
    out = np.zeros((len(bit_sets), 2), np.uint64)
    for j, bset in enumerate(bit_sets):
        b = np.zeros(128, bool)
        b[bset] = True
        out[j] = np.frombuffer(np.packbits(b).tobytes(), np.uint64)
    return out


def scan_budget(n: int, nbytes: int) -> int:
    """Work units a query may spend before the scan answers it instead (:data:`FALLBACK_SHARE` of a scan)."""
    return max(64, int(FALLBACK_SHARE * n * (nbytes / 8) / UNIT_IN_SCAN_ROWS))


class MIHTables:
    """Multi-index hashing tables over the first ``n`` rows of a packed code array."""

    def __init__(self, bits: int, bit_sets: list[np.ndarray], offsets: list[np.ndarray],
                 positions: list[np.ndarray]):
        if not AVAILABLE:
            raise ImportError("multi-index hashing needs stvh's compiled extensions (stvh.index._mih, "
                              "stvh.index._hamming): reinstall stvh with a C compiler")
        self.bits = bits
        self.nbytes = bits // 8
        self.bit_sets = [np.asarray(b, np.int64) for b in bit_sets]
        self.sizes = tuple(int(len(b)) for b in self.bit_sets)
        self.offsets = [np.ascontiguousarray(o, np.uint32) for o in offsets]
        self.positions = [np.ascontiguousarray(p, np.uint32) for p in positions]
        self.n = int(len(self.positions[0])) if self.positions else 0
        for s, o, p in zip(self.sizes, self.offsets, self.positions):
            if o.shape != ((1 << s) + 1,) or p.shape != (self.n,) or int(o[-1]) != self.n:
                raise ValueError("inconsistent multi-index hashing tables")
        self._lut = key_luts(self.bit_sets, self.nbytes)
        self._masks = bit_masks(self.bit_sets, bits)

    # ---- build
    @classmethod
    def build(cls, db: np.ndarray, bits: int, *, tables: int | None = None,
              sizes: list[int] | None = None) -> "MIHTables":
        """Tables over packed ``db (n, K/8)``; ``tables`` forces m, ``sizes`` the substring sizes."""
        db = np.ascontiguousarray(db, np.uint8)
        n, nb = db.shape
        if nb * 8 != bits:
            raise ValueError(f"codes of {nb} bytes are not {bits}-bit codes")
        if n >= 2 ** 32:
            raise ValueError("multi-index hashing tables hold fewer than 2^32 rows")
        if sizes is None:
            sizes = plan_sizes(n, bits)
            if tables is not None:
                sizes = split_bits(bits, tables)
        step = max(1, n // SAMPLE_ROWS)
        bit_sets = assign_bits(db[::step][:SAMPLE_ROWS], bits, list(sizes))
        lut = key_luts(bit_sets, nb)
        offsets, positions = [], []
        keys = np.empty((1, n), np.uint32)
        for j, s in enumerate(sizes):
            _mih.keys(db, nb, np.ascontiguousarray(lut[j:j + 1]), 1, keys)
            off = np.empty((1 << s) + 1, np.uint32)
            pos = np.empty(n, np.uint32)
            _mih.build(keys[0], int(s), off, pos)
            offsets.append(off)
            positions.append(pos)
        return cls(bits, bit_sets, offsets, positions)

    @property
    def table_bytes(self) -> int:
        """Memory of the tables (directories + positions)."""
        return int(sum(o.nbytes + p.nbytes for o, p in zip(self.offsets, self.positions)))

    def stale(self, n: int) -> bool:
        """Should the owner rebuild: more than 1/8 of ``n`` rows (and 4096) lie beyond the tables?"""
        return n - self.n > max(4096, n // 8)

    def query_keys(self, queries: np.ndarray) -> np.ndarray:
        """``uint32 (q, m)`` substring values of packed queries."""
        q = np.ascontiguousarray(queries, np.uint8)
        out = np.empty((len(self.sizes), q.shape[0]), np.uint32)
        _mih.keys(q, self.nbytes, self._lut, len(self.sizes), out)
        return np.ascontiguousarray(out.T)

    # ---- search
    def search(self, db: np.ndarray, queries: np.ndarray, k: int, *, threads: int = 1,
               budget: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Exact top-k of packed ``queries (q, K/8)`` over ``db (n, K/8)`` (whose first rows are the tables').

        Returns ``(positions int64 (q, k'), distances int32 (q, k'), stats)``, k' =
        min(k, n), exactly :func:`stvh.index.kernel.kernel_topk`'s answer.  stats:
        ``queries``, ``fallback`` (answered by the scan: budget spent, or too few
        rows in the tables), ``work`` (units of the queries MIH answered).
        """
        db = np.ascontiguousarray(db, np.uint8)
        q = np.ascontiguousarray(queries, np.uint8)
        n = db.shape[0]
        if n < self.n or db.shape[1] != self.nbytes or q.ndim != 2 or q.shape[1] != self.nbytes:
            raise ValueError(f"MIH search: db {db.shape} / queries {q.shape} do not fit tables of {self.n} rows of "
                             f"{self.nbytes} bytes")
        kk = min(int(k), n)
        nq = q.shape[0]
        stats: dict[str, Any] = {"queries": nq, "fallback": 0, "work": 0}
        if kk == 0 or nq == 0:
            return np.empty((nq, kk), np.int64), np.empty((nq, kk), np.int32), stats
        if kk > self.n:
            stats["fallback"] = nq
            pos, dist = kernel.kernel_topk(db, q, kk, threads)
            return pos, dist, stats
        pos = np.empty((nq, kk), np.int64)
        dist = np.empty((nq, kk), np.int32)
        work = np.empty(nq, np.int64)
        budget = scan_budget(n, self.nbytes) if budget is None else int(budget)
        _mih.search(db, self.nbytes, self.sizes, self._masks, tuple(self.offsets), tuple(self.positions),
                    self.query_keys(q), q, kk, budget, int(threads), pos, dist, work)
        if (work == -2).any():
            raise ValueError("the multi-index hashing tables point outside the index's rows (a damaged index "
                             "file?): rebuild the index with `stvh index build`")
        fb = work < 0
        stats["fallback"] = int(fb.sum())
        stats["work"] = int(work[~fb].sum())
        ok = ~fb
        if n > self.n and ok.any():      # rows appended since the build: scan them and merge
            tp, td = kernel.kernel_topk(db[self.n:], q[ok], min(kk, n - self.n), threads)
            pos[ok], dist[ok] = _merge(pos[ok], dist[ok], tp + self.n, td, kk)
        if fb.any():
            pos[fb], dist[fb] = kernel.kernel_topk(db, q[fb], kk, threads)
        return pos, dist, stats

    # ---- persistence (arrays saved beside the index's codes; see InMemoryIndex._extra_arrays)
    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"sizes": np.array(self.sizes, np.int64)}
        for j, (b, o, p) in enumerate(zip(self.bit_sets, self.offsets, self.positions)):
            out[f"bits{j}"], out[f"off{j}"], out[f"pos{j}"] = b, o, p
        return out

    @classmethod
    def from_arrays(cls, bits: int, arrays: dict[str, np.ndarray]) -> "MIHTables":
        sizes = [int(s) for s in arrays["sizes"]]
        return cls(bits, [arrays[f"bits{j}"] for j in range(len(sizes))],
                   [arrays[f"off{j}"] for j in range(len(sizes))], [arrays[f"pos{j}"] for j in range(len(sizes))])


def _merge(p1: np.ndarray, d1: np.ndarray, p2: np.ndarray, d2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of two sorted result lists by (distance, position)."""
    p = np.concatenate([p1, p2], axis=1)
    d = np.concatenate([d1, d2], axis=1)
    key = d.astype(np.int64) * (1 << 40) + p
    o = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(p, o, 1), np.take_along_axis(d, o, 1)


def mih_topk(db: np.ndarray, queries: np.ndarray, k: int, bits: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """Build tables over ``db`` and search once (tests and benchmarks)."""
    pos, dist, _ = MIHTables.build(db, bits).search(db, queries, k, **kw)
    return pos, dist
