"""Write any readable dataset in the MOT user layout (``docs/data-user.md``).

``export_mot(src, dst)`` turns each video of ``src`` (a Volleyball match, a CAD
sequence, ...) into one MOT video: its clips are laid end to end, clip ``j``
occupying frames ``j*T + 1 .. (j+1)*T``; every real person of a clip becomes a
track of its own. It writes ``tracks/<video>.txt``, the frames (an mp4 encoded
with PyAV, or a frame folder of JPEGs), ``clips.csv`` (video, start, end,
activity, group) and ``splits.json`` (clip ids per split). Used to try the user-data path on
the synthetic data (``stvh data export-mot``) and by the tests; it never
imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .formats import read_dataset
from .frames import read_frames


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    import av

    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = [f[: h - h % 2, : w - w % 2] for f in frames]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format=path.suffix.lstrip(".")) as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.bit_rate = 4_000_000
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def _write_frames(folder: Path, frames: list[np.ndarray]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for n, f in enumerate(frames, start=1):
        with atomic_path(folder / f"{n:06d}.jpg") as tmp:
            Image.fromarray(f).save(tmp, format="JPEG", quality=92)


def export_mot(src: str | Path, dst: str | Path, *, media: str = "video", labels: bool = True,
               splits: bool = True, videos: list[str] | None = None, unlabeled: list[str] = ()) -> dict:
    """Write ``src`` in the MOT layout under ``dst``; returns counts.

    ``media``: ``"video"`` (``videos/<v>.mp4``), ``"frames"`` (``frames/<v>/NNNNNN.jpg``) or
    ``"mixed"`` (videos and frame folders in turn, to exercise both readers).
    ``labels=False`` leaves the activity column empty; ``unlabeled`` names
    videos whose clips get no activity and no split (footage to encode with a
    model trained on the others). ``splits=False`` writes no ``splits.json``.
    ``videos`` restricts the export to these video names.
    """
    if media not in ("video", "frames", "mixed"):
        raise ValueError(f"media must be 'video', 'frames' or 'mixed', got {media!r}")
    ds = read_dataset(src, flag=None)
    by_video: dict[str, list] = {}
    for c in ds.clips:
        if c.frames is None:
            continue
        if videos is None or c.video in set(map(str, videos)):
            by_video.setdefault(c.video, []).append(c)
    if not by_video:
        raise ValueError(f"{src}: no clip with frames to export")
    dst = Path(dst)
    rows = []
    for i, (video, clips) in enumerate(sorted(by_video.items())):
        name = f"v{video}"
        lines, frames, start = [], [], 1
        for j, c in enumerate(clips):
            imgs = read_frames(c.frames)  # (T, H, W, 3)
            T = len(imgs)
            for t in range(T):
                for n in np.flatnonzero(c.mask):
                    x1, y1, x2, y2 = (float(v) for v in c.boxes[t, n])
                    lines.append(f"{start + t},{j * 100 + int(n) + 1},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1")
            frames.extend(imgs)
            keep_label = labels and video not in set(map(str, unlabeled)) and c.activity >= 0
            rows.append({"video": name, "start": start, "end": start + T - 1,
                         "activity": ds.activities[c.activity] if keep_label else "", "group": c.group,
                         "split": "" if video in set(map(str, unlabeled)) else c.split, "id": f"{name}/{start:06d}"})
            start += T
        write_text_atomic(dst / "tracks" / f"{name}.txt", "\n".join(lines) + "\n")
        if media == "video" or media == "mixed" and i % 2 == 0:
            _write_video(dst / "videos" / f"{name}.mp4", frames)
        else:
            _write_frames(dst / "frames" / name, frames)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["video", "start", "end", "activity", "group"], extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(dst / "clips.csv", buf.getvalue())
    if splits:
        named: dict[str, list[str]] = {}
        for r in rows:
            if r["split"]:
                named.setdefault(r["split"], []).append(r["id"])
        write_text_atomic(dst / "splits.json", json.dumps(named, indent=1) + "\n")
    return {"path": str(dst), "videos": len(by_video), "clips": len(rows), "media": media,
            "labelled_clips": sum(bool(r["activity"]) for r in rows)}
