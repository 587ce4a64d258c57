"""Clip ids stored compactly: :class:`IdTable`.

The ids of n rows are one UTF-8 byte buffer plus ``n + 1`` offsets (row ``p``
is ``buf[off[p]:off[p + 1]]``); an id is found by a table of 64-bit hashes
sorted by (hash, position) with the positions beside them: ``np.searchsorted``
on the hashes, then the bytes of the (almost always single) candidate are
compared, so hash collisions cost a comparison, never a wrong answer.

The hash is FNV-1a 64 over the UTF-8 bytes followed by the splitmix64
finaliser (stable across runs, machines and Python versions, unlike
``hash()``; vectorised over many ids with numpy, byte column by byte column).

All four arrays may be memory-mapped from an index file: a lookup touches a
few pages of each, so they are not resident until used.  Ids appended one
call at a time after that (``stvh serve`` adding a clip) go to a small
in-memory overlay (a dict) instead of copying the arrays; large appends,
removals and :meth:`IdTable.arrays` (what a save writes) merge it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1
_CHUNK = 1 << 20            # rows per vectorised step (bounds the temporaries)
OVERLAY_MAX = 1 << 16       # overlay ids before they are merged into the arrays
_SMALL = 32                 # below this many ids, hash in pure Python


# --------------------------------------------------------------------------- hashing

def hash_one(b: bytes) -> int:
    """The 64-bit hash of one id's UTF-8 bytes (same value as :func:`hash_segments`)."""
    h = FNV_OFFSET
    for c in b:
        h = ((h ^ c) * FNV_PRIME) & _MASK
    z = h ^ len(b)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _finalise(h: np.ndarray, lens: np.ndarray) -> np.ndarray:
    z = h ^ lens.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_segments(buf: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Hashes ``uint64 (n,)`` of the n byte segments ``buf[off[i]:off[i+1]]``."""
    n = off.shape[0] - 1
    out = np.empty(n, np.uint64)
    prime = np.uint64(FNV_PRIME)
    for s in range(0, n, _CHUNK):
        o = np.asarray(off[s:s + _CHUNK + 1], np.int64)
        starts, lens = o[:-1], np.diff(o)
        h = np.full(starts.shape[0], FNV_OFFSET, np.uint64)
        for j in range(int(lens.max()) if lens.shape[0] else 0):
            act = lens > j
            if act.all():
                h ^= buf[starts + j]
                h *= prime
            else:
                idx = np.flatnonzero(act)
                h[idx] = (h[idx] ^ buf[starts[idx] + j]) * prime
        out[s:s + _CHUNK] = _finalise(h, lens)
    return out


# --------------------------------------------------------------------------- encoding

def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + l) for s, l)`` without a Python loop."""
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, np.int64)
    ends = np.cumsum(lens)
    return np.repeat(np.asarray(starts, np.int64) - (ends - lens), lens) + np.arange(total)


