"""Index and search binary codes: exact Hamming top-k over multi-focus codes.

* :mod:`.codes` -- the CODES file (``stvh encode`` output), pack/unpack.
* :mod:`.base` -- the one API, :class:`CodeIndex`; :func:`create_index`, :func:`load_index`.
* backends: ``faiss`` (default, auto: short-code tables for large K <= 32 indexes, else a flat
  scan by stvh's C kernel :mod:`.kernel`, or FAISS when it is not built), ``faiss-flat``,
  ``kernel``, ``short``, ``numpy`` (reference), ``milvus`` (scale-out, optional extra).
* :mod:`.storage` -- ``all`` / ``compact`` multi-focus storage (paper Eq. 16-18).
* :mod:`.commands` -- what ``stvh index build`` and ``stvh search`` run.
"""

from .base import (BACKENDS, CodeIndex, DuplicateIdError, IndexFileError, InMemoryIndex, UnknownIdError,
                   backend_class, create_index, load_index)
from .codes import VALID_BITS, CodeFileError, CodeSet, pack_codes, unpack_codes
from .commands import build_index, format_results, search_index
from .storage import MODES, bits_per_clip, compression_ratio, derive_packed, derive_signs, storage_bits

__all__ = [
    "BACKENDS", "CodeIndex", "InMemoryIndex", "DuplicateIdError", "IndexFileError", "UnknownIdError",
    "backend_class", "create_index", "load_index",
    "VALID_BITS", "CodeFileError", "CodeSet", "pack_codes", "unpack_codes",
    "build_index", "search_index", "format_results",
    "MODES", "bits_per_clip", "compression_ratio", "derive_packed", "derive_signs", "storage_bits",
]
