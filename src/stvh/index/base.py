"""One API for every index backend: :class:`CodeIndex`.

Semantics shared by all backends (numpy, faiss/auto, faiss-flat, short, kernel, milvus):

* ``add(ids, codes)`` appends rows; the order of ``add`` calls (and of the ids
  inside one call) is the *insertion order*.  ``remove`` keeps the relative
  order of the remaining rows.
* ``search(queries, k, focus)`` returns exact Hamming distances, ascending;
  ties are broken by insertion order (earlier rows first).  All backends
  return identical ids and distances.
* When ``k > len(index)``, ``len(index)`` results per query are returned
  (result arrays have shape ``(q, min(k, len(index)))``).
* ``focus`` is 1-based (1 = shallowest, visual-focused; ``depth`` = deepest,
  activity-focused); ``None`` means the deepest.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from .codes import CodeFileError, NpzMembers, advise_random, check_bits, pack_codes, read_rows, save_npz_atomic, scalar
from .ids import EncodedIds, IdTable, check_new_ids, first_duplicate_encoded
from .storage import check_filter, check_mode, derive_packed, storage_report

INDEX_FORMAT = "stvh-index"
INDEX_VERSION = 2          # 2: codes (S, n, K/8) memory-mapped, compact ids; 1 still loads
_LABEL_CHUNK = 1 << 20     # rows per step when coding group names
_OVERLAY_CALL = 64         # adds of at most this many ids go to the id table's overlay
EXTRA_PREFIX = "engine/"   # members saved by InMemoryIndex._extra_arrays


class IndexFileError(CodeFileError):
    """An index file that cannot be loaded; the message names the file."""


class DuplicateIdError(ValueError):
    """An id given twice in one call, or already present in the index."""


class UnknownIdError(KeyError, ValueError):
    """An id that is not in the index (a KeyError, and a ValueError for one-line CLI errors)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- helpers

def as_id_list(ids: Iterable[str] | str | np.ndarray) -> list[str]:
    if isinstance(ids, (str, bytes)):
        ids = [ids]
    out = []
    for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids):
        if isinstance(i, bytes):
            i = i.decode()
        if not isinstance(i, str):
            raise TypeError(f"clip ids must be strings, got {type(i).__name__} {i!r}")
        if not i:
            raise ValueError("clip ids must be non-empty strings")
        out.append(i)
    return out


