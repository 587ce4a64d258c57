"""The CODES file: binary codes of every clip at every focus, plus labels.

``stvh encode`` writes it, ``stvh index build`` reads it.  One ``.npz`` file,
written atomically (temporary file in the same folder, fsync, ``os.replace``),
holding no pickled objects (it loads with ``allow_pickle=False``):

============  ===================  ==============================================
key           dtype / shape        meaning
============  ===================  ==============================================
``format``    str scalar           ``"stvh-codes"``
``version``   int scalar           file format version (1)
``ids``       str (M,)             clip id ``"video/clip"``, unique
``codes``     uint8 (M, Y, K/8)    packed bits, ``np.packbits`` default
                                   (big-endian) order; bit 1 <-> code +1,
                                   bit 0 <-> code -1; depth index 0 is focus 1
                                   (shallowest), Y-1 is focus Y (deepest)
``bits``      int scalar           K, one of 16, 32, 64, 128
``depth``     int scalar           Y (number of foci), >= 1
``activity``  int64 (M,)           group-activity class index, -1 = unlabeled
``group``     str (M,)             group / subset name ("" when unknown)
``split``     str (M,)             "train" / "val" / "test" / ""
``filter``    float32 (K, K)       optional: the M-STVH filter matrix F (Eq. 16)
``meta``      str scalar (JSON)    model name, run, seed, activities (names), ...
============  ===================  ==============================================
"""

from __future__ import annotations

import io
import json
import mmap as mmap_module
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.atomic import atomic_path
from .ids import EncodedIds, first_duplicate_encoded

VALID_BITS = (16, 32, 64, 128)
CODES_FORMAT = "stvh-codes"
CODES_VERSION = 1


class CodeFileError(ValueError):
    """A CODES or index file that cannot be read; the message names the file."""

    def __init__(self, path: str | Path, message: str):
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


# --------------------------------------------------------------------------- bits

def check_bits(bits: int) -> int:
    """Return ``bits`` as int when it is a supported code length, else ValueError."""
    try:
        b = int(bits)
    except (TypeError, ValueError):
        raise ValueError(f"code length must be one of {VALID_BITS}, got {bits!r}") from None
    if b not in VALID_BITS or b != bits:
        raise ValueError(f"code length must be one of {VALID_BITS}, got {bits!r}")
    return b


