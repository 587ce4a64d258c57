"""``splits.json`` support: a user- or generator-given split overrides the official one.

Format: ``{"train": ["video/clip", ...], "test": [...], "val": [...]}`` (any split
names). Clips not listed get the split ``""``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import FormatError


def read_splits(root: str | Path) -> dict[str, str] | None:
    """Map clip id → split name from ``root/splits.json``; ``None`` when absent."""
    path = Path(root) / "splits.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"cannot parse JSON ({exc})", path=path) from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise FormatError('expected {"split": ["video/clip", ...], ...}', path=path)
    out: dict[str, str] = {}
    for split, ids in data.items():
        for cid in ids:
            if str(cid) in out:
                raise FormatError(f"clip {cid} is listed in both {out[str(cid)]!r} and {split!r}", path=path)
            out[str(cid)] = split
    return out


def unit_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``(seed, text)``: seeded, order-independent clip partitions."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