def encode_ids(ids: Sequence[str] | np.ndarray,
               read: Callable[[np.ndarray, int, int], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ids -> ``(buf uint8 (B,), off int64 (n+1,))``.

    A numpy ``str`` (``<U``) array is converted without Python strings when
    its characters are ASCII (1M rows at a time); anything else is encoded
    one id at a time.  Lone surrogates survive (``surrogatepass``).
    ``read(ids, start, stop)`` returns a copy of rows ``start:stop`` of a
    str array (e.g. :func:`stvh.index.codes.read_rows`, which reads a
    memory-mapped file with plain reads instead of page faults).
    """
    if isinstance(ids, np.ndarray) and ids.dtype.kind == "U" and ids.ndim == 1:
        return _encode_unicode_array(ids, read)
    parts = [s.encode("utf-8", "surrogatepass") for s in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
    off = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=off[1:])
    return np.frombuffer(b"".join(parts), np.uint8).copy(), off


def _encode_unicode_array(ids: np.ndarray, read=None) -> tuple[np.ndarray, np.ndarray]:
    n, w = ids.shape[0], ids.dtype.itemsize // 4
    bufs, lens_all = [], []
    for s in range(0, n, _CHUNK):
        chunk = read(ids, s, min(n, s + _CHUNK)) if read is not None else np.ascontiguousarray(ids[s:s + _CHUNK])
        if w == 0:
            lens_all.append(np.zeros(chunk.shape[0], np.int64))
            continue
        cp = chunk.view(np.uint32).reshape(chunk.shape[0], w)       # (m, w) code points, NUL padded
        if cp.size and int(cp.max()) < 128:
            nz = cp != 0
            lens = nz.sum(1)
            if lens.min() == w:                                     # every id fills the width
                bufs.append(cp.astype(np.uint8).reshape(-1))
                lens_all.append(lens.astype(np.int64))
                continue
            full = lens == 0
            if not (full | nz[np.arange(cp.shape[0]), np.maximum(lens - 1, 0)]).all():   # NULs inside an id
                lens = np.where(nz.any(1), w - np.argmax(nz[:, ::-1], axis=1), 0)
            lens = lens.astype(np.int64)
            keep = np.arange(w) < lens[:, None]
            bufs.append(cp.astype(np.uint8)[keep])
            lens_all.append(lens)
        else:
            b, o = encode_ids(chunk.tolist())
            bufs.append(b)
            lens_all.append(np.diff(o))
    lens = np.concatenate(lens_all) if lens_all else np.zeros(0, np.int64)
    off = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=off[1:])
    return (np.concatenate(bufs) if bufs else np.zeros(0, np.uint8)), off


@dataclass
class EncodedIds:
    """Ids already encoded: ``buf`` uint8 (B,), ``off`` int64 (n+1,), ``hashes`` uint64 (n,)."""

    buf: np.ndarray
    off: np.ndarray
    hashes: np.ndarray

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    @property
    def order(self) -> np.ndarray:
        """``argsort(hashes, kind="stable")``, computed once."""
        o = self.__dict__.get("_order")
        if o is None:
            o = self.__dict__["_order"] = np.argsort(self.hashes, kind="stable")
        return o

    @classmethod
    def of(cls, ids: Sequence[str] | np.ndarray, read=None) -> "EncodedIds":
        buf, off = encode_ids(ids, read)
        return cls(buf, off, hash_ids(buf, off))

    def decode(self, i: int) -> str:
        return decode_one(self.buf, self.off, i)

    def lengths(self) -> np.ndarray:
        return np.diff(self.off)


def hash_ids(buf: np.ndarray, off: np.ndarray) -> np.ndarray:
    """:func:`hash_segments`, in pure Python for a handful of ids (same values)."""
    n = off.shape[0] - 1
    if n < _SMALL:
        return np.array([hash_one(buf[off[i]:off[i + 1]].tobytes()) for i in range(n)], np.uint64)
    return hash_segments(buf, off)


def segments_equal(buf_a, off_a, ia, buf_b, off_b, ib) -> np.ndarray:
    """``bool (m,)``: is segment ``ia[j]`` of ``(buf_a, off_a)`` equal to segment ``ib[j]`` of ``(buf_b, off_b)``?"""
    ia, ib = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
    sa, la = np.asarray(off_a[ia], np.int64), np.asarray(off_a[ia + 1], np.int64) - np.asarray(off_a[ia], np.int64)
    sb, lb = np.asarray(off_b[ib], np.int64), np.asarray(off_b[ib + 1], np.int64) - np.asarray(off_b[ib], np.int64)
    out = la == lb
    j = np.flatnonzero(out & (la > 0))
    if j.shape[0]:
        eq = buf_a[_ranges(sa[j], la[j])] == buf_b[_ranges(sb[j], la[j])]
        starts = np.concatenate([[0], np.cumsum(la[j])[:-1]])
        out[j] = np.logical_and.reduceat(eq, starts)
    return out


def first_duplicate_encoded(buf: np.ndarray, off: np.ndarray, h: np.ndarray,
                            order: np.ndarray | None = None) -> int | None:
    """Index of the first id equal to an earlier one (as a set-based scan finds it), or None.

    ``order``: ``argsort(h, kind="stable")`` when already known.
    """
    order = np.argsort(h, kind="stable") if order is None else order      # (hash, index)
    hs = h[order]
    same = np.flatnonzero(hs[1:] == hs[:-1])
    if same.shape[0] == 0:
        return None
    # candidate pairs (earlier, later) with one hash; runs of three or more give every later one a pair
    run_first = np.maximum.accumulate(np.where(np.concatenate([[True], hs[1:] != hs[:-1]]),
                                               np.arange(hs.shape[0]), 0))
    later = order[same + 1]
    cand = np.argsort(later, kind="stable")
    for c in cand:                                          # ascending later index; stop at the first true one
        j = int(later[c])
        run = order[run_first[same[c] + 1]:same[c] + 1]
        run = run[run < j]
        if segments_equal(buf, off, run, buf, off, np.full(run.shape[0], j)).any():
            return j
    return None


def _pos_dtype(n: int):
    return np.uint32 if n < (1 << 32) else np.int64


# --------------------------------------------------------------------------- the table

class IdTable:
    """Ids of rows ``0..n-1`` in insertion order (see the module docstring)."""

    def __init__(self, buf: np.ndarray | None = None, off: np.ndarray | None = None,
                 hkey: np.ndarray | None = None, hpos: np.ndarray | None = None):
        self.buf = np.zeros(0, np.uint8) if buf is None else buf          # uint8 (B,)
        self.off = np.zeros(1, np.int64) if off is None else off          # int64 (n0+1,)
        if hkey is None:
            h = hash_segments(self.buf, self.off)
            order = np.argsort(h, kind="stable")
            hkey, hpos = h[order], order.astype(_pos_dtype(h.shape[0]))
        self.hkey = hkey                                                   # uint64 (n0,), sorted
        self.hpos = hpos                                                   # positions (n0,)
        self._extra: list[str] = []                                        # overlay: ids n0.., in order
        self._extra_pos: dict[str, int] = {}

    # ---- size
    @property
    def n_base(self) -> int:
        return int(self.off.shape[0]) - 1

    def __len__(self) -> int:
        return self.n_base + len(self._extra)

    # ---- lookup
    def find_encoded(self, buf: np.ndarray, off: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Positions ``int64 (m,)`` of the encoded ids (``-1`` where absent)."""
        m = h.shape[0]
        if self._extra and m > _SMALL:
            self.merge_overlay()            # many ids to find: one vectorised pass over the arrays instead
        out = np.full(m, -1, np.int64)
        if self._extra:
            for i in range(m):
                p = self._extra_pos.get(buf[off[i]:off[i + 1]].tobytes().decode("utf-8", "surrogatepass"))
                if p is not None:
                    out[i] = p
        if self.n_base == 0 or m == 0:
            return out
        lo = np.searchsorted(self.hkey, h, "left")
        hi = np.searchsorted(self.hkey, h, "right")
        one = np.flatnonzero((hi - lo == 1) & (out < 0))
        if one.shape[0]:
            p = np.asarray(self.hpos[lo[one]], np.int64)
            ok = segments_equal(buf, off, one, self.buf, self.off, p)
            out[one[ok]] = p[ok]
        for i in np.flatnonzero((hi - lo > 1) & (out < 0)):       # a hash shared by several ids (rare)
            cand = np.asarray(self.hpos[lo[i]:hi[i]], np.int64)
            ok = segments_equal(buf, off, np.full(cand.shape[0], i), self.buf, self.off, cand)
            if ok.any():
                out[i] = cand[np.argmax(ok)]
        return out

    def find(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Positions ``int64 (m,)`` of ``ids`` (``-1`` where absent)."""
        buf, off = encode_ids(ids)
        return self.find_encoded(buf, off, hash_ids(buf, off))

    def get(self, clip_id: str) -> int | None:
        p = int(self.find([clip_id])[0])
        return None if p < 0 else p

    def __contains__(self, clip_id) -> bool:
        return isinstance(clip_id, str) and self.get(clip_id) is not None

    # ---- position -> id
    def id_at(self, p: int) -> str:
        if p >= self.n_base:
            return self._extra[p - self.n_base]
        return self.buf[int(self.off[p]):int(self.off[p + 1])].tobytes().decode("utf-8", "surrogatepass")

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Object array of the ids at ``positions`` (any shape)."""
        positions = np.asarray(positions)
        out = np.empty(positions.shape, object)
        flat = out.reshape(-1)
        for j, p in enumerate(positions.reshape(-1).tolist()):
            flat[j] = self.id_at(p)
        return out

    def tolist(self) -> list[str]:
        n0 = self.n_base
        raw = self.buf.tobytes()
        off = np.asarray(self.off).tolist()
        if n0 and raw.isascii():            # byte offsets are character offsets
            s = raw.decode("ascii")
            base = [s[off[i]:off[i + 1]] for i in range(n0)]
        else:
            base = [raw[off[i]:off[i + 1]].decode("utf-8", "surrogatepass") for i in range(n0)]
        return base + list(self._extra)

    # ---- changes
    def append(self, ids: list[str]) -> None:
        """Append ids known to be new and unique (small calls go to the overlay)."""
        if len(self._extra) + len(ids) <= OVERLAY_MAX:
            n = len(self)
            self._extra.extend(ids)
            self._extra_pos.update(zip(ids, range(n, n + len(ids))))
            return
        buf, off = encode_ids(ids)
        self.append_encoded(buf, off, hash_ids(buf, off))

    def append_encoded(self, buf: np.ndarray, off: np.ndarray, h: np.ndarray,
                       order: np.ndarray | None = None) -> None:
        """Append encoded ids known to be new and unique, merging them (and the overlay) into the arrays.

        ``order``: ``argsort(h, kind="stable")`` when already known.
        """
        self.merge_overlay()
        n0, m = self.n_base, h.shape[0]
        if m == 0:
            return
        dt = _pos_dtype(n0 + m)
        order = np.argsort(h, kind="stable") if order is None else order
        hs = h[order]
        if n0 == 0:                                          # the first batch: no copies of the old arrays
            self.buf = np.asarray(buf, np.uint8)
            self.off = np.asarray(off, np.int64)
            self.hkey, self.hpos = hs, order.astype(dt)
            return
        self.buf = np.concatenate([self.buf, np.asarray(buf, np.uint8)])
        self.off = np.concatenate([np.asarray(self.off, np.int64), np.asarray(off[1:], np.int64) + int(self.off[-1])])
        at = np.searchsorted(self.hkey, hs, "right")        # after equal old hashes: (hash, position) order kept
        self.hkey = np.insert(np.asarray(self.hkey), at, hs)
        self.hpos = np.insert(np.asarray(self.hpos, dt), at, (order + n0).astype(dt))

    def merge_overlay(self) -> None:
        """Move the overlay ids into the arrays (copies the arrays into memory)."""
        if not self._extra:
            return
        extra = self._extra
        self._extra, self._extra_pos = [], {}
        buf, off = encode_ids(extra)
        self.append_encoded(buf, off, hash_ids(buf, off))

    def keep(self, keep: np.ndarray) -> None:
        """Keep the rows where ``keep`` (bool (n,)) is True, in their order; the rest are dropped."""
        self.merge_overlay()
        keep = np.asarray(keep, bool)
        off = np.asarray(self.off, np.int64)
        lens = np.diff(off)
        self.buf = np.asarray(self.buf)[np.repeat(keep, lens)]
        new_off = np.zeros(int(keep.sum()) + 1, np.int64)
        np.cumsum(lens[keep], out=new_off[1:])
        self.off = new_off
        hpos = np.asarray(self.hpos, np.int64)
        k = keep[hpos]
        rank = np.cumsum(keep) - 1                           # old position -> new position
        self.hkey = np.asarray(self.hkey)[k]
        self.hpos = rank[hpos[k]].astype(_pos_dtype(new_off.shape[0] - 1))

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"buf", "off", "hkey", "hpos"}`` of every id (the overlay merged in): what an index file stores."""
        self.merge_overlay()
        return {"buf": self.buf, "off": self.off, "hkey": self.hkey, "hpos": self.hpos}


def check_new_ids(table: IdTable, buf: np.ndarray, off: np.ndarray, h: np.ndarray,
                  order: np.ndarray | None = None) -> tuple[str | None, list[str], int]:
    """For an encoded batch of ids to add: ``(first duplicate within the batch or None,
    the first few ids already in ``table``, how many are)``."""
    dup = first_duplicate_encoded(buf, off, h, order)
    if dup is not None:
        return decode_one(buf, off, dup), [], 0
    found = np.flatnonzero(table.find_encoded(buf, off, h) >= 0)
    return None, [decode_one(buf, off, int(i)) for i in found[:5]], int(found.shape[0])


def decode_one(buf: np.ndarray, off: np.ndarray, i: int) -> str:
    """Segment ``i`` of ``(buf, off)`` as a str."""
    return buf[int(off[i]):int(off[i + 1])].tobytes().decode("utf-8", "surrogatepass")