def pack_codes(signs: np.ndarray, *, strict: bool = True) -> np.ndarray:
    """Pack codes ``(..., K)`` into bits ``uint8 (..., K/8)`` (bit = code > 0).

    ``strict=True`` (default) requires every value to be -1 or +1 (bool arrays
    are taken as bits).  ``strict=False`` packs any real array by its sign
    (``> 0`` -> 1), e.g. raw tanh outputs.
    """
    a = np.asarray(signs)
    if a.ndim == 0:
        raise ValueError("codes must have at least one dimension (the K code entries)")
    if a.shape[-1] % 8 != 0 or a.shape[-1] == 0:
        raise ValueError(f"code length {a.shape[-1]} is not a positive multiple of 8")
    if a.dtype == np.bool_:
        bits = a
    else:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"codes must be numeric or bool, got dtype {a.dtype}")
        if strict and a.size and not np.all((a == 1) | (a == -1)):
            bad = a[(a != 1) & (a != -1)].ravel()[0].item()  # a Python number: 0.5, not np.float64(0.5)
            raise ValueError(f"codes must contain only -1 and +1 (found {bad!r}); "
                             "use strict=False to binarise real values by their sign")
        bits = a > 0
    return np.packbits(bits, axis=-1)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``uint8 (..., K/8)`` -> ``int8 (..., K)`` in {-1, +1}."""
    p = np.asarray(packed)
    if p.dtype != np.uint8:
        raise ValueError(f"packed codes must be uint8, got {p.dtype}")
    if p.ndim == 0 or p.shape[-1] * 8 != bits:
        raise ValueError(f"packed codes of {bits} bits need last dimension {bits // 8}, "
                         f"got shape {p.shape}")
    b = np.unpackbits(p, axis=-1).astype(np.int8)
    return b * 2 - 1


# --------------------------------------------------------------------------- atomic io

def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` via ``write(fh)`` through :func:`stvh.data.atomic.atomic_path`.

    Temp file beside ``path``, fsync, rename: a crash leaves the previous file
    (or none); a temp left by a hard kill is removed by the next write of the
    same target; the file gets the user's umask like every other stvh file.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()


def save_npz_atomic(path: str | Path, arrays: Mapping[str, Any], *, align: int | None = None) -> None:
    """``np.savez`` (uncompressed) to ``path`` atomically.

    ``align`` (e.g. 64): pad members (``pad/<i>``, zeros, ignored by readers)
    are put before every array of at least ``align`` bytes so that its data
    starts at a multiple of ``align`` in the file, so that memory-mapping it
    gives an aligned array (numpy copies unaligned arrays in searchsorted).
    """
    arrays = {k: np.asanyarray(v) for k, v in arrays.items()}
    if align:
        arrays = _aligned_layout(arrays, align)

    def write(fh):
        np.savez(fh, **arrays)
    atomic_write(path, write)


_ZIP_LOCAL = 30 + 20      # zip local header + the zip64 extra field np.savez asks for


def _npy_header_size(a: np.ndarray) -> int:
    bio = io.BytesIO()
    np.lib.format.write_array_header_1_0(bio, np.lib.format.header_data_from_array_1_0(a))
    return bio.tell()


def _aligned_layout(arrays: dict[str, np.ndarray], align: int) -> dict[str, np.ndarray]:
    """``arrays`` with pad members inserted so that each large member's data is ``align``-aligned."""
    out: dict[str, np.ndarray] = {}
    pos = 0

    def member_size(name: str, a: np.ndarray) -> int:
        return _ZIP_LOCAL + len((name + ".npy").encode()) + _npy_header_size(a) + a.nbytes

    for i, (key, a) in enumerate(arrays.items()):
        if a.nbytes >= align and not a.dtype.hasobject:
            start = pos + _ZIP_LOCAL + len((key + ".npy").encode()) + _npy_header_size(a)
            if start % align:
                pad_name = f"pad/{i}"
                for extra in range(align):          # the pad member's own header is part of the shift
                    pad = np.zeros(extra, np.uint8)
                    if (start + member_size(pad_name, pad)) % align == 0:
                        out[pad_name] = pad
                        pos += member_size(pad_name, pad)
                        break
        out[key] = a
        pos += member_size(key, a)
    return out


class NpzMembers:
    """The members of an uncompressed ``.npz`` without reading their data.

    The zip directory and each member's local header and ``.npy`` header are
    parsed; :meth:`array` memory-maps a member at its offset in the file
    (an uncompressed member's bytes are contiguous) or reads a small one.
    Errors are ``error(path, ...)`` naming the file.
    """

    def __init__(self, path: str | Path, what: str, error: type["CodeFileError"]):
        self.path, self.what, self.error = Path(path), what, error
        path = self.path
        if not path.exists():
            raise error(path, f"{what} file not found")
        if path.is_dir():
            raise error(path, f"{what} path is a directory, expected an .npz file")
        self.members: dict[str, tuple[np.dtype, tuple, bool, int]] = {}   # key -> dtype, shape, fortran, offset
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                if fh.read(6) == b"\x93NUMPY":
                    raise error(path, f"not a {what} file (a bare .npy array, expected .npz)")
                with zipfile.ZipFile(fh) as z:
                    infos = z.infolist()
                for info in infos:
                    key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise error(path, f"member {key!r} is compressed; stvh writes uncompressed .npz files")
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    if len(local) < 30 or local[:4] != b"PK\x03\x04":
                        raise zipfile.BadZipFile(f"bad local header of member {key!r}")
                    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") \
                        + int.from_bytes(local[28:30], "little")
                    fh.seek(start)
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy version {version} in member {key!r}")
                    if dtype.hasobject:
                        raise error(path, f"not a {what} file: it holds Python objects, which stvh never writes")
                    offset = fh.tell()
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if offset + nbytes > min(size, start + info.compress_size):
                        raise error(path, f"corrupt or truncated {what} file: member {key!r} is cut short")
                    self.members[key] = (dtype, tuple(shape), bool(fortran), offset)
        except CodeFileError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile,
                NotImplementedError, RuntimeError) as exc:
            raise error(path, f"corrupt or unreadable {what} file ({type(exc).__name__}: {exc})") from exc

    def __contains__(self, key: str) -> bool:
        return key in self.members

    @property
    def files(self) -> list[str]:
        return list(self.members)

    def array(self, key: str, mmap: bool = True) -> np.ndarray:
        """Member ``key``: a read-only ``np.memmap`` (``mmap`` and at least 64 KiB) or an in-memory array."""
        dtype, shape, fortran, offset = self.members[key]
        n = int(np.prod(shape, dtype=np.int64))
        try:
            if mmap and n * dtype.itemsize >= 65536:
                return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                 order="F" if fortran else "C")
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                a = np.frombuffer(fh.read(n * dtype.itemsize), dtype=dtype, count=n).copy()
        except (OSError, ValueError) as exc:
            raise self.error(self.path, f"corrupt or unreadable {self.what} file ({type(exc).__name__}: {exc})") \
                from exc
        return a.reshape(shape, order="F" if fortran else "C")

    def load(self, mmap: bool = True) -> dict[str, np.ndarray]:
        """Every member but the ``pad/*`` ones (large ones memory-mapped when ``mmap``)."""
        return {k: self.array(k, mmap) for k in self.members if not k.startswith("pad/")}


