"""The state behind the HTTP API, loaded once: index, model, dataset clips, uploads, image cache.

Everything here is plain Python (no HTTP): :class:`Service` answers the
questions of the routes in ``app.py`` and raises :class:`ServiceError` with
the HTTP status that fits (404 unknown id, 409 id taken, 422 bad parameter,
413 over a limit).

Concurrency: the index is read and changed only on the event loop's thread
(searches are sub-millisecond; writes are serialised by an ``asyncio.Lock`` and
save the index from a worker thread while no other write can start); the model
runs in worker threads under ``model_lock``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.clip import Clip
from ..data.errors import DataError
from ..index.base import check_k
from ..index.codes import pack_codes
from .catalogue import Catalogue
from .images import BytesCache, attention_png, keyframe_jpeg
from .settings import ConfigError, ServeSettings
from .uploads import NAME_RE, UploadedFile, UploadError, read_upload, remove_tree, shown_message, stage_upload

log = logging.getLogger("stvh.serve")

# a clip id is VIDEO/CLIP; each part printable, without '/', '\' or NUL, and neither '.' nor '..'
_ID_PART = r"(?!\.{1,2}(?:/|$))[^/\\\x00-\x1f\x7f]{1,128}"
ID_RE = re.compile(rf"{_ID_PART}/{_ID_PART}")
TOKEN_RE = re.compile(r"q[0-9a-f]{16}")
UPLOAD_SPLIT = "upload"
WATCH_SPLIT = "watch"  # clips ingested from --watch DIR (stvh.watch)


class ServiceError(Exception):
    """An error the API answers with ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_clip_id(clip_id: str) -> str:
    """A well-formed ``VIDEO/CLIP`` id, or 422: ids never reach the file system, but crafted ones are refused."""
    if not isinstance(clip_id, str) or not ID_RE.fullmatch(clip_id):
        raise ServiceError(422, f"invalid clip id {clip_id!r}: expected VIDEO/CLIP (no '..', '\\' or control "
                                "characters)")
    return clip_id


@dataclass
class UploadedQuery:
    """An uploaded clip kept for a while after a search: its codes, and its folder for pictures."""

    clip: Clip
    codes: np.ndarray      # packed uint8 (depth, K/8)
    activity: int          # predicted by the deepest head
    root: Path


class _Pending:
    """Stands for the index ``--watch`` creates once the run's model says its bits and depth."""

    ids: list = []


