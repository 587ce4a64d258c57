"""Footage as it arrives: a MOT-layout folder -> clips -> codes -> an index (``stvh ingest``, ``stvh serve --watch``).

A video ``NAME`` of the folder is ``tracks/NAME.txt`` with ``videos/NAME.<ext>`` or ``frames/NAME/`` (the layout of
docs/data-user.md). Each complete, settled video is read alone (the MOT reader on a view of just that video, so a
broken neighbour never stops it), cut into windows of the run's ``frames_per_clip`` frames, encoded by the run's model
(:class:`stvh.train.encode.Encoder`: features from the frames with the run's cache settings, as ``stvh encode --run
RUN --data OTHER``) and added to the index with its predicted activity and the video name as group.

The folder side (complete videos, fingerprints, reading one video) is :mod:`stvh.footage`.
The ledger ``INDEX.ingest.json`` beside the index records each video's fingerprint (size and mtime of its files) and
clip ids, and the bad files with their reason. A video's entry is written "pending" before the index changes and
"done" once the index is saved, so a restart re-ingests exactly the videos whose clips were not saved (their ids are
owned by the entry and replaced), a changed file is re-ingested (its old clips removed) and a bad file is not retried
until it changes. See docs/live.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .data.atomic import write_text_atomic
from .data.clip import Clip
from .data.errors import DataError, UnreadableFrame, UnreadableVideo
from .footage import Footage, read_footage, reader_options, scan

__all__ = ["Batch", "Footage", "IngestError", "Ingester", "Ledger", "ingest_folder", "ledger_path", "open_index",
           "read_footage", "reader_options", "scan", "warm_up"]

log = logging.getLogger("stvh.ingest")
LEDGER_VERSION = 1
RETRYABLE = (UnreadableVideo, UnreadableFrame, OSError)  # a file still being written may read so; tried again


class IngestError(Exception):
    """A video that cannot be ingested; ``file`` is the file to name, ``message`` one line."""

    def __init__(self, file: str | Path, message: str):
        super().__init__(f"{file}: {message}")
        self.file, self.message = str(file), message


@dataclass
class Ledger:
    """What was ingested into one index (``INDEX.ingest.json``); see the module doc."""

    path: Path
    folder: str = ""
    videos: dict[str, dict] = field(default_factory=dict)   # name -> fingerprint, clips, state, replaces, at
    bad: dict[str, dict] = field(default_factory=dict)      # name -> fingerprint, file, reason, at
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)  # page vs watcher

    @classmethod
    def load(cls, path: str | Path) -> "Ledger":
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != LEDGER_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {LEDGER_VERSION}")
            return cls(path, str(raw.get("folder", "")), dict(raw["videos"]), dict(raw["bad"]))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise ValueError(f"{path} is not an ingest ledger ({str(exc).splitlines()[0]}); it is written by "
                             "`stvh ingest` and `stvh serve --watch`: move it away to ingest every video again") \
                from None

    def save(self) -> None:
        with self.lock:
            write_text_atomic(self.path, json.dumps({"version": LEDGER_VERSION, "folder": self.folder,
                                                 "videos": self.videos, "bad": self.bad}, indent=1) + "\n")

    def done(self, name: str, fp: str) -> bool:
        e = self.videos.get(name)
        return e is not None and e["fingerprint"] == fp  # pending entries of earlier runs have none (Ingester)

    def known_bad(self, name: str, fp: str) -> bool:
        return name in self.bad and self.bad[name]["fingerprint"] == fp

    def owned(self, name: str) -> list[str]:
        """Clip ids this video may have in the index (a pending entry owns the ids it replaces too)."""
        e = self.videos.get(name) or {}
        return list(dict.fromkeys([*e.get("replaces", []), *e.get("clips", [])]))


def ledger_path(index: str | Path) -> Path:
    return Path(f"{index}.ingest.json")


@dataclass
class Batch:
    """One video read and encoded, ready to enter the index."""

    name: str
    fingerprint: str
    clips: list[Clip]
    codes: np.ndarray      # packed uint8 (M, depth, K/8)
    activity: np.ndarray   # (M,) predicted by the deepest head

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.clips]


class Ingester:
    """Finds settled, new or changed videos in ``root`` and turns them into :class:`Batch` es for an index.

    ``settle``: seconds a video's files must keep the same sizes and mtimes before it is read (a file still being
    copied is never read half-written). ``retries``: reads of a video that fails to open or decode (it may still be
    incomplete) before it is reported, ``retry_wait`` seconds apart. ``lock``: held while the model runs (the
    service shares its model with uploads). ``detector`` (:func:`stvh.track.load_detector`): videos without tracks
    are tracked (:func:`stvh.track.track_video` with ``track_options``) and their tracks and clip rows written
    into ``root``, where the next scans find them complete.
    """

    def __init__(self, root: str | Path, encoder, ledger: Ledger, *, settle: float = 1.0, retries: int = 3,
                 retry_wait: float = 2.0, lock=None, max_skipped: int = 200, detector=None, track_options=None):
        import contextlib

        self.root = Path(root)
        self.encoder = encoder
        self.ledger = ledger
        ledger.folder = str(self.root.resolve())
        for e in ledger.videos.values():  # pending in the file: a run that stopped before saving the index
            if e["state"] == "pending":
                e["fingerprint"] = ""     # read again; the entry still owns the ids it may have left
        self.settle, self.retries, self.retry_wait = float(settle), int(retries), float(retry_wait)
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.options = reader_options(encoder)
        self.frames_per_clip = int(self.options.get("frames_per_clip", 10))
        self._seen: dict[str, tuple[str, float]] = {}          # name -> (fingerprint, first seen at it)
        self._tries: dict[str, tuple[str, int, float]] = {}    # name -> (fingerprint, failed reads, next try)
        self.waiting: dict[str, tuple[str, str]] = {}           # incomplete videos: name -> (file, reason)
        self._now = time.monotonic()                            # the clock of the last poll
        self.max_skipped = max_skipped
        self.detector, self.track_options = detector, track_options

    # ------------------------------------------------------------------ finding work
    def poll(self, now: float | None = None) -> list[tuple[Footage, str]]:
        """``(footage, fingerprint)`` of the videos to ingest now (settled, not done, not known bad)."""
        now = time.monotonic() if now is None else now
        self._now = now
        complete, waiting, untracked = scan(self.root)
        if self.detector is not None:  # footage without tracks: tracked, not waited for
            complete += untracked
            for f in untracked:
                waiting.pop(f.name, None)
        self.waiting = waiting
        ready, present = [], set()
        for f in complete:
            present.add(f.name)
            fp = f.state()
            if fp is None or self.ledger.done(f.name, fp) or self.ledger.known_bad(f.name, fp):
                self._seen.pop(f.name, None)
                continue
            first = self._seen.get(f.name)
            if first is None or first[0] != fp:
                self._seen[f.name] = (fp, now)
                continue
            tries = self._tries.get(f.name)
            if now - first[1] < self.settle or (tries and tries[0] == fp and now < tries[2]):
                continue
            ready.append((f, fp))
        for gone in set(self._seen) - present:
            self._seen.pop(gone)
        return ready

    def pending(self) -> int:
        """Videos seen but not yet ingested (settling, or waiting for a retry)."""
        return len(self._seen)

    def settling(self) -> list[str]:
        """Names of the videos seen but not yet ingested."""
        return sorted(list(self._seen))  # list(): one C call, safe while the watcher thread changes it

    # ------------------------------------------------------------------ reading and encoding
    def prepare(self, footage: Footage, fp: str) -> Batch | None:
        """Read and encode one video; ``None`` when it failed (reported, or to be tried again later)."""
        from .index.codes import pack_codes

        try:
            if footage.tracks is None:
                self._track(footage)
                return None  # its tracks are in the folder now: read once they settle
            clips = read_footage(footage, self.root, self.options)
            if not clips:
                raise IngestError(footage.tracks, f"no clip: no {self.frames_per_clip}-frame window with a tracked "
                                                  "person (frames_per_clip of the run)")
            with self.lock:
                out = self.encoder.encode_clips(clips)
        except RETRYABLE as exc:
            return self._failed(footage, fp, exc, retry=True)
        except IngestError as exc:
            return self._failed(footage, fp, exc, retry=False)
        except DataError as exc:
            return self._failed(footage, fp, exc, retry=False)
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the loop; named with its reason
            log.exception("unexpected error ingesting %s", footage.name)
            return self._failed(footage, fp, IngestError(footage.tracks, f"{type(exc).__name__}: {exc}"),
                                retry=False)
        self._tries.pop(footage.name, None)
        return Batch(footage.name, fp, clips, pack_codes(np.asarray(out["codes"])),
                     np.asarray(out["activity"], dtype=np.int64))

    def _track(self, footage: Footage) -> None:
        """Detect and track a video without tracks; its tracks and clip rows go into the folder."""
        from .track import TrackOptions, track_video

        opts = dataclasses.replace(self.track_options or TrackOptions(), name=footage.name,
                                   frames_per_clip=self.frames_per_clip, progress=False)
        summary = track_video(footage.source, self.root, self.detector, opts)
        self._seen.pop(footage.name, None)
        if not summary.get("written"):
            raise IngestError(footage.source, f"the detector found no clip: {summary.get('why_not_written')}")
        log.info("%s: tracked (%s tracks, %s clips)", footage.name, summary.get("tracks"), summary.get("clips"))

    def _failed(self, footage: Footage, fp: str, exc: Exception, retry: bool) -> None:
        tried = self._tries.get(footage.name)
        count = (tried[1] if tried and tried[0] == fp else 0) + 1
        if retry and count < self.retries:
            self._tries[footage.name] = (fp, count, self._now + self.retry_wait)
            log.info("%s: cannot read it yet (%s); trying again in %.0f s", footage.name, _line(exc),
                     self.retry_wait)
            return None
        self._tries.pop(footage.name, None)
        if isinstance(exc, IngestError):
            file, reason = exc.file, exc.message
        elif isinstance(exc, DataError):
            file = exc.path or str(footage.tracks)
            where = (f"line {exc.line}: " if exc.line else "") + (f"clip {exc.clip}: " if exc.clip else "")
            reason = where + f"{exc.kind}: {exc.message}".splitlines()[0]
        else:
            file, reason = str(getattr(exc, "filename", None) or footage.source), _line(exc)
        self.report_bad(footage.name, fp, file, reason + (f" (after {count} tries)" if count > 1 else ""))
        return None

    def report_bad(self, name: str, fp: str, file: str, reason: str) -> None:
        """Record a bad video in the ledger (not retried until its files change) and log it."""
        with self.ledger.lock:
            self.ledger.bad[name] = {"fingerprint": fp, "file": file, "reason": reason, "at": time.time()}
            while len(self.ledger.bad) > self.max_skipped:  # the oldest reports go first
                self.ledger.bad.pop(min(self.ledger.bad, key=lambda n: self.ledger.bad[n]["at"]))
            self.ledger.save()
        self._seen.pop(name, None)
        log.warning("skipped %s: %s", file, reason)

    def skipped(self) -> list[dict]:
        """The bad files, newest first: ``{"video", "file", "reason", "at"}``."""
        with self.ledger.lock:
            rows = [{"video": n, **{k: v for k, v in e.items() if k != "fingerprint"}}
                    for n, e in self.ledger.bad.items()]
        return sorted(rows, key=lambda r: -r["at"])

    # ------------------------------------------------------------------ into the index
    def apply(self, index, batch: Batch) -> list[str] | None:
        """Put a batch into ``index`` in memory (its video's earlier clips replaced); the ledger entry becomes
        pending. Returns the clip ids, or ``None`` when they clash with clips that are not this video's."""
        owned = self.begin(index, batch)
        return None if owned is None else self.put(index, batch, owned)

    def begin(self, index, batch: Batch) -> list[str] | None:
        """First half of :meth:`apply` (no change to ``index``; may run off the event loop): the ids the batch
        replaces, after the ledger's pending entry is saved, or ``None`` (reported) when its ids clash."""
        owned = [i for i in self.ledger.owned(batch.name) if i in index]
        clash = [i for i in batch.ids if i in index and i not in owned]
        if clash:
            self.report_bad(batch.name, batch.fingerprint, str(self.root / "tracks" / f"{batch.name}.txt"),
                            f"clip id {clash[0]} is already in the index and was not ingested from this folder; "
                            "rename the video")
            return None
        with self.ledger.lock:
            self.ledger.videos[batch.name] = {"fingerprint": batch.fingerprint, "clips": batch.ids,
                                              "state": "pending", "replaces": owned, "at": time.time()}
            self.ledger.bad.pop(batch.name, None)
            self.ledger.save()  # before the index changes: a crash from here on re-ingests this video
        return owned

    def put(self, index, batch: Batch, owned: list[str]) -> list[str]:
        """Second half of :meth:`apply`: the index change itself (removals and one add, in memory)."""
        self._seen.pop(batch.name, None)
        if owned:
            index.remove(owned)
        index.add(batch.ids, batch.codes, activity=batch.activity, group=[c.group for c in batch.clips])
        return batch.ids

    def commit(self, index, path: str | Path) -> None:
        """Save ``index`` atomically, then mark every pending video done."""
        index.save(path)
        with self.ledger.lock:
            pending = [e for e in self.ledger.videos.values() if e["state"] == "pending"]
            for e in pending:
                e["state"] = "done"
                e.pop("replaces", None)
            if pending:
                self.ledger.save()

    def ingested_clips(self) -> list[str]:
        with self.ledger.lock:
            return [i for e in self.ledger.videos.values() for i in e["clips"]]


def warm_up(encoder, frames_per_clip: int = 10, n_max: int = 12) -> None:
    """Run the backbone and the model once on a black clip: their first call costs several times a later one
    (measured: +9 s of 14 s for EfficientNet-Lite0 on a loaded 2-core machine), which the first video would pay."""
    from .data.clip import UNKNOWN, pad_persons

    T = int(frames_per_clip)
    size = (180, 320)
    if encoder.backbone != "none":
        fs = getattr(encoder.extractor(), "frame_size", None)
        size = tuple(fs) if fs else size
    boxes = np.tile(np.array([[[8.0, 8.0, 40.0, 90.0], [60.0, 20.0, 90.0, 100.0]]], np.float32), (T, 1, 1))
    boxes, mask, actions = pad_persons(boxes, np.full(2, UNKNOWN, np.int64), n_max)
    clip = Clip(video="warm-up", clip="000001", frame_ids=np.arange(1, T + 1), boxes=boxes, mask=mask,
                actions=actions, activity=UNKNOWN, group="warm-up", image_size=size, tracked=True, key_index=T // 2)
    roi = None
    if encoder.backbone != "none":
        roi = {clip.id: encoder.extractor()([clip], [np.zeros((T, *size, 3), np.uint8)])[0]}
    encoder.encode_clips([clip], roi)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_index(path: Path, encoder):
    """The index at ``path`` (its bits and depth checked against the run), or a new empty one."""
    from .index.base import create_index, load_index

    if not path.exists():
        return create_index("faiss", encoder.bits, encoder.depth, meta={"created_by": "stvh ingest"})
    index = load_index(path)
    if not hasattr(index, "ids"):
        raise ValueError(f"--index {path}: ingest needs an in-memory index (numpy, faiss, kernel, short), "
                         f"not {index.backend}")
    if (encoder.bits, encoder.depth) != (index.bits, index.depth):
        raise ValueError(f"--index {path} holds {index.bits}-bit codes at {index.depth} depths but the run makes "
                         f"{encoder.bits} bits at {encoder.depth} depths")
    return index


def ingest_folder(root: str | Path, run: str | Path, index_path: str | Path, *, settle: float = 1.0,
                  retries: int = 3, retry_wait: float = 2.0, save_every: float = 10.0, max_wait: float = 60.0,
                  checkpoint: str = "best",
                  device: str = "cpu", progress: bool = False, encoder=None, detector=None, track_options=None,
                  sleep: Callable[[float], None] = time.sleep) -> dict:
    """``stvh ingest``: every settled video of ``root`` not yet in the ledger goes into the index (saved every
    ``save_every`` seconds and at the end); videos still changing after ``max_wait`` seconds are left for the next
    run. Returns counts and the skipped files (``{"file", "reason"}``)."""
    from tqdm import tqdm

    root, index_path = Path(root), Path(index_path)
    if not root.is_dir():
        raise ValueError(f"DIR {root} is not a folder (a MOT-layout folder: tracks/NAME.txt + videos/ or frames/)")
    if encoder is None:
        from .train.encode import Encoder
        encoder = Encoder(run, checkpoint, device)
    ledger = Ledger.load(ledger_path(index_path))
    index = open_index(index_path, encoder)
    ing = Ingester(root, encoder, ledger, settle=settle, retries=retries, retry_wait=retry_wait, detector=detector,
                   track_options=track_options)
    videos = clips = 0
    bar = tqdm(desc="ingest", unit="video", disable=not progress)
    started = last_save = time.monotonic()
    dirty = False
    ing.poll()
    while True:
        ready = ing.poll()
        bar.total = videos + len(ready) + ing.pending()
        bar.refresh()
        for footage, fp in ready:
            batch = ing.prepare(footage, fp)
            ids = ing.apply(index, batch) if batch is not None else None
            if ids is not None:
                videos, clips, dirty = videos + 1, clips + len(ids), True
                bar.update(1)
            if dirty and time.monotonic() - last_save >= save_every:
                ing.commit(index, index_path)
                last_save, dirty = time.monotonic(), False
        if not ready and (not ing.pending() or time.monotonic() - started > max_wait):
            break
        if not ready:
            sleep(min(0.2, settle))
    bar.close()
    if dirty or not index_path.exists():
        ing.commit(index, index_path)
    skipped = [{"file": r["file"], "reason": r["reason"]} for r in ing.skipped()]
    skipped += [{"file": f, "reason": why} for _, (f, why) in sorted(ing.waiting.items())]
    skipped += [{"file": str(root / "tracks" / f"{n}.txt"), "reason": f"its files kept changing for {max_wait:g} s"}
                for n in sorted(ing.settling())]
    return {"index": str(index_path), "videos": videos, "clips": clips, "total_clips": len(index),
            "skipped": skipped}