def first_duplicate(ids: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    return None


def _short(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    s = ", ".join(repr(x) for x in items[:n])
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_k(k: Any) -> int:
    """``k`` (results per query) as int, or ValueError: every search entry point calls this."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


# --------------------------------------------------------------------------- API

class CodeIndex(ABC):
    """Exact Hamming top-k over multi-focus binary codes (abstract)."""

    backend: ClassVar[str] = "?"

    @staticmethod
    def _ids_to_add(ids) -> list[str]:
        """The ids of an ``add`` call as a list, refusing duplicates within the call."""
        ids = as_id_list(ids)
        dup = first_duplicate(ids)
        if dup is not None:
            raise DuplicateIdError(f"duplicate id {dup!r} in this add() call")
        return ids

    def __init__(self, bits: int, depth: int = 1, *, mode: str = "all",
                 filter: np.ndarray | None = None, meta: dict | None = None):
        self._bits = check_bits(bits)
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self._depth = int(depth)
        self._mode = check_mode(mode)
        if mode == "compact" and self._depth > 1:
            self._filter = check_filter(filter, self._bits)
        else:
            self._filter = None if filter is None else check_filter(filter, self._bits)
        self.meta: dict = dict(meta or {})

    # ---- properties
    @property
    def bits(self) -> int:
        return self._bits

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def filter(self) -> np.ndarray | None:
        return self._filter

    @property
    def nbytes_code(self) -> int:
        return self._bits // 8

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, clip_id: str) -> bool: ...

    # ---- validation shared by backends
    def focus_index(self, focus: int | None) -> int:
        """1-based focus (None = deepest) -> 0-based depth index, or ValueError."""
        if focus is None:
            return self._depth - 1
        if isinstance(focus, bool) or not isinstance(focus, (int, np.integer)) or not 1 <= focus <= self._depth:
            raise ValueError(f"unknown focus {focus!r}: this index has foci 1..{self._depth} "
                             f"(1 = shallowest, {self._depth} = deepest)")
        return int(focus) - 1

    def _packed(self, a: np.ndarray, what: str) -> np.ndarray:
        """Packed uint8 (..., K/8) or ±1 values (..., K) -> packed uint8 (..., K/8)."""
        a = np.asarray(a)
        nb, k = self.nbytes_code, self._bits
        if a.ndim == 0:
            raise ValueError(f"{what} must be an array of codes, got a scalar")
        last = a.shape[-1]
        if a.dtype == np.uint8 and last == nb:
            return a
        if last == k and a.dtype != np.uint8 and (np.issubdtype(a.dtype, np.integer)
                                                   or np.issubdtype(a.dtype, np.floating)
                                                   or a.dtype == np.bool_):
            try:
                return pack_codes(a)
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from None
        if last == nb:
            raise ValueError(f"{what}: packed codes must be uint8, got {a.dtype}")
        if last == k and a.dtype == np.uint8:
            raise ValueError(f"{what}: a uint8 array of {k} values per code is ambiguous: pass packed codes "
                             f"(uint8, {nb} bytes) or ±1 codes as a signed/bool array")
        raise ValueError(f"{what}: wrong code length: last dimension is {last}, but this {k}-bit index "
                         f"takes packed uint8 codes of {nb} bytes or ±1 codes of {k} values")

    def prepare_add_codes(self, codes: np.ndarray, n: int) -> np.ndarray:
        """Codes for ``n`` new rows -> packed ``(n, depth, K/8)`` at every focus.

        Accepted: ``(n, depth, ·)`` codes at every focus; ``(n, ·)`` when
        depth is 1, or in compact mode (then it is the deepest code).  In
        compact mode only the deepest code is kept; shallower ones are
        derived with the filter (given shallower codes are ignored).
        """
        p = self._packed(codes, "codes")
        compact = self._mode == "compact"
        if p.ndim == 2 and (self._depth == 1 or compact):
            p = p[:, None, :]
        if p.ndim != 3 or p.shape[0] != n or p.shape[1] not in ((1, self._depth) if compact else (self._depth,)):
            want = f"({n}, {self._depth}, K)" + (f" or ({n}, K)" if self._depth == 1 or self._mode == "compact" else "")
            raise ValueError(f"codes for {n} ids must have shape {want} (K = {self.nbytes_code} packed bytes "
                             f"or {self._bits} ±1 values), got {np.asarray(codes).shape}")
        if compact and self._depth > 1:
            return derive_packed(p[:, -1], self._filter, self._depth, self._bits)
        return np.ascontiguousarray(p, dtype=np.uint8)

    def prepare_queries(self, queries: np.ndarray, d: int) -> np.ndarray:
        """Query codes -> packed contiguous ``(q, K/8)``; ``(q, depth, ·)`` is sliced at depth index ``d``."""
        p = self._packed(queries, "query codes")
        if p.ndim == 1:
            p = p[None, :]
        elif p.ndim == 3:
            if p.shape[1] != self._depth:
                raise ValueError(f"query codes of shape {np.asarray(queries).shape}: the middle axis must be "
                                 f"the {self._depth} foci")
            p = p[:, d, :]
        elif p.ndim != 2:
            raise ValueError(f"query codes must have shape (K), (q, K) or (q, depth, K); got {np.asarray(queries).shape}")
        return np.ascontiguousarray(p, dtype=np.uint8)

    def prepare_labels(self, n: int, activity, group) -> tuple[np.ndarray, np.ndarray]:
        act = np.full(n, -1, np.int64) if activity is None else np.asarray(activity)
        if act.shape != (n,) or (n and not np.issubdtype(act.dtype, np.integer)):
            raise ValueError(f"activity must be {n} integers, got {act.dtype} {act.shape}")
        if isinstance(group, np.ndarray) and group.dtype.kind == "U" and group.shape == (n,):
            return act.astype(np.int64, copy=False), group          # a str array: no Python strings
        grp = np.asarray([""] * n if group is None else group, dtype=object)
        if grp.shape != (n,) or not all(isinstance(g, str) for g in grp):
            raise ValueError(f"group must be {n} strings, got shape {grp.shape}")
        return act.astype(np.int64), grp

    # ---- the API
    @abstractmethod
    def add(self, ids, codes, *, activity=None, group=None) -> None:
        """Append rows (see :meth:`prepare_add_codes` for code shapes); ids must be new and unique."""

    @abstractmethod
    def remove(self, ids) -> None:
        """Remove rows by id; every id must be present (UnknownIdError otherwise)."""

    @abstractmethod
    def search(self, queries, k: int, focus: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: ``(ids object (q, k'), distances int32 (q, k'))``, k' = min(k, len)."""

    @abstractmethod
    def codes_of(self, ids, focus: int | None = None) -> np.ndarray:
        """Packed codes ``(n, K/8)`` of stored clips at ``focus`` (derived ones in compact mode)."""

    @abstractmethod
    def labels_of(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """``(activity int64 (n,), group object (n,))`` of stored clips."""

    @abstractmethod
    def save(self, path: str | Path) -> None:
        """Persist atomically (temp file + fsync + rename)."""

    def close(self) -> None:
        """Release external resources (Milvus connection); in-memory backends: no-op."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @classmethod
    def load(cls, path: str | Path, **kw) -> "CodeIndex":
        """Load any saved index; dispatches on the backend recorded in the file."""
        return load_index(path, **kw)

    def storage(self) -> dict:
        return storage_report(self._mode, len(self), self._bits, self._depth)

    def describe(self) -> dict:
        return {"backend": self.backend, "bits": self._bits, "depth": self._depth, "mode": self._mode,
                "clips": len(self)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(backend={self.backend!r}, bits={self._bits}, depth={self._depth}, "
                f"mode={self._mode!r}, n={len(self)})")


# --------------------------------------------------------------------------- in-memory rows

class InMemoryIndex(CodeIndex):
    """Rows kept in insertion order; subclasses provide the top-k engine.

    Layout: codes ``(depth, capacity, K/8)`` so that each focus is one
    contiguous ``(n, K/8)`` block (what FAISS and the scans read); ids in an
    :class:`~stvh.index.ids.IdTable` (one byte buffer + offsets + sorted
    hashes); activity as the smallest signed integer type that holds it;
    group as small unsigned codes into a table of group names.

    After :func:`load_index` of a version-2 file every array is a read-only
    memory map of the file (only the pages a search or lookup touches become
    resident); the first ``add`` or ``remove`` copies the rows into memory.
    """

    def __init__(self, bits: int, depth: int = 1, *, mode: str = "all",
                 filter: np.ndarray | None = None, meta: dict | None = None):
        super().__init__(bits, depth, mode=mode, filter=filter, meta=meta)
        self._n = 0
        self._codes = np.empty((self._depth, 0, self.nbytes_code), np.uint8)
        self._table = IdTable()
        self._activity = np.empty(0, np.int8)
        self._group = np.empty(0, np.uint8)            # codes into _group_names
        self._group_names: list[str] = []
        self._group_code: dict[str, int] = {}
        self._version = 0          # bumped on every change; engines cache on it

    def __len__(self) -> int:
        return self._n

    def __contains__(self, clip_id) -> bool:
        return clip_id in self._table

    @property
    def ids(self) -> list[str]:
        return self._table.tolist()

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Object array of the ids at row ``positions`` (any shape)."""
        return self._table.ids_at(positions)

    def depth_codes(self, d: int) -> np.ndarray:
        """Contiguous packed ``(n, K/8)`` codes at depth index ``d`` (a view; do not modify)."""
        return self._codes[d, :self._n]

    # ---- rows
    def _reserve(self, need: int) -> None:
        cap = self._codes.shape[1]
        if need <= cap:
            return
        new = max(need, 2 * cap) if cap else need
        codes = np.empty((self._depth, new, self.nbytes_code), np.uint8)
        codes[:, :self._n] = self._codes[:, :self._n]
        self._codes = codes
        for name in ("_activity", "_group"):
            old = getattr(self, name)
            a = np.empty(new, old.dtype)
            a[:self._n] = old[:self._n]
            setattr(self, name, a)

    def _new_ids(self, ids) -> EncodedIds:
        """The ids of an ``add`` call, encoded; refuses empty ids, duplicates and ids already present."""
        if isinstance(ids, EncodedIds):
            enc = ids
        elif isinstance(ids, np.ndarray) and ids.dtype.kind == "U" and ids.ndim == 1:
            enc = EncodedIds.of(ids)                       # no Python strings for large arrays
        else:
            enc = EncodedIds.of(as_id_list(ids))
        if len(enc) and not enc.lengths().all():
            raise ValueError("clip ids must be non-empty strings")
        dup, present, count = check_new_ids(self._table, enc.buf, enc.off, enc.hashes, enc.order)
        if dup is not None:
            raise DuplicateIdError(f"duplicate id {dup!r} in this add() call")
        if count:
            more = f", ... ({count} in all)" if count > len(present) else ""
            raise DuplicateIdError(f"id(s) already in the index: {', '.join(map(repr, present))}{more}")
        return enc

    def add(self, ids, codes, *, activity=None, group=None) -> None:
        enc = self._new_ids(ids)
        n = len(enc)
        packed = self.prepare_add_codes(codes, n)
        act, grp = self.prepare_labels(n, activity, group)
        if n == 0:
            return
        self._append(enc, packed, act, grp)

    def _group_codes(self, grp: np.ndarray) -> np.ndarray:
        """Group names ``(n,)`` -> codes into ``_group_names`` (new names are appended to the table)."""
        def code(name: str) -> int:
            c = self._group_code.get(name)
            if c is None:
                c = self._group_code[name] = len(self._group_names)
                self._group_names.append(name)
            return c

        n = grp.shape[0]
        out = np.empty(n, np.int64)
        for s in range(0, n, _LABEL_CHUNK):
            part = read_rows(grp, s, s + _LABEL_CHUNK)            # plain reads of a memory-mapped column
            if part.shape[0] and (part == part[0]).all():
                out[s:s + _LABEL_CHUNK] = code(str(part[0]))
                continue
            names, inv = np.unique(part, return_inverse=True)
            out[s:s + _LABEL_CHUNK] = np.array([code(str(x)) for x in names.tolist()], np.int64)[inv.reshape(-1)]
        return out

    def _append(self, ids: EncodedIds | list[str], packed: np.ndarray, act: np.ndarray, grp: np.ndarray) -> None:
        enc = ids if isinstance(ids, EncodedIds) else EncodedIds.of(ids)
        n0, n = self._n, len(enc)
        self._reserve(n0 + n)
        gcodes = self._group_codes(grp)
        self._activity = _widen(self._activity, int_dtype(int(act.min()), int(act.max()), self._activity.dtype))
        self._group = _widen(self._group, uint_dtype(len(self._group_names) - 1, self._group.dtype))
        self._codes[:, n0:n0 + n] = packed.transpose(1, 0, 2)
        self._activity[n0:n0 + n] = act
        self._group[n0:n0 + n] = gcodes
        if n <= _OVERLAY_CALL:
            self._table.append([enc.decode(i) for i in range(n)])
        else:
            self._table.append_encoded(enc.buf, enc.off, enc.hashes, enc.order)
        self._n = n0 + n
        self._version += 1
        self._on_change(appended_from=n0)

    def remove(self, ids) -> None:
        ids = as_id_list(ids)
        dup = first_duplicate(ids)
        if dup is not None:
            raise DuplicateIdError(f"duplicate id {dup!r} in this remove() call")
        pos = self._table.find(ids) if ids else np.empty(0, np.int64)
        missing = [i for i, p in zip(ids, pos.tolist()) if p < 0]
        if missing:
            raise UnknownIdError(f"cannot remove id(s) not in the index: {_short(missing)}")
        if not ids:
            return
        keep = np.ones(self._n, bool)
        keep[pos] = False
        self._codes = np.ascontiguousarray(self._codes[:, :self._n][:, keep])
        self._table.keep(keep)
        self._activity = self._activity[:self._n][keep]
        self._group = self._group[:self._n][keep]
        self._n = int(keep.sum())
        self._version += 1
        self._on_change(appended_from=None)

    def _on_change(self, appended_from: int | None) -> None:
        """Hook for engines: rows were appended from ``appended_from``, or (None) rows were removed."""

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        """Hook for engines: arrays to save with the index (members ``engine/<name>``); default none.

        They describe the rows as saved; :meth:`_adopt_extra` gets them back after a load.
        """
        return {}

    def _adopt_extra(self, arrays: dict[str, np.ndarray]) -> None:
        """Hook for engines: the ``engine/<name>`` arrays of a loaded file (memory-mapped where the file
        allows), keyed by ``<name>``, called once the rows are loaded (``_version`` already set); default: ignore."""

    def positions(self, ids) -> np.ndarray:
        ids = as_id_list(ids)
        pos = self._table.find(ids) if ids else np.empty(0, np.int64)
        missing = [i for i, p in zip(ids, pos.tolist()) if p < 0]
        if missing:
            raise UnknownIdError(f"id(s) not in the index: {_short(missing)}")
        return pos

    def codes_of(self, ids, focus: int | None = None) -> np.ndarray:
        d = self.focus_index(focus)
        return self._codes[d, :self._n][self.positions(ids)]

    def labels_of(self, ids) -> tuple[np.ndarray, np.ndarray]:
        p = self.positions(ids)
        codes = np.asarray(self._group[p], np.int64)
        if codes.shape[0] and int(codes.max()) >= len(self._group_names):
            raise ValueError(f"group code {int(codes.max())} outside the table of {len(self._group_names)} "
                             "group names (a corrupt index file)")
        names = np.array(self._group_names + [""], dtype=object)
        return np.asarray(self._activity[p], np.int64), names[codes]

    # ---- search
    def search(self, queries, k: int, focus: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        d = self.focus_index(focus)
        q = self.prepare_queries(queries, d)
        kk = min(k, self._n)
        if kk == 0 or q.shape[0] == 0:
            return np.empty((q.shape[0], kk), object), np.empty((q.shape[0], kk), np.int32)
        pos, dist = self._search_positions(d, q, kk)
        return self._table.ids_at(pos), dist.astype(np.int32, copy=False)

    def search_positions(self, queries, k: int, focus: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` but returns row positions (insertion ranks) instead of ids."""
        k = check_k(k)
        d = self.focus_index(focus)
        q = self.prepare_queries(queries, d)
        kk = min(k, self._n)
        if kk == 0 or q.shape[0] == 0:
            return np.empty((q.shape[0], kk), np.int64), np.empty((q.shape[0], kk), np.int32)
        return self._search_positions(d, q, kk)

    @abstractmethod
    def _search_positions(self, d: int, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k row positions and distances at depth index d; 1 <= k <= len(self)."""

    # ---- persistence
    def save(self, path: str | Path) -> None:
        """Write a version-2 index file atomically (see docs/index.md, "Memory and file format").

        Saving over the file this index is mapped from is safe: the new file
        is written beside it and renamed over it; the old mapping stays valid.
        """
        n = self._n
        stored = self._codes[:, :n] if self._mode == "all" else self._codes[-1:, :n]   # (S, n, K/8)
        table = self._table.arrays()
        arrays: dict[str, Any] = {
            "format": np.array(INDEX_FORMAT), "version": np.array(INDEX_VERSION),
            "backend": np.array(self.backend), "bits": np.array(self._bits), "depth": np.array(self._depth),
            "mode": np.array(self._mode), "meta": np.array(json.dumps(self.meta, sort_keys=True)),
            "group_names": np.array(self._group_names, dtype=str) if self._group_names else np.zeros(0, "<U1"),
        }
        if self._filter is not None:
            arrays["filter"] = self._filter
        arrays.update({"activity": self._activity[:n], "group": self._group[:n],
                       "ids/off": table["off"], "ids/hash": table["hkey"], "ids/hash_pos": table["hpos"],
                       "ids/buf": table["buf"], "codes": stored})
        for name, a in self._extra_arrays().items():
            arrays[f"{EXTRA_PREFIX}{name}"] = a
        save_npz_atomic(path, arrays, align=64)

    @classmethod
    def _from_arrays(cls, path: Path, d: dict[str, np.ndarray], **kw) -> "InMemoryIndex":
        """An index from a file's members (``d``: memory maps for the large ones)."""
        version = kw.pop("version", 1)
        index = cls._from_v2(path, d, **kw) if version >= 2 else cls._from_v1(path, d, **kw)
        extra = {k[len(EXTRA_PREFIX):]: v for k, v in d.items() if k.startswith(EXTRA_PREFIX)}
        if extra:
            index._adopt_extra(extra)
        return index

    @classmethod
    def _from_v1(cls, path: Path, d: dict[str, np.ndarray], **kw) -> "InMemoryIndex":
        """Version 1: codes ``(n, S, K/8)``, ids and group as str arrays; read into memory."""
        bits, depth, mode = kw["bits"], kw["depth"], kw["mode"]
        for key in ("ids", "codes", "activity", "group"):
            if key not in d:
                raise IndexFileError(path, f"index file lacks key {key!r}")
        codes = d["codes"]
        stored = depth if mode == "all" else 1
        nb = bits // 8
        if codes.dtype != np.uint8 or codes.ndim != 3 or codes.shape[1:] != (stored, nb):
            raise IndexFileError(path, f"codes must be uint8 of shape (n, {stored}, {nb}) for mode {mode!r}, "
                                       f"got {codes.dtype} {codes.shape}")
        n = codes.shape[0]
        for key in ("ids", "activity", "group"):
            if d[key].shape != (n,):
                raise IndexFileError(path, f"{key} must have shape ({n},) to match codes, got {d[key].shape}")
        try:
            index = cls(bits, depth, mode=mode, filter=d.get("filter"), meta=kw.get("meta"))
            enc = _plain_ids(d["ids"])
            if mode == "compact" and depth > 1:
                full = derive_packed(codes[:, 0], index.filter, depth, bits)
            else:
                full = np.asarray(codes)
            if n:
                index._append(enc, full, np.asarray(d["activity"]).astype(np.int64),
                              np.asarray(d["group"]).astype(str))
        except ValueError as exc:
            raise IndexFileError(path, str(exc)) from exc
        return index

    @classmethod
    def _from_v2(cls, path: Path, d: dict[str, np.ndarray], **kw) -> "InMemoryIndex":
        """Version 2: codes ``(S, n, K/8)`` and the id table, kept as the memory maps they are."""
        bits, depth, mode = kw["bits"], kw["depth"], kw["mode"]
        for key in ("codes", "activity", "group", "group_names", "ids/buf", "ids/off", "ids/hash", "ids/hash_pos"):
            if key not in d:
                raise IndexFileError(path, f"index file lacks key {key!r}")
        buf, off, hkey, hpos = d["ids/buf"], d["ids/off"], d["ids/hash"], d["ids/hash_pos"]
        if off.dtype != np.int64 or off.ndim != 1 or off.shape[0] < 1:
            raise IndexFileError(path, f"ids/off must be int64 of shape (n + 1,), got {off.dtype} {off.shape}")
        n = off.shape[0] - 1
        stored = depth if mode == "all" else 1
        nb = bits // 8
        codes = d["codes"]
        if codes.dtype != np.uint8 or codes.shape != (stored, n, nb):
            raise IndexFileError(path, f"codes must be uint8 of shape ({stored}, {n}, {nb}) for mode {mode!r}, "
                                       f"got {codes.dtype} {codes.shape}")
        expect = {"ids/buf": (np.uint8, (int(off[-1]),)), "ids/hash": (np.uint64, (n,))}
        for key, (dt, shape) in expect.items():
            if d[key].dtype != dt or d[key].shape != shape:
                raise IndexFileError(path, f"{key} must be {np.dtype(dt)} of shape {shape}, got "
                                           f"{d[key].dtype} {d[key].shape}")
        for key, kind in (("ids/hash_pos", "iu"), ("activity", "iu"), ("group", "u")):
            if d[key].dtype.kind not in kind or d[key].shape != (n,):
                raise IndexFileError(path, f"{key} must be integers of shape ({n},) to match codes, "
                                           f"got {d[key].dtype} {d[key].shape}")
        if n and int(off[0]) != 0:
            raise IndexFileError(path, "ids/off must start at 0")
        names = d["group_names"]
        if names.ndim != 1 or (names.size and names.dtype.kind != "U"):
            raise IndexFileError(path, f"group_names must be a str array, got {names.dtype} {names.shape}")
        try:
            index = cls(bits, depth, mode=mode, filter=d.get("filter"), meta=kw.get("meta"))
            if "ids" in d:      # a hand-written file may give the ids as a plain str array instead
                if d["ids"].shape != (n,):
                    raise IndexFileError(path, f"ids must have shape ({n},) to match codes, got {d['ids'].shape}")
                enc = _plain_ids(d["ids"])
                table = IdTable(enc.buf, enc.off)
            else:
                table = IdTable(buf, off, hkey, hpos)
            if mode == "compact" and depth > 1:
                full = derive_packed(codes[0], index.filter, depth, bits)            # (n, depth, K/8)
                index._codes = np.ascontiguousarray(full.transpose(1, 0, 2))
            else:
                index._codes = codes
        except ValueError as exc:
            raise IndexFileError(path, str(exc)) from exc
        index._table = table
        index._activity, index._group = d["activity"], d["group"]
        for a in (table.buf, table.off, table.hkey, table.hpos, index._activity, index._group):
            advise_random(a)                  # lookups touch single pages: no read-ahead around them
        index._group_names = names.tolist()
        index._group_code = {g: i for i, g in enumerate(index._group_names)}
        index._n = n
        index._version += 1
        index._on_change(appended_from=0)
        return index


def _plain_ids(ids: np.ndarray) -> EncodedIds:
    """A str array of ids (version-1 files) -> encoded, refusing duplicates (ValueError)."""
    ids = np.asarray(ids)
    if ids.size and ids.dtype.kind != "U":
        raise ValueError(f"ids must be strings, got {ids.dtype}")
    enc = EncodedIds.of(ids.astype(str, copy=False) if ids.size else [])
    dup = first_duplicate_encoded(enc.buf, enc.off, enc.hashes)
    if dup is not None:
        raise ValueError(f"duplicate id {enc.decode(dup)!r}")
    return enc


def int_dtype(lo: int, hi: int, at_least=np.int8) -> np.dtype:
    """The smallest signed integer dtype (not below ``at_least``) holding ``lo..hi``."""
    for dt in (np.int8, np.int16, np.int32, np.int64):
        if np.dtype(dt).itemsize >= np.dtype(at_least).itemsize and \
                np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def uint_dtype(hi: int, at_least=np.uint8) -> np.dtype:
    """The smallest unsigned integer dtype (not below ``at_least``) holding ``0..hi``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if np.dtype(dt).itemsize >= np.dtype(at_least).itemsize and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def _widen(a: np.ndarray, dt: np.dtype) -> np.ndarray:
    return a if a.dtype == dt else a.astype(dt)


# --------------------------------------------------------------------------- registry / loading

_BACKENDS: dict[str, str] = {
    # name -> "module:Class" (imported on demand; milvus only when used)
    "numpy": "stvh.index.numpy_backend:NumpyIndex",
    "faiss": "stvh.index.faiss_backend:FaissIndex",
    "auto": "stvh.index.faiss_backend:FaissIndex",
    "faiss-flat": "stvh.index.faiss_backend:FaissFlatIndex",
    "short": "stvh.index.short_codes:ShortCodeIndex",
    "kernel": "stvh.index.kernel:KernelIndex",
    "mih": "stvh.index.faiss_backend:MIHIndex",
    "milvus": "stvh.index.milvus_backend:MilvusIndex",
}
BACKENDS = tuple(_BACKENDS)


def backend_class(name: str) -> type[CodeIndex]:
    if name not in _BACKENDS:
        raise ValueError(f"unknown index backend {name!r}: choose one of {BACKENDS}")
    import importlib
    mod, cls = _BACKENDS[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def create_index(backend: str = "faiss", bits: int = 64, depth: int = 1, **kw) -> CodeIndex:
    """A new empty index of ``backend`` ("faiss" = auto, "numpy", "short", "faiss-flat", "kernel", "milvus")."""
    return backend_class(backend)(bits, depth, **kw)


def load_index(path: str | Path, *, backend: str | None = None, **kw) -> CodeIndex:
    """Load an index saved by any backend.

    ``backend`` overrides the engine for in-memory indexes (numpy / faiss /
    short / faiss-flat / kernel share one file format); Milvus manifests always
    reconnect to Milvus.
    """
    path = Path(path)
    members = NpzMembers(path, "index", IndexFileError)
    missing = [k for k in ("format", "backend", "bits", "depth", "mode") if k not in members]
    if missing:
        raise IndexFileError(path, f"index file lacks key(s) {missing} (has {sorted(members.files)})")
    d = members.load(mmap=True)
    if str(d["format"]) != INDEX_FORMAT:
        raise IndexFileError(path, f"not an stvh index (format {str(d['format'])!r})")
    version = scalar(d, "version", path, error=IndexFileError) if "version" in d else 1
    if version > INDEX_VERSION:
        raise IndexFileError(path, f"index format version {version} is newer than this stvh supports "
                                   f"({INDEX_VERSION})")
    saved = str(d["backend"])
    bits = scalar(d, "bits", path, error=IndexFileError)
    depth = scalar(d, "depth", path, error=IndexFileError)
    mode = str(d["mode"])
    try:
        check_bits(bits)
        check_mode(mode)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
    except ValueError as exc:
        raise IndexFileError(path, str(exc)) from exc
    meta = {}
    if "meta" in d:
        try:
            meta = json.loads(str(d["meta"]))
        except json.JSONDecodeError as exc:
            raise IndexFileError(path, f"meta is not valid JSON: {exc}") from exc
    if saved not in _BACKENDS:
        raise IndexFileError(path, f"unknown backend {saved!r} recorded in the file")
    if saved == "milvus":
        cls = backend_class("milvus")
        return cls._from_manifest(path, d, bits=bits, depth=depth, mode=mode, meta=meta, **kw)
    name = backend or saved
    if name == "milvus":
        raise ValueError("cannot load an in-memory index file as a Milvus index; rebuild it with backend='milvus'")
    cls = backend_class(name)
    return cls._from_arrays(path, d, bits=bits, depth=depth, mode=mode, meta=meta, version=version, **kw)