class Service:
    """Index + model + clips, loaded once (see the module doc)."""

    def __init__(self, settings: ServeSettings, encoder=None):
        from ..index.base import load_index

        self.settings = settings
        # guards writes beside the same-origin check (security.RequestGuard); printed at start-up
        self.token = settings.token or (secrets.token_urlsafe(24) if settings.allow_writes else None)
        fresh = settings.watch is not None and not Path(settings.index).exists()  # --watch starts an empty index
        self.index = _Pending() if fresh else load_index(settings.index)
        if not hasattr(self.index, "ids"):
            raise ConfigError(f"{settings.index}: stvh serve needs an in-memory index (numpy, faiss, kernel, "
                              f"short), not {self.index.backend}")
        if encoder is None:
            from ..train.encode import Encoder
            encoder = Encoder(settings.run, settings.checkpoint, settings.device)
        self.encoder = encoder
        if fresh:  # saved once everything below has loaded: a start that fails leaves no empty index behind
            from ..ingest import open_index
            self.index = open_index(Path(settings.index), encoder)
        if (encoder.bits, encoder.depth) != (self.index.bits, self.index.depth):
            raise ConfigError(f"run {settings.run} makes {encoder.bits}-bit codes at {encoder.depth} depths but the "
                              f"index {settings.index} holds {self.index.bits} bits at {self.index.depth} depths")
        self.activities = list(encoder.activities)
        self.actions = [str(a) for a in getattr(encoder, "actions", ())]
        self.model_lock = threading.Lock()
        self.images = BytesCache()
        self.queries: OrderedDict[str, UploadedQuery] = OrderedDict()
        self.max_queries = 32
        self._queries_lock = threading.Lock()
        self._write_lock = None  # asyncio.Lock, made on the event loop (see write_lock)
        self.dataset: dict[str, Clip] = {}
        self.data_root = self._load_dataset()
        first = next(iter(self.dataset.values()), None)
        self.frames_per_clip = settings.clip_frames or (first.num_frames if first else 10)
        self.n_max = settings.clip_persons or (int(first.boxes.shape[1]) if first else 12)
        self.uploads: dict[str, Clip] = {}
        self._restore_uploads()
        self.ingested: dict[str, Clip] = {}  # records of clips ingested from --watch DIR (pictures, details)
        self.watcher = None
        if settings.watch is not None:
            from ..watch import Watcher
            self.watcher = Watcher(self, settings.watch, poll=settings.watch_poll, settle=settings.watch_settle)
        self._codes_splits = self._splits_from_codes()
        self.rebuild_catalogue()
        if fresh:
            self.index.save(settings.index)

    # ------------------------------------------------------------------ loading
    def _load_dataset(self) -> Path | None:
        """Clips of ``--data`` (default: the run's dataset) by id; none when the run's data is gone."""
        from ..data.formats import read_dataset
        from ..train.encode import map_labels
        from ..train.extract import reader_kwargs

        given = self.settings.data
        root = Path(given) if given is not None else (Path(self.encoder.info["data"])
                                                       if self.encoder.info.get("data") else None)
        if root is None or (given is None and not root.is_dir()):
            log.warning("no dataset: key frames and clip details are unavailable (pass --data)")
            return None
        cfg = self.encoder.cfg
        ds = read_dataset(root, cfg["data"].get("format"), skip_bad=True, **reader_kwargs(cfg))
        map_labels(ds, tuple(self.activities))
        self.dataset = {c.id: c for c in ds.clips}
        return root

    def _splits_from_codes(self) -> dict[str, str]:
        """Splits of clips missing from the dataset, from the CODES file the index was built from."""
        from ..index.codes import CodeSet

        path = self.index.meta.get("codes")
        if not path or not Path(path).is_file() or all(i in self.dataset or i in self.uploads
                                                       for i in self.index.ids):
            return {}
        try:
            cs = CodeSet.load(path)
        except (ValueError, OSError):
            return {}
        return dict(zip(cs.ids.tolist(), cs.split.tolist()))

    def _restore_uploads(self) -> None:
        """Clips added by earlier sessions: every ``<uploads>/<name>/`` folder whose clip is in the index."""
        store = self.settings.uploads_dir
        if not store.is_dir():
            return
        for folder in sorted(store.iterdir()):
            if folder.name.startswith(".staging-"):
                remove_tree(folder)  # a write that never finished
            elif folder.is_dir() and NAME_RE.fullmatch(folder.name):
                try:
                    clips = read_upload(folder, {}, frames_per_clip=self.frames_per_clip, n_max=self.n_max,
                                        activities=tuple(self.activities))
                except UploadError as exc:
                    log.warning("uploaded clip folder %s skipped: %s", folder, exc.message)
                    continue
                self.uploads.update((c.id, c) for c in clips if c.id in self.index)

    # ------------------------------------------------------------------ catalogue
    def rebuild_catalogue(self) -> None:
        ids = self.index.ids
        activity, group = self.index.labels_of(ids) if ids else (np.empty(0, np.int64), np.empty(0, object))
        split = [self.split_of(i) for i in ids]
        self.catalogue = Catalogue(ids, activity, group, np.asarray(split, dtype=object))

    def split_of(self, clip_id: str) -> str:
        if clip_id in self.uploads:
            return UPLOAD_SPLIT
        if self.watcher is not None and clip_id in self.watcher.ids:
            return WATCH_SPLIT
        clip = self.dataset.get(clip_id)
        return clip.split if clip is not None else self._codes_splits.get(clip_id, "")

    def activity_name(self, a: int) -> str | None:
        return self.activities[a] if 0 <= a < len(self.activities) else None

    def activity_filter(self, value: str | None) -> int | None:
        """An activity filter given by name or number -> its id (422 when unknown)."""
        if value is None or value == "":
            return None
        if value.lstrip("-").isdigit():
            return int(value)
        if value in self.activities:
            return self.activities.index(value)
        raise ServiceError(422, f"unknown activity {value!r}: one of {self.activities} or a number")

    def list_clips(self, *, offset: int, limit: int, split: str | None, activity: str | None,
                   group: str | None, new: bool = False) -> dict:
        rows = self.catalogue.select(split or None, self.activity_filter(activity), group or None)
        if new:  # ingested from --watch DIR since the server started; catalogue rows are index positions
            fresh = [i for i in (self.watcher.new if self.watcher is not None else ()) if i in self.index]
            keep = np.zeros(len(self.catalogue), bool)
            keep[self.index.positions(fresh) if fresh else []] = True
            rows = rows[keep[rows]]
        page = rows[offset:offset + limit]
        cat = self.catalogue
        return {"total": int(len(rows)), "offset": offset, "limit": limit,
                "clips": [self._row(cat.ids[r], int(cat.activity[r]), cat.group[r], cat.split[r]) for r in page]}

    def _row(self, clip_id: str, activity: int, group: str, split: str) -> dict:
        return {"id": clip_id, "activity": activity, "activity_name": self.activity_name(activity),
                "group": group, "split": split}

    def facets(self) -> dict:
        """The values the clip filters take: splits, activities, groups (sorted)."""
        return {"splits": self.catalogue.splits, "activities": self.activities, "groups": self.catalogue.groups}

    # ------------------------------------------------------------------ clips
    def known(self, clip_id: str) -> None:
        check_clip_id(clip_id)
        if clip_id not in self.index:
            raise ServiceError(404, f"clip {clip_id!r} is not in the index")

    def clip_record(self, clip_id: str) -> Clip | None:
        return self.uploads.get(clip_id) or self.ingested.get(clip_id) or self.dataset.get(clip_id)

    def clip_detail(self, clip_id: str) -> dict:
        self.known(clip_id)
        act, grp = self.index.labels_of([clip_id])
        out = self._row(clip_id, int(act[0]), str(grp[0]), self.split_of(clip_id))
        out["source"] = "upload" if clip_id in self.uploads else "watch" if self.split_of(clip_id) == WATCH_SPLIT \
            else "dataset"
        clip = self.clip_record(clip_id)
        if clip is not None:
            real = np.flatnonzero(clip.mask)
            out.update({"frames": clip.num_frames, "persons": int(len(real)),
                        "image_size": [int(v) for v in clip.image_size], "key_index": int(clip.key_index),
                        "frame_ids": clip.frame_ids.tolist(), "has_frames": clip.frames is not None,
                        "boxes": np.round(clip.boxes[:, real], 1).tolist()})  # (T, persons, 4) x1 y1 x2 y2
        return out

    def keyframe(self, clip_id: str, width: int) -> bytes:
        self.known(clip_id)
        clip = self.clip_record(clip_id)
        if clip is None:
            raise ServiceError(404, f"clip {clip_id!r} has no record in the dataset (no frames or boxes to draw)")
        return self.images.get((clip_id, "key", width), lambda: self._render(keyframe_jpeg, clip, width))

    def query_keyframe(self, token: str, width: int) -> bytes:
        q = self.query(token)
        return self.images.get((token, "key", width), lambda: self._render(keyframe_jpeg, q.clip, width))

    @staticmethod
    def _render(fn, *args):
        try:
            return fn(*args)
        except DataError as exc:
            raise ServiceError(404, f"frames cannot be read: {exc}") from None

    def attention(self, clip_id: str) -> bytes:
        self.known(clip_id)
        clip = self.clip_record(clip_id)
        if clip is None:
            raise ServiceError(404, f"clip {clip_id!r} has no record in the dataset (no boxes for the model)")
        return self.images.get((clip_id, "attention"), lambda: self._attention(clip, cached=True))

    def query_attention(self, token: str) -> bytes:
        q = self.query(token)
        return self.images.get((token, "attention"), lambda: self._attention(q.clip, cached=False))

    def _attention(self, clip: Clip, cached: bool) -> bytes:
        from ..train.tensors import clips_to_tensors

        import torch

        roi = self._cached_roi(clip) if cached else None
        with self.model_lock:
            try:
                if roi is None:
                    roi = self.encoder.features([clip])
                inputs = clips_to_tensors([clip], roi).batch(torch.arange(1), self.encoder.device)
                return attention_png(self.encoder.model, inputs, clip, self.activities, self.actions)
            except DataError as exc:
                raise ServiceError(404, f"frames cannot be read: {exc}") from None
            except ValueError as exc:
                raise ServiceError(422, str(exc)) from None

    def _cached_roi(self, clip: Clip) -> dict | None:
        """The clip's RoI features from the run's feature cache, when it holds them."""
        feats = self.encoder.info.get("features")
        if self.encoder.backbone == "none" or not feats or not Path(feats).is_dir():
            return None
        from ..data.feature_cache import FeatureCache

        cache = FeatureCache(feats)
        return cache.load([clip.id]) if clip.id in cache else None

    # ------------------------------------------------------------------ search
    def search(self, *, clip: str | None = None, query: str | None = None, codes: list[str] | None = None,
               k: int = 10, focus: int | None = None) -> dict:
        """Top-k by Hamming distance at ``focus`` (1 = visual ... depth = activity; default the deepest).

        Exactly one of ``clip`` (an indexed clip, excluded from its own results),
        ``query`` (the token of an uploaded query) or ``codes`` (one hex string
        of K/8 packed bytes per depth) is the query.
        """
        if sum(x is not None for x in (clip, query, codes)) != 1:
            raise ServiceError(422, "give exactly one of clip (an indexed clip id), query (an uploaded query's "
                                    "token) or codes (hex codes, one per depth)")
        index = self.index
        try:
            k = check_k(k)
            d = index.focus_index(focus)
        except ValueError as exc:
            raise ServiceError(422, str(exc)) from None
        described: dict
        if clip is not None:
            self.known(clip)
            q = index.codes_of([clip], d + 1)
            act, grp = index.labels_of([clip])
            described = {**self._row(clip, int(act[0]), str(grp[0]), self.split_of(clip)), "kind": "clip"}
            want = k + 1
        elif query is not None:
            entry = self.query(query)
            q = entry.codes[None, d]
            described = self.describe_query(query, entry)
            want = k
        else:
            packed = self.parse_codes(codes)
            q = packed[None, d]
            described = {"kind": "codes"}
            want = k
        t0 = time.perf_counter()
        try:
            ids, dist = index.search(q, want, focus=d + 1)
        except ValueError as exc:  # the index's own checks of k and focus
            raise ServiceError(422, str(exc)) from None
        seconds = time.perf_counter() - t0
        ids, dist = ids[0].tolist(), dist[0].tolist()
        if clip is not None:
            pairs = [(i, x) for i, x in zip(ids, dist) if i != clip][:k]
            ids, dist = [p[0] for p in pairs], [p[1] for p in pairs]
        act, grp = index.labels_of(ids) if ids else ([], [])
        results = [{"rank": r + 1, "distance": int(x), **self._row(i, int(a), str(g), self.split_of(i))}
                   for r, (i, x, a, g) in enumerate(zip(ids, dist, act, grp))]
        return {"query": described, "focus": d + 1, "depth": index.depth, "k": k,
                "focus_name": self.focus_name(d + 1), "search_ms": round(seconds * 1e3, 4), "results": results}

    def focus_name(self, focus: int) -> str:
        depth = self.index.depth
        return "visual" if focus == 1 and depth > 1 else "activity" if focus == depth else "mixed"

    def parse_codes(self, codes: list[str]) -> np.ndarray:
        """Hex codes, one per depth -> packed uint8 ``(depth, K/8)``; 422 when malformed."""
        index = self.index
        if not isinstance(codes, list) or len(codes) != index.depth:
            raise ServiceError(422, f"codes must be a list of {index.depth} hex strings (one per depth)")
        out = np.empty((index.depth, index.nbytes_code), np.uint8)
        for t, h in enumerate(codes):
            try:
                b = bytes.fromhex(h)
            except (ValueError, TypeError):
                raise ServiceError(422, f"codes[{t}] is not a hex string") from None
            if len(b) != index.nbytes_code:
                raise ServiceError(422, f"codes[{t}] has {len(b)} bytes; this {index.bits}-bit index needs "
                                        f"{index.nbytes_code} ({2 * index.nbytes_code} hex digits)")
            out[t] = np.frombuffer(b, np.uint8)
        return out

    # ------------------------------------------------------------------ uploads
    def encode_upload(self, root: Path, name: str, *, tracks: UploadedFile, video: UploadedFile | None,
                      frames: UploadedFile | None) -> tuple[Clip, np.ndarray, int, dict]:
        """Stage, read and encode one uploaded clip in ``root``; returns (clip, packed codes (depth, K/8),
        predicted activity, {server path: uploaded name})."""
        shown = stage_upload(root, name, tracks=tracks, video=video, frames=frames, limits=self.settings.limits)
        clip = read_upload(root, shown, frames_per_clip=self.frames_per_clip, n_max=self.n_max)[0]
        with self.model_lock:
            try:
                out = self.encoder.encode_clips([clip])
            except DataError as exc:
                raise UploadError(shown_message(str(exc), root, shown)) from None
        codes = pack_codes(np.asarray(out["codes"][0]))  # (depth, K) ±1 -> (depth, K/8)
        return clip, codes, int(out["activity"][0]), shown

    def add_query(self, clip: Clip, codes: np.ndarray, activity: int, root: Path) -> str:
        """Keep an uploaded query for later searches and pictures; returns its token."""
        token = "q" + secrets.token_hex(8)
        with self._queries_lock:
            self.queries[token] = UploadedQuery(clip, codes, activity, root)
            while len(self.queries) > self.max_queries:
                _, old = self.queries.popitem(last=False)
                remove_tree(old.root)
        return token

    def query(self, token: str) -> UploadedQuery:
        if not isinstance(token, str) or not TOKEN_RE.fullmatch(token):
            raise ServiceError(422, f"invalid query token {token!r}")
        with self._queries_lock:
            entry = self.queries.get(token)
        if entry is None:
            raise ServiceError(404, f"query {token!r} is unknown or expired; upload the clip again")
        return entry

    def describe_query(self, token: str, entry: UploadedQuery) -> dict:
        return {"kind": "upload", "token": token, "id": entry.clip.id, "activity": entry.activity,
                "activity_name": self.activity_name(entry.activity), "predicted": True,
                "group": None, "split": None, "frames": entry.clip.num_frames,
                "persons": entry.clip.num_persons, "codes": [bytes(c).hex() for c in entry.codes]}

    def new_query_root(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="stvh-query-"))

    # ------------------------------------------------------------------ writes
    @property
    def write_lock(self):
        import asyncio

        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    def check_writable(self) -> None:
        if not self.settings.allow_writes:
            raise ServiceError(403, "this service is read-only: start it with --allow-writes to add or remove clips")

    def check_new_name(self, name: str) -> None:
        store = self.settings.uploads_dir
        if (store / name).exists() or any(c.video == name for c in self.dataset.values()) \
                or any(i.split("/", 1)[0] == name for i in self.index.ids):
            raise ServiceError(409, f"the name {name!r} is taken (an uploaded or dataset video); choose another")

    def staging_root(self) -> Path:
        store = self.settings.uploads_dir
        store.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=store))

    def commit_upload(self, staging: Path, name: str, clip: Clip, codes: np.ndarray, activity: int,
                      group: str) -> Clip:
        """Move a staged upload into the store (labelled with its predicted activity) and add it to the index.

        Call under :attr:`write_lock`, then :meth:`save_index`.
        """
        final = self.settings.uploads_dir / name
        if final.exists() or clip.id in self.index:
            raise ServiceError(409, f"clip {clip.id!r} is already in the index")
        start, end = int(clip.frame_ids[0]), int(clip.frame_ids[-1])
        label = self.activity_name(activity) or ""
        (staging / "clips.csv").write_text(f"video,start,end,activity,group\n{name},{start},{end},{label},{group}\n")
        os.replace(staging, final)
        try:
            stored = read_upload(final, {}, frames_per_clip=self.frames_per_clip, n_max=self.n_max,
                                 activities=tuple(self.activities))[0]
        except UploadError:
            remove_tree(final)
            raise
        self.index.add([stored.id], codes[None], activity=[activity], group=[group])
        self.uploads[stored.id] = stored
        self.rebuild_catalogue()
        return stored

    def remove_clip(self, clip_id: str) -> Path | None:
        """Remove a clip from the index (call under :attr:`write_lock`, then :meth:`save_index`); returns the
        folder of an uploaded clip to delete once the index is saved."""
        self.known(clip_id)
        self.index.remove([clip_id])
        self.images.drop(clip_id)
        stored = self.uploads.pop(clip_id, None)
        self.rebuild_catalogue()
        if stored is None:
            return None
        folder = self.settings.uploads_dir / stored.video
        # the video name came from NAME_RE when the clip was added; never delete outside the store
        if NAME_RE.fullmatch(stored.video) and folder.resolve().parent == self.settings.uploads_dir.resolve():
            return folder
        return None

    def save_index(self) -> None:
        if self.watcher is not None:  # the ledger's pending videos are saved with it
            self.watcher.ingester.commit(self.index, self.settings.index)
            return
        self.index.save(self.settings.index)

    # ------------------------------------------------------------------ --watch DIR
    def add_records(self, clips: list[Clip]) -> None:
        """Clip records of ingested clips (their frames and boxes), for pictures and details."""
        self.ingested.update((c.id, c) for c in clips)

    async def apply_ingest(self, batch, watcher) -> list[str] | None:
        """Add an encoded video (:class:`stvh.ingest.Batch`) to the index on the event loop's thread, under the
        write lock, then save index and ledger from a worker thread. Returns the clip ids (``None``: refused)."""
        from fastapi.concurrency import run_in_threadpool

        async with self.write_lock:
            replaced = watcher.ingester.ledger.owned(batch.name)
            owned = await run_in_threadpool(watcher.ingester.begin, self.index, batch)  # the ledger's fsync
            if owned is None:
                return None
            ids = watcher.ingester.put(self.index, batch, owned)  # here, on the loop: searches see all or none
            for old in replaced:
                self.ingested.pop(old, None)
                self.images.drop(old)
            self.add_records(batch.clips)
            watcher.added(ids)
            if replaced:
                self.rebuild_catalogue()
            else:  # appended rows only: the catalogue grows without a pass over every clip on the event loop
                self.catalogue = self.catalogue.extended(ids, batch.activity, [c.group for c in batch.clips],
                                                         [WATCH_SPLIT] * len(ids))
            try:
                await run_in_threadpool(self.save_index)
            except Exception as exc:  # noqa: BLE001 - searchable now; saved with the next video
                log.error("watch: cannot save the index %s: %s", self.settings.index, exc)
                watcher.last_error = f"cannot save the index: {str(exc).splitlines()[0] if str(exc) else exc}"
        return ids

    def watch_status(self) -> dict:
        if self.watcher is None:
            return {"watching": False}
        return self.watcher.status()

    def close(self) -> None:
        with self._queries_lock:
            for q in self.queries.values():
                shutil.rmtree(q.root, ignore_errors=True)
            self.queries.clear()
