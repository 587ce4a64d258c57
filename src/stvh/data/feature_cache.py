"""Feature cache: per-person per-frame RoI features of every clip, stored once.

On a CPU the backbone is far too slow to run every epoch, so ``stvh extract``
runs it once and stores ``roi (N, T, C, s, s)`` per clip. Layout (a folder)::

    FEATS/meta.json            backbone, weights hash, frame size, roi size, channels, reduction, version,
                               T, the dataset (resolved root, clip count, fingerprint)
    FEATS/pca.npz              optional channel projection (``reduction = "pca<k>"``)
    FEATS/shard-00000.h5       up to ``shard_size`` clips, one LZF-compressed dataset per clip (gzip before)
                               (float16, or float32 where float16 would underflow), each with the
                               fingerprint of its inputs as attribute ``fingerprint``
    ...

A shard is written to a temporary file and renamed when full, so a kill keeps
every finished shard and loses at most the clips of the shard in progress;
``stvh extract`` resumes from there. Reusing a cache made with another
backbone, weights, frame size or T is refused with :class:`CacheMismatch`;
:meth:`FeatureCacheWriter.sync` drops the clips whose inputs changed (their
shards are rewritten atomically) so that they are extracted again, and refuses
a cache of another dataset.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .errors import DataError
from .fingerprint import combine

FORMAT_VERSION = 1
# Keys whose values must agree between a cache and the extraction that reuses it.
IDENTITY_KEYS = ("format_version", "backbone", "weights_hash", "frame_size", "roi_size", "channels", "reduction")
# Compared only when the cache records them (caches of older versions do not).
LATER_KEYS = ("frames_per_clip",)
# Where each identity value comes from, for the messages.
SOURCES = {"backbone": "--backbone / model.backbone", "weights_hash": "--weights / model.weights",
           "frame_size": "--frame-size / extract.frame_size", "channels": "--pca / extract.pca",
           "reduction": "--pca / extract.pca", "frames_per_clip": "T: data.window or data.reader.frames_per_clip"}
_SHARD = re.compile(r"^shard-(\d+)\.h5$")
# How new shards are compressed: LZF (h5py's own filter) after byte shuffling writes 1.3x and reads 1.5x faster
# than gzip level 1 for 15 % more bytes; h5py reads either, so older gzip shards read as before.
COMPRESSION = {"compression": "lzf", "shuffle": True}


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


def read_meta(path: str | Path) -> dict:
    """``meta.json`` of the cache folder ``path`` (:class:`CacheError` naming it when missing or unreadable)."""
    return _read_meta(Path(path))


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
    nonzero = np.count_nonzero(x)
    flat = np.abs(x.reshape(-1)[::64])  # a probe: numpy's cast is 10-60x slower on values that underflow
    if np.count_nonzero((flat > 0) & (flat < 2.0 ** -25)) > 0.01 * max(np.count_nonzero(flat), 1):
        flat = np.abs(x.reshape(-1))
        if np.count_nonzero((flat > 0) & (flat < 2.0 ** -25)) > 0.01 * max(nonzero, 1):
            return x  # over 1 % of the values certainly round to 0 (below half the smallest subnormal)
    half = x.astype(np.float16)
    # a value is 0 in half only if it was 0 or underflowed; the sign bit masked off, -0 counts as 0
    lost = nonzero - np.count_nonzero(half.view(np.uint16) & 0x7FFF)
    # half overflows to inf from 65520 on (and NaN compares False): two passes, no temporary arrays
    if lost > 0.01 * max(nonzero, 1) or not (x.size == 0 or (x.max() < 65520.0 and x.min() > -65520.0)):
        return x
    return half


def _shards(path: Path) -> list[Path]:
    """Finished shards of a cache folder, in number order."""
    found = [(int(m.group(1)), p) for p in path.glob("shard-*.h5") if (m := _SHARD.match(p.name))]
    return [p for _, p in sorted(found)]


def _rewrite_without(shard: Path, drop: set[str]) -> None:
    """Rewrite ``shard`` without the clips ``drop`` (atomically; removed when nothing is left)."""
    h5py = _h5py()
    with h5py.File(shard, "r") as src:
        keep = [n for n in src.keys() if n.replace("|", "/") not in drop]
    if not keep:
        shard.unlink()
        return
    # built in memory and written as bytes, as in FeatureCacheWriter.flush (a full disk: one OSError)
    with h5py.File(shard, "r") as src, h5py.File(f"{shard.name}.mem", "w", driver="core",
                                                 backing_store=False) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in keep:
            src.copy(src[name], dst, name=name)  # data, compression and attributes as they are
        dst.flush()
        image = dst.id.get_file_image()
    with atomic_path(shard) as tmp:
        with open(tmp, "wb") as out:
            out.write(image)


class FeatureCacheWriter:
    """Append clips to a cache folder, resuming a previous run with the same identity.

    ``meta`` is the cache's identity (backbone, weights hash, frame size, ...,
    ``frames_per_clip``); an existing cache with other values is refused. Call
    :meth:`sync` with the dataset's clip fingerprints before adding clips.
    """

    def __init__(self, path: str | Path, meta: dict, shard_size: int = 32):
        self.path = Path(path)
        self.meta = {"format_version": FORMAT_VERSION, **meta}
        self.shard_size = shard_size
        self.path.mkdir(parents=True, exist_ok=True)
        self.recorded: dict = {}  # meta.json as an earlier extraction left it
        if (self.path / "meta.json").exists():
            old = self.recorded = _read_meta(self.path)
            for key in IDENTITY_KEYS + LATER_KEYS:
                if key in LATER_KEYS and (key not in old or key not in self.meta):
                    continue
                if old.get(key) != self.meta.get(key):
                    source = f" ({SOURCES[key]})" if key in SOURCES else ""
                    raise CacheMismatch(
                        f"{key} is {old.get(key)!r} in the cache but {self.meta.get(key)!r} now{source}; "
                        "use another --out folder or delete this one", path=self.path)
            self.meta = {**old, **self.meta}
        else:
            write_text_atomic(self.path / "meta.json", json.dumps(self.meta, indent=2))
        for stale in self.path.glob(".shard-*.tmp"):
            stale.unlink()
        self._stored = FeatureCache(self.path).fingerprints() if _shards(self.path) else {}
        self._pending: dict[str, tuple[np.ndarray, str | None]] = {}

    def done(self) -> set[str]:
        """Ids of the clips already stored in finished shards."""
        return set(self._stored)

    def sync(self, root: str | Path, fingerprints: dict[str, str]) -> dict[str, list[str]]:
        """Make the cache hold only current features of the dataset at ``root``.

        ``fingerprints`` are the dataset's ``{clip id: fingerprint}``. A cache
        recorded for another root is another dataset's (:class:`CacheMismatch`
        naming both) unless every clip it holds is in this dataset and at least
        half of them unchanged (the same dataset, moved or copied, then edited).
        Otherwise the clips whose inputs changed (or were never recorded, older
        caches) and the clips no longer in the dataset are removed, so that
        :meth:`done` leaves them to extract. Returns ``{"changed": ids,
        "dropped": ids, "unrecorded": ids}`` (unrecorded ⊆ changed).
        """
        root = str(Path(root).resolve())
        old_root = self.recorded.get("dataset")
        stored = self._stored
        same = sum(fingerprints.get(c) == f for c, f in stored.items())
        if stored and old_root and old_root != root and (2 * same < len(stored) or any(c not in fingerprints
                                                                                       for c in stored)):
            theirs = combine({c: str(f) for c, f in stored.items()})
            raise CacheMismatch(
                f"the cache holds features of {old_root} ({len(stored)} clips, fingerprint {theirs}), not of "
                f"{root} ({len(fingerprints)} clips, fingerprint {combine(fingerprints)}); use another --out "
                "folder for this dataset, or delete this one", path=self.path)
        changed = [c for c, f in stored.items() if c in fingerprints and f != fingerprints[c]]
        dropped = [c for c in stored if c not in fingerprints]
        unrecorded = [c for c in changed if stored[c] is None]
        self.remove(changed + dropped)
        if old_root != root:
            self.update_meta(dataset=root)  # before any clip of this dataset is added
        return {"changed": changed, "dropped": dropped, "unrecorded": unrecorded}

    def remove(self, clip_ids) -> None:
        """Remove stored clips; each shard holding one is rewritten atomically (a kill keeps old or new)."""
        drop = set(clip_ids) & set(self._stored)
        if not drop:
            return
        where = FeatureCache(self.path).shard_of()
        for shard in sorted({where[c] for c in drop}):
            _rewrite_without(shard, drop)
        for c in drop:
            del self._stored[c]

    def update_meta(self, **values) -> None:
        """Set non-identity values of ``meta.json`` (e.g. the dataset fingerprint after extraction)."""
        self.meta.update(values)
        write_text_atomic(self.path / "meta.json", json.dumps(self.meta, indent=2))

    def add(self, clip_id: str, roi: np.ndarray, fingerprint: str | None = None) -> None:
        """Queue ``roi (N, T, C, s, s)`` of a clip with the fingerprint of its inputs."""
        if clip_id in self._stored or clip_id in self._pending:
            raise ValueError(f"clip {clip_id} is already in the cache")
        self._pending[clip_id] = (to_storage_dtype(roi), fingerprint)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending clips as one new shard (atomically)."""
        if not self._pending:
            return
        h5py = _h5py()
        existing = _shards(self.path)
        index = int(_SHARD.match(existing[-1].name).group(1)) + 1 if existing else 0
        target = self.path / f"shard-{index:05d}.h5"
        # built in memory, then written as bytes: HDF5 meeting a full disk floods stderr and can crash,
        # a plain write raises one OSError naming the shard (stvh.outputs.os_error_message)
        with h5py.File(f"{target.name}.mem", "w", driver="core", backing_store=False) as fh:
            for key in IDENTITY_KEYS:
                fh.attrs[key] = json.dumps(self.meta.get(key))
            for clip_id, (roi, fingerprint) in self._pending.items():
                ds = fh.create_dataset(_dataset_name(clip_id), data=roi, chunks=roi.shape, **COMPRESSION)
                if fingerprint is not None:
                    ds.attrs["fingerprint"] = fingerprint
            fh.flush()
            image = fh.id.get_file_image()
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as out:
                out.write(image)
        self._stored.update((cid, fp) for cid, (_, fp) in self._pending.items())
        self._pending.clear()

    def stored_fingerprints(self) -> dict[str, str | None]:
        """``{clip id: fingerprint}`` of the clips in finished shards (``None``: not recorded)."""
        return dict(self._stored)

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
        self._fingerprints: dict[str, str | None] | None = None
        h5py = _h5py()
        for shard in _shards(self.path):
            try:
                with h5py.File(shard, "r") as fh:
                    for name in fh.keys():
                        self._where[name.replace("|", "/")] = shard
            except OSError as exc:
                raise CacheError(f"corrupt shard ({exc})", path=shard) from None

    def ids(self) -> list[str]:
        return list(self._where)

    def shard_of(self) -> dict[str, Path]:
        """``{clip id: shard file}``."""
        return dict(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, clip_id: str) -> bool:
        return clip_id in self._where

    def fingerprints(self) -> dict[str, str | None]:
        """``{clip id: fingerprint of its inputs}`` (``None`` where the cache did not record one)."""
        if self._fingerprints is None:
            h5py = _h5py()
            out: dict[str, str | None] = {}
            for shard in _shards(self.path):
                try:
                    with h5py.File(shard, "r") as fh:
                        for name, ds in fh.items():
                            fp = ds.attrs.get("fingerprint")
                            out[name.replace("|", "/")] = fp.decode() if isinstance(fp, bytes) else fp
                except OSError as exc:
                    raise CacheError(f"corrupt shard ({exc})", path=shard) from None
            self._fingerprints = out
        return dict(self._fingerprints)

    def check_inputs(self, fingerprints: dict[str, str], data: str | Path) -> list[str]:
        """Refuse features extracted from other inputs than the dataset ``data`` has now.

        ``fingerprints`` are the dataset's ``{clip id: fingerprint}``; clips the
        cache does not hold are not checked here. Raises :class:`CacheMismatch`
        naming the cache, the dataset, the first changed clip and the fix;
        returns the ids whose fingerprint the cache did not record (older caches).
        """
        stored = self.fingerprints()
        held = [c for c in fingerprints if c in stored]
        unrecorded = [c for c in held if stored[c] is None]
        changed = [c for c in held if stored[c] is not None and stored[c] != fingerprints[c]]
        if changed:
            origin = self.meta.get("dataset")
            came = f" (the cache was extracted from {origin})" if origin and origin != str(Path(data).resolve()) \
                else ""
            raise CacheMismatch(
                f"{len(changed)} of {len(held)} cached clips were extracted from other inputs than {data} has now "
                f"(boxes, frame numbers or frame files differ; first: {changed[0]}){came}; run `stvh extract "
                f"--data {data} --out {self.path}` (with your --config) to re-extract them", path=self.path)
        return unrecorded

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
