"""Feature cache: per-person per-frame RoI features of every clip, stored once.

On a CPU the backbone is far too slow to run every epoch, so ``stvh extract``
runs it once and stores ``roi (N, T, C, s, s)`` per clip. Layout (a folder)::

    FEATS/meta.json            backbone, weights hash, frame size, roi size, channels, reduction, version
    FEATS/pca.npz              optional channel projection (``reduction = "pca<k>"``)
    FEATS/shard-00000.h5       up to ``shard_size`` clips, one gzip-compressed dataset per clip
                               (float16, or float32 where float16 would underflow)
    ...

A shard is written to a temporary file and renamed when full, so a kill keeps
every finished shard and loses at most the clips of the shard in progress;
``stvh extract`` resumes from there. Reusing a cache made with another
backbone, weights or frame size is refused with :class:`CacheMismatch`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .errors import DataError

FORMAT_VERSION = 1
# Keys whose values must agree between a cache and the extraction that reuses it.
IDENTITY_KEYS = ("format_version", "backbone", "weights_hash", "frame_size", "roi_size", "channels", "reduction")


class CacheError(DataError):
    kind = "feature cache error"


class CacheMismatch(CacheError):
    kind = "feature cache mismatch"


def _read_meta(path: Path) -> dict:
    meta_path = path / "meta.json"
    try:
        return json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError("not a feature cache (meta.json missing)", path=path) from None
    except (OSError, ValueError) as exc:
        raise CacheError(f"cannot read ({exc})", path=meta_path) from None


def _h5py():
    import h5py
    return h5py


def _dataset_name(clip_id: str) -> str:
    return clip_id.replace("/", "|")


def to_storage_dtype(roi: np.ndarray) -> np.ndarray:
    """float16 when it represents the values (halves the cache); float32 when values would underflow.

    A randomly initialised backbone can give activations near 1e-8, below float16's
    smallest subnormal: casting would silently store zeros.
    """
    x = np.asarray(roi, dtype=np.float32)
    half = x.astype(np.float16)
    lost = np.count_nonzero((half == 0) & (x != 0))
    if lost > 0.01 * max(np.count_nonzero(x), 1) or not np.isfinite(half).all():
        return x
    return half


class FeatureCacheWriter:
    """Append clips to a cache folder, resuming a previous run with the same identity."""

    def __init__(self, path: str | Path, meta: dict, shard_size: int = 32):
        self.path = Path(path)
        self.meta = {"format_version": FORMAT_VERSION, **meta}
        self.shard_size = shard_size
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / "meta.json").exists():
            old = _read_meta(self.path)
            for key in IDENTITY_KEYS:
                if old.get(key) != self.meta.get(key):
                    raise CacheMismatch(
                        f"{key} is {old.get(key)!r} in the cache but {self.meta.get(key)!r} now; "
                        "use another --out folder or delete this one", path=self.path)
        else:
            write_text_atomic(self.path / "meta.json", json.dumps(self.meta, indent=2))
        for stale in self.path.glob(".shard-*.tmp"):
            stale.unlink()
        self._done = set(FeatureCache(self.path).ids()) if any(self.path.glob("shard-*.h5")) else set()
        self._pending: dict[str, np.ndarray] = {}

    def done(self) -> set[str]:
        """Ids of the clips already stored in finished shards."""
        return set(self._done)

    def add(self, clip_id: str, roi: np.ndarray) -> None:
        if clip_id in self._done or clip_id in self._pending:
            raise ValueError(f"clip {clip_id} is already in the cache")
        self._pending[clip_id] = to_storage_dtype(roi)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending clips as one new shard (atomically)."""
        if not self._pending:
            return
        h5py = _h5py()
        index = len(list(self.path.glob("shard-*.h5")))
        target = self.path / f"shard-{index:05d}.h5"
        with atomic_path(target) as tmp:
            with h5py.File(tmp, "w") as fh:
                for key in IDENTITY_KEYS:
                    fh.attrs[key] = json.dumps(self.meta.get(key))
                for clip_id, roi in self._pending.items():
                    fh.create_dataset(_dataset_name(clip_id), data=roi, chunks=roi.shape,
                                      compression="gzip", compression_opts=1, shuffle=True)
        self._done.update(self._pending)
        self._pending.clear()

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()


class FeatureCache:
    """Read a cache folder: ``cache[clip_id] -> roi (N, T, C, s, s)`` (float16 or float32)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise CacheMismatch(f"format version {self.meta.get('format_version')} is not {FORMAT_VERSION}",
                                path=self.path)
        self._where: dict[str, Path] = {}
        h5py = _h5py()
        for shard in sorted(self.path.glob("shard-*.h5")):
            try:
                with h5py.File(shard, "r") as fh:
                    for name in fh.keys():
                        self._where[name.replace("|", "/")] = shard
            except OSError as exc:
                raise CacheError(f"corrupt shard ({exc})", path=shard) from None

    def ids(self) -> list[str]:
        return list(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._where

    def check(self, **expected) -> None:
        """Refuse a cache whose identity differs from ``expected`` (e.g. backbone=...)."""
        for key, value in expected.items():
            if self.meta.get(key) != value:
                raise CacheMismatch(f"{key} is {self.meta.get(key)!r} in the cache, expected {value!r}",
                                    path=self.path)

    def load(self, clip_ids) -> dict[str, np.ndarray]:
        """Read many clips, opening each shard once."""
        h5py = _h5py()
        by_shard: dict[Path, list[str]] = {}
        for cid in clip_ids:
            if cid not in self._where:
                raise CacheError(f"clip {cid} is not in the cache (run `stvh extract` again to complete it)",
                                 path=self.path)
            by_shard.setdefault(self._where[cid], []).append(cid)
        out = {}
        for shard, ids in by_shard.items():
            try:
                with h5py.File(shard, "r") as fh:
                    for cid in ids:
                        out[cid] = fh[_dataset_name(cid)][()]
            except (OSError, KeyError) as exc:
                raise CacheError(f"corrupt shard ({exc})", path=shard) from None
        return out

    def __getitem__(self, clip_id: str) -> np.ndarray:
        return self.load([clip_id])[clip_id]
