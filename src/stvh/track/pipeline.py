"""``track_video``: detect, track and cut one video into the MOT dataset the reader takes.

Entry point for other code (``stvh track``, the folder watcher)::

    from stvh.track import load_detector, track_video, TrackOptions
    summary = track_video(Path("match.mp4"), Path("dataset"), load_detector("yolo.onnx"), TrackOptions())

It decodes ``video`` once (a video file, or a folder of numbered images), runs the detector on every
frame, drops boxes outside the region mask, tracks (ByteTrack), fills gaps of up to ``max_gap`` frames,
drops tracks shorter than ``min_track_len`` boxes and finds scene cuts. It then writes, each file
atomically and in this order, ``videos/NAME.ext`` (a copy; or ``frames/NAME/`` for a folder; nothing
when the source already lies there), ``tracks/NAME.txt`` and ``clips.csv`` (the rows of NAME replaced
by windows of ``frames_per_clip`` frames that never cross a cut; other videos' rows kept). A video
without any track writes nothing and says so in the summary (``"written": false``).
The summary is a JSON-ready dict (counts, cuts, seconds per frame).
"""

from __future__ import annotations

import bisect
import csv
import io
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..data.atomic import atomic_path, write_text_atomic
from ..data.errors import FormatError, UnreadableVideo
from ..data.mot import IMAGE_EXTS, VIDEO_EXTS
from .detector import Detector
from .scenes import CutDetector, windows
from .tracker import RegionMask, Tracker, TrackerParams, Tracks, drop_short, interpolate

MIN_SIDE = 1.0  # boxes narrower or lower than this many pixels are dropped before tracking


@dataclass
class TrackOptions:
    """What ``track_video`` does besides detecting (the CLI flags of ``stvh track``)."""

    frames_per_clip: int = 10
    max_gap: int = 10
    min_track_len: int = 5
    region: RegionMask | None = None
    tracker: TrackerParams = field(default_factory=TrackerParams)
    scene_threshold: float = 27.0   # ContentDetector threshold; <= 0: no cut detection
    min_scene_len: int = 15
    name: str | None = None         # video name in the dataset (default: the file or folder name's stem)
    progress: bool = False


def _frames_of_video(path: Path) -> tuple[int, Iterator[tuple[int, np.ndarray]]]:
    """(frame count or 0, iterator of (MOT frame, RGB frame)); frame numbers as the reader derives them."""
    import av
    from av.error import FFmpegError

    from ..data.frames import _frame_index

    try:
        container = av.open(str(path))
    except (FFmpegError, OSError, ValueError) as e:
        raise UnreadableVideo(f"cannot open ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})",
                              path=path) from None
    if not container.streams.video:
        container.close()
        raise UnreadableVideo("no video stream", path=path)
    stream = container.streams.video[0]
    total = int(stream.frames or 0)

    def gen():
        tb, rate, start = stream.time_base, stream.average_rate or stream.guessed_rate, stream.start_time or 0
        seen, counter = set(), 0
        try:
            for frame in container.decode(stream):
                idx = _frame_index(frame, start, tb, rate) if tb is not None and rate else None
                idx = counter if idx is None else idx
                counter += 1
                if idx in seen or idx < 0:
                    continue
                seen.add(idx)
                yield idx + 1, frame.to_ndarray(format="rgb24")
        except (FFmpegError, OSError, ValueError) as e:
            raise UnreadableVideo(f"cannot decode ({type(e).__name__})", path=path) from None
        finally:
            container.close()
    return total, gen()


def _frames_of_folder(path: Path) -> tuple[int, Iterator[tuple[int, np.ndarray]]]:
    from ..data.frames import _read_images

    images = sorted((int(p.stem), p) for p in path.iterdir()
                    if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit() and p.is_file())
    if not images:
        raise FormatError("no frame images (<number>.jpg/.png) in the folder", path=path)
    return len(images), ((n, _read_images((p,))[0]) for n, p in images)


def _source(video: Path) -> tuple[int, Iterator[tuple[int, np.ndarray]]]:
    if video.is_dir():
        return _frames_of_folder(video)
    if not video.is_file():
        raise UnreadableVideo("video file not found", path=video)
    if video.suffix.lower() not in VIDEO_EXTS:
        raise UnreadableVideo(f"the MOT reader takes {', '.join(VIDEO_EXTS)} videos; convert this one "
                              f"(e.g. to .mp4) first", path=video)
    return _frames_of_video(video)


def _copy_media(video: Path, out: Path, name: str) -> Path:
    """The dataset's copy of the frames (``videos/NAME.ext`` or ``frames/NAME/``); no copy when in place."""
    if video.is_dir():
        dest = out / "frames" / name
        if dest.resolve() != video.resolve():
            dest.mkdir(parents=True, exist_ok=True)
            for p in sorted(video.iterdir()):
                if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit() and p.is_file():
                    with atomic_path(dest / p.name) as tmp:
                        shutil.copyfile(p, tmp)
        return dest
    dest = out / "videos" / f"{name}{video.suffix.lower()}"
    if not (dest.exists() and dest.resolve() == video.resolve()):
        with atomic_path(dest) as tmp:
            shutil.copyfile(video, tmp)
    return dest


