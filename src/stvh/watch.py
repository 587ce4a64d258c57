"""``stvh serve --watch DIR``: a background thread that ingests new footage into the served index.

The thread polls ``DIR`` (every ``poll`` seconds; polling, not file-system events, so that it works the same on
network shares and bind mounts, and because the settle check needs repeated ``stat`` calls anyway), reads and
encodes each settled video (:class:`stvh.ingest.Ingester`, the model under the service's ``model_lock``) and hands
the codes to the event loop, where the index is changed under the service's write lock and saved from a worker
thread (``Service.apply_ingest``). The loop only ever sees a finished batch, so searches never wait for the model
and never meet a half-added video; anything that goes wrong in the thread is logged and listed (never a 5xx).

What is kept per queued video: its name and fingerprint (a few hundred bytes), so 100 queued videos cost no memory
to speak of; videos are read one at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from pathlib import Path

from .ingest import Footage, Ingester, Ledger, ledger_path, read_footage, warm_up

log = logging.getLogger("stvh.watch")


class Watcher:
    """Watches ``folder`` for a :class:`stvh.serve.service.Service`; :meth:`start` on the event loop."""

    def __init__(self, service, folder: str | Path, *, poll: float = 0.5, settle: float = 1.0, retries: int = 3,
                 retry_wait: float = 2.0, per_poll: int = 4):
        self.service = service
        self.folder = Path(folder)
        self.poll_s = float(poll)
        self.per_poll = int(per_poll)  # videos read between two scans (a bounded batch: new arrivals wait little)
        from .track.settings import tracking_from  # footage without tracks is tracked first (stvh.track)

        st = service.settings
        detector, options = tracking_from(st.detector, st.region, getattr(st, "track_config", None))
        self.ingester = Ingester(self.folder, service.encoder, Ledger.load(ledger_path(service.settings.index)),
                                 settle=settle, retries=retries, retry_wait=retry_wait, lock=service.model_lock,
                                 detector=detector, track_options=options)
        self.new: dict[str, None] = {}  # clip ids ingested since the server started, in order
        self.ids: set[str] = set(self.ingester.ingested_clips())  # every clip ingested from the folder
        self.started = time.time()
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        try:  # before the server listens: the first video must not pay for building and first calls
            with service.model_lock:
                warm_up(service.encoder, self.ingester.frames_per_clip, int(self.ingester.options.get("n_max", 12)))
        except Exception as exc:  # noqa: BLE001 - said on the page; each video will name it again
            log.warning("watch: the model cannot run: %s", exc)
            self._error(f"the run's model cannot run: {exc}")

    # ------------------------------------------------------------------ life
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="stvh-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the video being read (call off the event loop: the thread may be waiting on it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self._restore()
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("watch: unexpected error")
                self._error(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_s)

    def _error(self, message: str) -> None:
        self.last_error = message.splitlines()[0] if message else "error"

    def _restore(self) -> None:
        """Clip records (frames, boxes) of videos ingested by earlier sessions, for the page's pictures."""
        ledger = self.ingester.ledger
        for name, entry in list(ledger.videos.items()):
            if self._stop.is_set():
                return
            try:
                clips = read_footage(_footage_of(self.folder, name), self.folder, self.ingester.options)
            except Exception:  # noqa: BLE001 - gone or changed: the clips stay searchable without pictures
                continue
            self.service.add_records([c for c in clips if c.id in entry["clips"]])

    # ------------------------------------------------------------------ work
    def step(self) -> int:
        """One scan: read, encode and add up to ``per_poll`` settled videos; returns how many were added."""
        added = 0
        for footage, fp in self.ingester.poll()[:self.per_poll]:
            if self._stop.is_set():
                break
            batch = self.ingester.prepare(footage, fp)
            if batch is None:
                continue
            future = asyncio.run_coroutine_threadsafe(self.service.apply_ingest(batch, self), self._loop)
            while True:
                try:
                    ids = future.result(timeout=1.0)
                    break
                except concurrent.futures.TimeoutError:
                    if self._stop.is_set() and not self._loop.is_running():
                        future.cancel()
                        return added
                except Exception as exc:  # noqa: BLE001 - e.g. an index that refuses the codes: this video only
                    log.exception("watch: %s could not be added", footage.name)
                    self.ingester.report_bad(footage.name, fp, str(footage.tracks or footage.source),
                                             f"could not be added to the index: {type(exc).__name__}: {exc}")
                    ids = None
                    break
            if ids:
                added += 1
        return added

    def added(self, ids: list[str]) -> None:
        """Called on the event loop when a video's clips entered the index."""
        self.ids.update(ids)
        self.new.update(dict.fromkeys(ids))

    def status(self) -> dict:
        """What the page shows: the folder, counts, waiting and skipped files."""
        ing = self.ingester
        return {"watching": True, "folder": str(self.folder), "started": self.started,
                "new_clips": len(self.new), "ingested_videos": len(ing.ledger.videos),
                "queued": ing.settling(),
                "waiting": [{"video": n, "file": f, "reason": r} for n, (f, r) in sorted(ing.waiting.items())],
                "skipped": ing.skipped(), "error": self.last_error}


def _footage_of(folder: Path, name: str) -> Footage:
    frames = folder / "frames" / name
    if frames.is_dir():
        source = frames
    else:
        source = next((p for p in sorted((folder / "videos").glob(f"{name}.*")) if p.stem == name), frames)
    return Footage(name, folder / "tracks" / f"{name}.txt", source)