def read_rows(a: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """A copy of rows ``start:stop`` of ``a``; read from the file when ``a`` is a whole np.memmap.

    Plain reads of a memory-mapped member are several times faster than
    faulting its pages in, and they leave the process's resident set alone.
    """
    stop = a.shape[0] if stop is None else min(stop, a.shape[0])
    if isinstance(a, np.memmap) and isinstance(a.base, mmap_module.mmap) and a.flags.c_contiguous \
            and a.ndim >= 1 and stop > start:
        row = int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize
        try:
            out = np.fromfile(a.filename, dtype=np.uint8, count=(stop - start) * row, offset=a.offset + start * row)
        except OSError:  # pragma: no cover - fall back to the mapping
            return np.array(a[start:stop])
        if out.shape[0] == (stop - start) * row:
            return out.view(a.dtype).reshape((stop - start,) + a.shape[1:])
    return np.array(a[start:stop])


def advise_random(a: np.ndarray) -> None:
    """Tell the OS that a memory-mapped array is read at random places (best effort; no-op otherwise).

    Without it a page fault reads ahead and, on kernels with large page-cache
    folios, maps megabytes around the one page a lookup needs.
    """
    mm = getattr(a, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap_module, "MADV_RANDOM"):
        try:
            mm.madvise(mmap_module.MADV_RANDOM)
        except (ValueError, OSError):  # pragma: no cover - best effort
            pass


def release_pages(a: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array (view) from this process's resident set (best effort).

    The file's pages stay in the OS page cache; only the process's resident
    memory falls.  No-op for arrays that are not backed by a file mapping.
    """
    mm = getattr(a, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap_module, "MADV_DONTNEED") or a.size == 0:
        return
    try:
        base = np.frombuffer(mm, np.uint8).ctypes.data
        start = a.ctypes.data - base
        page = mmap_module.PAGESIZE
        lo = start - start % page
        hi = min(len(mm), start + a.nbytes)
        if 0 <= lo < hi:
            mm.madvise(mmap_module.MADV_DONTNEED, lo, hi - lo)
    except (ValueError, OSError, TypeError):  # pragma: no cover - best effort
        pass


def load_npz(path: str | Path, required: Sequence[str], what: str,
             error: type[CodeFileError] = CodeFileError) -> dict[str, np.ndarray]:
    """Read every member of an ``.npz`` into memory, or raise ``error`` (a :class:`CodeFileError`)."""
    path = Path(path)
    if not path.exists():
        raise error(path, f"{what} file not found")
    if path.is_dir():
        raise error(path, f"{what} path is a directory, expected an .npz file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise error(path, f"not a {what} file (a bare .npy array, expected .npz)")
        with z:
            data = {k: z[k] for k in z.files}
    except CodeFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError) as exc:
        if "pickle" in str(exc):  # numpy's advice names a Python argument: say what the file holds instead
            raise error(path, f"not a {what} file: it holds Python objects, which stvh never writes") from None
        raise error(path, f"corrupt or unreadable {what} file ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in required if k not in data]
    if missing:
        raise error(path, f"{what} file lacks key(s) {missing} (has {sorted(data)})")
    return data


def scalar(data: Mapping[str, np.ndarray], key: str, path, kind=int, error: type[CodeFileError] = CodeFileError):
    a = data[key]
    if a.ndim != 0:
        raise error(path, f"key {key!r} must be a scalar, got shape {a.shape}")
    try:
        return kind(a.item())
    except (TypeError, ValueError) as exc:
        raise error(path, f"key {key!r} has bad value {a.item()!r}") from exc


def str_array(values: Sequence[str] | np.ndarray, n: int, name: str) -> np.ndarray:
    a = np.asanyarray(values if values is not None else [""] * n)       # a np.memmap stays one
    if n == 0 and a.size == 0:
        return np.zeros(0, dtype="<U1")
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if a.dtype.kind not in "US":
        if a.dtype == object and all(isinstance(v, str) for v in a):
            a = a.astype(str)
        else:
            raise ValueError(f"{name} must hold strings, got dtype {a.dtype}")
    if not n:
        return np.zeros(0, dtype="<U1")
    return a if a.dtype.kind == "U" else a.astype(str)     # a str (memory-mapped) array is kept, not copied


# --------------------------------------------------------------------------- CodeSet

@dataclass
class CodeSet:
    """Binary codes of M clips at Y foci (see the module docstring for the file)."""

    ids: np.ndarray                       # str (M,)
    codes: np.ndarray                     # uint8 (M, Y, K/8)
    bits: int
    activity: np.ndarray | None = None    # int64 (M,), -1 unlabeled
    group: np.ndarray | None = None       # str (M,)
    split: np.ndarray | None = None       # str (M,)
    filter: np.ndarray | None = None      # float32 (K, K)
    meta: dict = field(default_factory=dict)
    _encoded: Any = field(default=None, init=False, repr=False, compare=False)   # EncodedIds of ids

    def __post_init__(self):
        self.bits = check_bits(self.bits)
        codes = np.asanyarray(self.codes)
        if codes.dtype != np.uint8:
            raise ValueError(f"codes must be packed uint8, got {codes.dtype} (use pack_codes or CodeSet.from_signs)")
        if codes.ndim == 2:
            codes = codes[:, None, :]
        if codes.ndim != 3 or codes.shape[2] != self.bits // 8 or codes.shape[1] < 1:
            raise ValueError(f"codes of {self.bits} bits must have shape (M, depth, {self.bits // 8}), "
                             f"got {codes.shape}")
        self.codes = codes if codes.flags.c_contiguous else np.ascontiguousarray(codes)
        m = codes.shape[0]
        self.ids = str_array(self.ids, m, "ids")
        # ids as one byte buffer + hashes (no Python strings; reused by InMemoryIndex.add)
        self._encoded = EncodedIds.of(self.ids, read=read_rows)
        dup = first_duplicate_encoded(self._encoded.buf, self._encoded.off, self._encoded.hashes,
                                      self._encoded.order)
        if dup is not None:
            raise ValueError(f"duplicate clip id {str(self.ids[dup])!r}")
        act = np.full(m, -1, np.int64) if self.activity is None else np.asanyarray(self.activity)
        if act.shape != (m,) or not (np.issubdtype(act.dtype, np.integer) or act.size == 0):
            raise ValueError(f"activity must be integers of shape ({m},), got {act.dtype} {act.shape}")
        self.activity = act.astype(np.int64, copy=False)
        self.group = str_array(self.group, m, "group")
        self.split = str_array(self.split, m, "split")
        if self.filter is not None:
            f = np.asarray(self.filter, dtype=np.float32)
            if f.shape != (self.bits, self.bits):
                raise ValueError(f"filter must have shape ({self.bits}, {self.bits}), got {f.shape}")
            if not np.all(np.isfinite(f)):
                raise ValueError("filter contains non-finite values")
            self.filter = f
        self.meta = dict(self.meta or {})

    # ---- construction helpers
    @classmethod
    def from_signs(cls, ids, signs: np.ndarray, **kw) -> "CodeSet":
        """Build from ±1 codes ``(M, Y, K)`` (or ``(M, K)`` for one focus)."""
        s = np.asarray(signs)
        if s.ndim == 2:
            s = s[:, None, :]
        return cls(ids=ids, codes=pack_codes(s), bits=s.shape[-1], **kw)

    @property
    def depth(self) -> int:
        return int(self.codes.shape[1])

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def signs(self, focus: int | None = None) -> np.ndarray:
        """±1 codes: ``(M, Y, K)``, or ``(M, K)`` at 1-based ``focus``."""
        if focus is None:
            return unpack_codes(self.codes, self.bits)
        return unpack_codes(self.codes[:, self._focus_index(focus)], self.bits)

    def _focus_index(self, focus: int) -> int:
        if isinstance(focus, bool) or not isinstance(focus, (int, np.integer)) or not 1 <= focus <= self.depth:
            raise ValueError(f"unknown focus {focus!r}: this code set has foci 1..{self.depth}")
        return int(focus) - 1

    # ---- io
    def save(self, path: str | Path) -> None:
        arrays = {
            "format": np.array(CODES_FORMAT), "version": np.array(CODES_VERSION),
            "ids": self.ids, "codes": self.codes, "bits": np.array(self.bits),
            "depth": np.array(self.depth), "activity": self.activity,
            "group": self.group, "split": self.split,
            "meta": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self.filter is not None:
            arrays["filter"] = self.filter
        save_npz_atomic(path, arrays, align=64)

    @property
    def encoded_ids(self):
        """The ids as a :class:`stvh.index.ids.EncodedIds` (byte buffer, offsets, hashes); computed once."""
        return self._encoded

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> "CodeSet":
        """Read a CODES file; ``mmap=True`` memory-maps its large arrays (read-only) instead of reading them.

        Memory-mapped or not, the ids are checked for duplicates without
        making Python strings (10M clips: a few seconds, bounded memory).
        """
        path = Path(path)
        members = NpzMembers(path, "CODES", CodeFileError)
        required = ["ids", "codes", "bits", "depth", "activity", "group", "split"]
        missing = [k for k in required if k not in members]
        if missing:
            raise CodeFileError(path, f"CODES file lacks key(s) {missing} (has {sorted(members.files)})")
        d = members.load(mmap=mmap)
        if "format" in d and str(d["format"]) != CODES_FORMAT:
            raise CodeFileError(path, f"not a CODES file (format {str(d['format'])!r}, expected {CODES_FORMAT!r})")
        bits = scalar(d, "bits", path)
        if bits not in VALID_BITS:
            raise CodeFileError(path, f"code length {bits} not supported (must be one of {VALID_BITS})")
        depth = scalar(d, "depth", path)
        codes = d["codes"]
        if codes.dtype != np.uint8 or codes.ndim != 3 or codes.shape[1:] != (depth, bits // 8):
            raise CodeFileError(path, f"codes must be uint8 of shape (M, {depth}, {bits // 8}) for "
                                      f"depth {depth} and {bits} bits, got {codes.dtype} {codes.shape}")
        m = codes.shape[0]
        for key in ("ids", "activity", "group", "split"):
            if d[key].shape != (m,):
                raise CodeFileError(path, f"{key} must have shape ({m},) to match codes, got {d[key].shape}")
        meta = {}
        if "meta" in d:
            try:
                meta = json.loads(str(d["meta"]))
            except json.JSONDecodeError as exc:
                raise CodeFileError(path, f"meta is not valid JSON: {exc}") from exc
        try:
            return cls(ids=d["ids"], codes=codes, bits=bits, activity=d["activity"], group=d["group"],
                       split=d["split"], filter=d.get("filter"), meta=meta)
        except ValueError as exc:
            raise CodeFileError(path, str(exc)) from exc