def tracks_text(tracks: Tracks) -> str:
    """MOT lines ``frame,id,x,y,w,h,1`` sorted by frame then id (conf 1: the reader ignores conf 0)."""
    rows = sorted((f, tid, b) for tid, boxes in tracks.items() for f, b in boxes.items())
    return "".join(f"{f},{tid},{b[0]:.2f},{b[1]:.2f},{b[2] - b[0]:.2f},{b[3] - b[1]:.2f},1\n" for f, tid, b in rows)


def _existing_rows(out: Path, name: str, T: int) -> tuple[list[str], list[dict]]:
    """Header and rows of ``out/clips.csv`` for the other videos. Without a clips.csv, the other videos'
    tracks (if any) get the reader's own windows as rows, so that adding a clips.csv hides none of them."""
    path = out / "clips.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h for h in (reader.fieldnames or [])]
            rows = [r for r in reader if (r.get("video") or "").strip() != name]
        return header or ["video", "start", "end"], rows
    others = [p for p in (out / "tracks").glob("*.txt") if p.stem != name] if (out / "tracks").is_dir() else []
    rows = []
    if others:
        from ..data.mot import read_mot

        ds = read_mot(out, frames_per_clip=T, skip_bad=True)
        rows = [{"video": c.video, "start": str(int(c.frame_ids[0])), "end": str(int(c.frame_ids[-1]))}
                for c in ds.clips if c.video != name]
    return ["video", "start", "end"], rows


def _write_clips(out: Path, name: str, spans: list[tuple[int, int]], T: int) -> None:
    header, rows = _existing_rows(out, name, T)
    rows += [{"video": name, "start": str(s), "end": str(e)} for s, e in spans]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "clips.csv", buf.getvalue())


def track_video(video: Path, out: Path, detector: Detector, options: TrackOptions | None = None) -> dict:
    """Detect, track and cut ``video`` into the MOT dataset ``out`` (see the module docs); the summary."""
    opts = options or TrackOptions()
    video, out = Path(video), Path(out)
    name = opts.name or (video.name if video.is_dir() else video.stem)
    total, frames = _source(video)
    tracker, cuts = Tracker(opts.tracker), CutDetector(opts.scene_threshold, opts.min_scene_len)
    n_frames = n_dets = n_masked = 0
    t0 = time.perf_counter()
    if opts.progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=total or None, desc=name, unit="frame", leave=False)
    for number, rgb in frames:
        boxes, scores = detector(rgb)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        ok = ((boxes[:, 2] - boxes[:, 0]) >= MIN_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_SIDE)
        if opts.region is not None and len(boxes):
            inside = opts.region.keep(boxes)
            n_masked += int((ok & ~inside).sum())
            ok &= inside
        n_dets += int(ok.sum())
        tracker.update(number, boxes[ok], scores[ok])
        cuts.add(rgb, number)
        n_frames += 1
    seconds = time.perf_counter() - t0
    if n_frames == 0:
        raise UnreadableVideo("no frame decoded", path=video)
    raw = tracker.tracks()
    filled = interpolate(raw, opts.max_gap)
    tracks = drop_short(filled, opts.min_track_len)
    cut_frames = cuts.cuts()
    summary = {"video": str(video), "name": name, "frames": n_frames, "detections": n_dets,
               "outside_region": n_masked, "tracks_found": len(raw), "tracks": len(tracks),
               "short_tracks_dropped": len(filled) - len(tracks),
               "boxes": sum(len(b) for b in tracks.values()),
               "interpolated": sum(len(filled[t]) - len(raw[t]) for t in raw),
               "scene_cuts": cut_frames, "clips": 0, "written": False,
               "s_per_frame": round(seconds / n_frames, 4)}
    if not tracks:
        summary["why_not_written"] = "no track"
        return summary
    present = sorted({f for b in tracks.values() for f in b})
    spans = [(s, e) for s, e in windows(present[0], present[-1], cut_frames, opts.frames_per_clip)
             if bisect.bisect_right(present, e) > bisect.bisect_left(present, s)]  # a tracked frame inside
    if not spans:
        summary["why_not_written"] = f"no window of {opts.frames_per_clip} frames inside one scene holds a track"
        return summary
    _copy_media(video, out, name)
    write_text_atomic(out / "tracks" / f"{name}.txt", tracks_text(tracks))
    _write_clips(out, name, spans, opts.frames_per_clip)
    summary.update(clips=len(spans), written=True)
    return summary
