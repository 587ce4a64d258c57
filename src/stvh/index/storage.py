"""Multi-focus storage modes and the filter-matrix derivation (paper Sec. 5.4).

Two modes:

``all``
    every clip keeps its code at every focus: M x Y x K bits.
``compact``
    every clip keeps only its deepest code b_(Y) plus one K x K filter matrix F
    for the whole index; shallower codes are derived (Eq. 16-17)::

        b'_(Y-1) = F . b_(Y)
        b'_(t-1) = F . b'_(t)                     (t < Y, the real-valued chain)
        b~_(t)   = sign((b'_(t) - mu) / sigma)    mu, sigma: mean and (population)
                                                  std over the K entries of that
                                                  one code vector; sign(0) = +1;
                                                  sigma = 0 gives all +1

    The derivation runs once when codes are added or an index is loaded; the
    derived codes are cached in memory, the file keeps only b_(Y) and F.

Bit counting (Eq. 18): the paper counts ``M*K + K^2`` bits for compact mode,
i.e. one bit per filter entry.  Our F is real (float32, Eq. 16 multiplies by
it), so its actual size is ``32*K^2`` bits; :func:`storage_report` gives both
the paper count and the actual payload, and callers add the bytes on disk.

Pure numpy: the index never imports torch.  ``stvh.models.filter`` does the
same math in torch for training.
"""

from __future__ import annotations

import numpy as np

from .codes import pack_codes, unpack_codes

MODES = ("all", "compact")
_BATCH = 65536


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown storage mode {mode!r}: choose one of {MODES}")
    return mode


def check_filter(filter: np.ndarray | None, bits: int) -> np.ndarray:
    if filter is None:
        raise ValueError("compact mode needs the K x K filter matrix F (the CODES file has no 'filter')")
    f = np.asarray(filter, dtype=np.float32)
    if f.shape != (bits, bits):
        raise ValueError(f"filter must have shape ({bits}, {bits}), got {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("filter contains non-finite values")
    return f


def normalise_sign(x: np.ndarray) -> np.ndarray:
    """Eq. 17: ``sign((x - mu) / sigma)`` per code vector (last axis), sign(0)=+1, int8 ±1."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    # sigma > 0 never changes the sign; sigma == 0 means x == mu everywhere -> +1.
    return np.where(x - mu >= 0, 1, -1).astype(np.int8)


def derive_signs(deepest: np.ndarray, filter: np.ndarray, depth: int) -> np.ndarray:
    """±1 codes ``(..., K)`` at focus Y -> ``(..., Y, K)`` int8 with foci 1..Y-1 derived."""
    b = np.asarray(deepest)
    k = b.shape[-1]
    f = np.asarray(filter, dtype=np.float64)
    if f.shape != (k, k):
        raise ValueError(f"filter must have shape ({k}, {k}), got {f.shape}")
    out = np.empty(b.shape[:-1] + (depth, k), dtype=np.int8)
    out[..., depth - 1, :] = b
    cur = b.astype(np.float64)
    for t in range(depth - 1, 0, -1):       # focus t is index t-1
        cur = cur @ f.T                       # F . b' for each code (column vector)
        out[..., t - 1, :] = normalise_sign(cur)
    return out


def derive_packed(deepest: np.ndarray, filter: np.ndarray, depth: int, bits: int) -> np.ndarray:
    """Packed deepest codes ``uint8 (n, K/8)`` -> packed codes at all foci ``(n, Y, K/8)``."""
    deepest = np.asarray(deepest, dtype=np.uint8)
    n = deepest.shape[0]
    out = np.empty((n, depth, bits // 8), dtype=np.uint8)
    for s in range(0, n, _BATCH):
        signs = unpack_codes(deepest[s:s + _BATCH], bits)
        out[s:s + _BATCH] = pack_codes(derive_signs(signs, filter, depth))
    return out


# --------------------------------------------------------------------------- accounting

def storage_bits(mode: str, m: int, bits: int, depth: int) -> int:
    """Paper bit count: ``M*Y*K`` (all) or ``M*K + K^2`` (compact, Eq. 18)."""
    check_mode(mode)
    if mode == "all":
        return m * depth * bits
    return m * bits + bits * bits


def bits_per_clip(mode: str, bits: int, depth: int, m: int | None = None) -> float:
    """Bits stored per clip; in compact mode F's K^2 bits are shared by ``m`` clips when given."""
    check_mode(mode)
    if mode == "all":
        return float(depth * bits)
    if m:
        return storage_bits(mode, m, bits, depth) / m
    return float(bits)


def compression_ratio(m: int, bits: int, depth: int) -> float:
    """Eq. 18: ``(M*K + K^2) / (M*Y*K)``."""
    if m <= 0:
        return float("nan")
    return storage_bits("compact", m, bits, depth) / storage_bits("all", m, bits, depth)


def storage_report(mode: str, m: int, bits: int, depth: int) -> dict:
    """Storage of an index: paper count and actual code payload (both in bits)."""
    paper = storage_bits(mode, m, bits, depth)
    if mode == "all":
        actual = m * depth * bits
    else:
        actual = m * bits + (32 * bits * bits if depth > 1 else 0)   # depth 1 stores no F
    return {
        "mode": mode,
        "clips": m,
        "bits": bits,
        "depth": depth,
        "storage_bits": paper,                     # paper's count (F counted as K^2 bits)
        "storage_bits_actual": actual,             # F stored as float32: 32*K^2 bits
        "bits_per_clip": bits_per_clip(mode, bits, depth, m),
        "compression_ratio": (paper / (m * depth * bits)) if m else float("nan"),
    }
