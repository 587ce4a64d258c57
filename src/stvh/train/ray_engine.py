"""The Ray engine of ``stvh extract`` and ``stvh encode`` (``--engine ray``): one task per video.

The driver (the ``stvh`` process) plans the work as the single-process engine
does (which clips the cache lacks, the PCA fit, whose sample batches it extracts and
writes itself), puts the model in Ray's object
store once, and sends one task per video; a worker runs the same per-video code
as the single process (:func:`stvh.train.extract.extract_batch`,
:meth:`stvh.train.encode.Encoder.encode_clips`) with ``threads`` torch threads
and returns per-clip arrays. Only the driver writes the cache or the CODES
file, so resuming, fingerprints and locks work exactly as without Ray.

A task that raises, or whose worker dies, is sent again up to ``retries``
times by the driver (counted here, so the report can say how many tries a
video had); after that the video is reported by name and the others go on.
At most ``window`` tasks are in flight, so the driver's memory holds a bounded
number of results whatever the archive's size.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import numpy as np

from ..data.errors import DataError

INSTALL = 'pip install "stvh[cluster]"'
_CACHE: dict[str, object] = {}  # in a worker: object id -> the model it holds, deserialised once per worker


class VideoFailed(DataError):
    """A video whose task failed after its retries (listed in failed.csv)."""

    kind = "failed video"


class TaskError(Exception):
    """What a worker raises: one picklable line (a DataError's path and clip are in its text)."""


def need_ray():
    """The ``ray`` module, or ImportError with the install line (``error: --engine ray needs Ray: ...``)."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"--engine ray needs Ray: {INSTALL}") from None
    return ray


@contextmanager
def cluster(address: str | None, workers: int | None, threads: int):
    """Ray, connected for the block: to ``address`` (``auto``, ``ray://host:10001``, ``host:6379``), or to a
    new local instance of ``workers`` x ``threads`` CPUs (default: every CPU) shut down afterwards.
    An instance this process already started (the tests) is used as it is."""
    ray = need_ray()
    if address is not None:
        _probe(address)
    if ray.is_initialized():
        yield ray
        return
    try:
        if address is None:
            cpus = (workers or max(1, (os.cpu_count() or 1) // threads)) * threads
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"--address {address}" if address else "a local Ray instance"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConnectionError(f"{where}: cannot start or reach Ray ({first})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str, timeout: float = 5.0) -> None:
    """ConnectionError at once when nothing listens at ``HOST:PORT`` (``ray.init`` would retry for minutes);
    ``auto`` and ``ray://`` addresses are left to Ray, which fails fast on its own."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise ConnectionError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT") from None
    except OSError as exc:
        raise ConnectionError(f"--address {address}: no Ray head answers there ({exc.strerror or exc}); start "
                              "one with `ray start --head` or fix --address") from None


def run_tasks(ray, submit: Callable[[object], object], items: Iterable, *, retries: int,
              window: int) -> Iterator[tuple[object, object, str | None, int]]:
    """Run ``submit(item) -> ObjectRef`` for every item, at most ``window`` in flight, in completion order.

    Yields ``(item, result, None, tries)``, or ``(item, None, message, tries)`` for an item whose task
    failed ``retries + 1`` times (the message is the last failure's first line).
    """
    queue = deque(items)
    pending: dict = {}  # ObjectRef -> (item, tries so far)
    while queue or pending:
        while queue and len(pending) < window:
            item = queue.popleft()
            pending[submit(item)] = (item, 1)
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            item, tries = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:
                if tries <= retries:
                    pending[submit(item)] = (item, tries + 1)
                    continue
                yield item, None, _first_line(exc), tries
                continue
            yield item, result, None, tries


def _first_line(exc: BaseException) -> str:
    """The cause's first line of a Ray error (a worker's TaskError, a dead worker, ...)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    if isinstance(cause, TaskError) or not text:
        return text or type(cause).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if len(lines) > 1 else lines[0]}"[:300]


def _cached(box: list):
    """The object behind ``box = [ObjectRef]``, fetched and deserialised once per worker process."""
    import ray

    key = box[0].hex()
    if key not in _CACHE:
        _CACHE.clear()  # one model at a time
        _CACHE[key] = ray.get(box[0])
    return _CACHE[key]


def _set_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _extract_video(box: list, clips: list, batch_clips: int, skip_bad: bool, threads: int):
    """Worker: ``[(clip id, roi)]``, skipped rows and frames decoded of one video's clips."""
    from .extract import extract_batch, video_batches

    _set_threads(threads)
    try:
        extractor = _cached(box)
        feats, skipped, frames = [], [], 0
        for group in video_batches(clips, batch_clips):
            res = extract_batch(extractor, group, skip_bad)
            feats += [(c.id, r) for c, r in res.features]
            skipped += [(type(e).__name__, e.kind, e.message, e.path, e.line, e.clip) for e in res.skipped]
            frames += res.frames
        return feats, skipped, frames
    except Exception as exc:  # noqa: BLE001 - sent back as one line; the driver retries, then names the video
        raise TaskError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def _rebuild(row) -> DataError:
    """A skipped clip's DataError from the worker's row (DataErrors do not pickle with their fields)."""
    _, kind, message, path, line, clip = row
    err = DataError(message, path=path, line=line, clip=clip)
    err.kind = kind
    return err


def _by_video(clips) -> list[list]:
    videos: dict[str, list] = {}
    for c in clips:
        videos.setdefault(c.video, []).append(c)
    return list(videos.values())


def _failure(video: str, message: str, tries: int) -> VideoFailed:
    return VideoFailed(f"failed after {tries} tr{'y' if tries == 1 else 'ies'}: {message}", clip=video)


def extract_videos(extractor, todo, *, batch_clips: int, skip_bad: bool, address: str | None,
                   workers: int | None, threads: int, retries: int):
    """:class:`stvh.train.extract.BatchResult` per video of ``todo``, as the videos finish (a generator;
    Ray is checked for at once, started on the first ``next``, shut down when the generator closes)."""
    need_ray()
    from .extract import BatchResult

    def results():
        with cluster(address, workers, threads) as ray:
            task = ray.remote(num_cpus=threads, max_retries=0)(_extract_video)
            box = [ray.put(extractor)]
            by_id = {c.id: c for c in todo}
            window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
            runs = run_tasks(ray, lambda clips: task.remote(box, clips, batch_clips, skip_bad, threads),
                             _by_video(todo), retries=retries, window=window)
            for clips, out, error, tries in runs:
                if error is not None:
                    yield BatchResult(len(clips), [], [], 0, _failure(clips[0].video, error, tries))
                    continue
                feats, skipped, frames = out
                yield BatchResult(len(clips), [(by_id[cid], r) for cid, r in feats], [_rebuild(s) for s in skipped],
                                  frames)

    return results()


def _encode_video(box: list, clips: list, roi: dict | None, batch_size: int, threads: int) -> dict:
    """Worker: codes and predictions of one video's clips (the Encoder's own per-video code)."""
    _set_threads(threads)
    try:
        pred = _cached(box).encode_clips(clips, roi, batch_size)
        return {k: pred[k] for k in ("codes", "activity_all", "actions")}
    except Exception as exc:  # noqa: BLE001 - sent back as one line; the driver retries, then names the video
        raise TaskError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def encode_videos(encoder, clips, roi: dict | None, *, batch_size: int, address: str | None,
                  workers: int | None, threads: int, retries: int, progress: bool = False):
    """Codes of ``clips`` by video on Ray: ``(clips encoded, {"codes", "activity_all", "actions"} stacked in
    their order, failures)``; the clips of a failed video are left out and named in ``failures``."""
    need_ray()
    import copy

    from tqdm import tqdm

    shipped = copy.copy(encoder)
    shipped.state = {}  # the checkpoint (optimizer state ...) stays here: workers need the model only
    if encoder.backbone != "none" and roi is None:
        shipped._extractor = encoder.extractor()  # built here: workers need the frames only, not the cache
    got: dict[str, dict] = {}
    failures: list[VideoFailed] = []
    with cluster(address, workers, threads) as ray, \
            tqdm(total=len(clips), desc="encode", unit="clip", disable=not progress) as bar:
        task = ray.remote(num_cpus=threads, max_retries=0)(_encode_video)
        box = [ray.put(shipped)]
        window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)

        def submit(part):
            return task.remote(box, part, None if roi is None else {c.id: roi[c.id] for c in part}, batch_size,
                               threads)

        for part, out, error, tries in run_tasks(ray, submit, _by_video(clips), retries=retries, window=window):
            if error is not None:
                failures.append(_failure(part[0].video, error, tries))
            else:
                got[part[0].video] = out
            bar.update(len(part))
    groups = [g for g in _by_video(clips) if g[0].video in got]
    kept = [c for g in groups for c in g]  # video by video, as the stacked arrays
    parts = [got[g[0].video] for g in groups]
    stacked = {k: np.concatenate([p[k] for p in parts]) for k in ("codes", "activity_all", "actions")} if parts \
        else {}
    return kept, stacked, failures
