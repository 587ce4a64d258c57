"""Fingerprints of what a feature cache and a run were built from (numpy and hashlib only).

Two kinds, both short hex digests (sha256, 16 hex digits):

* :func:`clip_fingerprint` — the inputs of one clip's RoI features: the clip's
  frame numbers, boxes, person mask and image size (the arrays the reader made
  from the annotation and track rows, hashed exactly) and every frame file the
  extractor decodes, by path relative to the dataset root, size and mtime. The
  *content* of frames and videos is not hashed: reading every video of an
  archive to check a cache would cost as much as extracting it; ``stat`` calls
  do not. A cache stores one per clip (:mod:`stvh.data.feature_cache`).
* :func:`data_fingerprint` — a dataset as a run sees it: every clip's arrays,
  labels, visual group and split, and the label vocabularies (no file stats: a
  run's features come from a cache whose clips are checked by the first kind).
  A run records it in ``run.json``.

Paths are relative to the dataset root, so a dataset moved (``mv``, or a copy
that keeps mtimes) keeps its fingerprints.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .clip import Clip, ClipDataset, ImageFrames, VideoFrames

VERSION = 1  # bump when what a fingerprint covers changes (old fingerprints then read as "changed")
_DIGITS = 16


def _update_array(h, a: np.ndarray, dtype) -> None:
    """Hash an array's dtype-normalised bytes and its shape (so (2, 3) and (3, 2) differ)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())


def _update_text(h, *parts) -> None:
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogateescape"))
        h.update(b"\x00")


def frame_files(clip: Clip) -> list[Path]:
    """The files the extractor decodes for ``clip`` (frame images, or the one video)."""
    if isinstance(clip.frames, ImageFrames):
        return list(clip.frames.paths)
    if isinstance(clip.frames, VideoFrames):
        return [clip.frames.path]
    return []


class _StatCache:
    """``os.stat`` once per file: clips of one video share it."""

    def __init__(self):
        self._seen: dict[str, tuple[int, int] | None] = {}

    def __call__(self, path: str) -> tuple[int, int] | None:
        if path not in self._seen:
            try:
                st = os.stat(path)
                self._seen[path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                self._seen[path] = None  # missing: the reader or the extractor says so
        return self._seen[path]


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` (a plain prefix cut for the reader's ``root / ...`` paths: relpath is slow)."""
    if path.startswith(root + os.sep):
        return path[len(root) + 1:]
    try:
        return os.path.relpath(path, root)
    except ValueError:  # another drive (Windows)
        return path


def clip_fingerprint(clip: Clip, root: str | Path, stat=None) -> str:
    """Fingerprint of the inputs of ``clip``'s RoI features (arrays exactly, frame files by size and mtime)."""
    stat = stat or _StatCache()
    h = hashlib.sha256()
    _update_text(h, "clip", VERSION, clip.image_size[0], clip.image_size[1])
    _update_array(h, clip.frame_ids, np.int64)   # (T,)
    _update_array(h, clip.boxes, np.float32)     # (T, N, 4)
    _update_array(h, clip.mask, np.bool_)        # (N,)
    if isinstance(clip.frames, VideoFrames):
        _update_array(h, np.asarray(clip.frames.indices), np.int64)
    root = str(Path(root))
    for path in map(os.fspath, frame_files(clip)):
        _update_text(h, _relative(path, root), stat(path))
    return h.hexdigest()[:_DIGITS]


def clip_fingerprints(clips, root: str | Path) -> dict[str, str]:
    """``{clip id: clip_fingerprint}`` (one ``stat`` per distinct file)."""
    stat = _StatCache()
    return {c.id: clip_fingerprint(c, root, stat) for c in clips}


def combine(fingerprints: dict[str, str]) -> str:
    """One fingerprint of many ``{clip id: fingerprint}`` (independent of their order)."""
    h = hashlib.sha256()
    for cid in sorted(fingerprints):
        _update_text(h, cid, fingerprints[cid])
    return h.hexdigest()[:_DIGITS]


def data_fingerprint(dataset: ClipDataset) -> str:
    """Fingerprint of a dataset as a run uses it: clip arrays, labels, groups, splits, vocabularies."""
    h = hashlib.sha256()
    _update_text(h, "data", VERSION, *dataset.activities, "|", *dataset.actions, "|")
    for c in sorted(dataset.clips, key=lambda c: c.id):
        _update_text(h, c.id, c.activity, c.group, c.split, c.tracked, c.key_index, *c.image_size)
        _update_array(h, c.frame_ids, np.int64)
        _update_array(h, c.boxes, np.float32)
        _update_array(h, c.mask, np.bool_)
        _update_array(h, c.actions, np.int64)
    return h.hexdigest()[:_DIGITS]


def data_identity(dataset: ClipDataset, root: str | Path) -> dict:
    """What ``run.json`` records about a run's data: resolved root, clip count and :func:`data_fingerprint`."""
    return {"data": str(Path(root).resolve()), "data_clips": len(dataset.clips),
            "data_fingerprint": data_fingerprint(dataset)}
