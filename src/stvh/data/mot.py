"""Reader for user data: MOT-Challenge tracks plus a video file or a frame folder.

Layout (see ``docs/data-user.md``)::

    <root>/tracks/<video>.txt        frame,id,x,y,w,h[,conf,...]   (1-based frames)
    <root>/videos/<video>.<ext>      mp4/avi/mkv/mov, decoded with PyAV, index = frame - 1
    <root>/frames/<video>/<n>.jpg    or .png/.jpeg, named by frame number (any zero padding)
    <root>/clips.csv                 optional: video,start,end[,activity][,group][,split]
    <root>/splits.json               optional {"train": [...], "test": [...]}

Without ``clips.csv`` each video is cut into non-overlapping windows of
``frames_per_clip`` frames, all unlabeled.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cad import xywh_to_box
from .clip import UNKNOWN, Clip, ClipDataset, ImageFrames, VideoFrames, pad_persons
from .errors import (MAX_INT, AmbiguousLabel, BadBox, DataError, DuplicateKey, EmptyFile, FormatError,
                     MalformedLine, MissingFrame, Problems, UnknownLabel, UnreadableVideo, parse_float, parse_int,
                     read_text, text_lines)
from .frames import image_header_size, size_mismatch
from .splits import ACCEPTED, assign_splits, canonical_split, read_splits

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
NO_SPLIT = "all"  # split of every clip when there is no splits.json


@dataclass
class _Source:
    """Where a video's frames are: an image folder or a video file."""

    path: Path
    size: tuple[int, int]                 # (height, width)
    images: dict[int, Path] | None = None  # frame number -> file (folders)
    n_frames: int = 0                     # frames in the video file (0 = unknown)
    checked: set[Path] = field(default_factory=set)  # images whose header size was checked

    def frames_for(self, frame_ids: list[int], clip_id: str) -> ImageFrames | VideoFrames | DataError:
        """The clip's frame source, or the problem (missing frame, an image of another size) to report."""
        if self.images is not None:
            paths = []
            for f in frame_ids:
                p = self.images.get(f)
                if p is None:
                    return MissingFrame(f"no image for frame {f}", path=self.path, clip=clip_id)
                problem = self._check_size(p, clip_id)
                if problem is not None:
                    return problem
                paths.append(p)
            return ImageFrames(tuple(paths), size=self.size)
        idx = tuple(f - 1 for f in frame_ids)
        if self.n_frames and max(idx) >= self.n_frames:
            return MissingFrame(f"frame {max(idx) + 1} beyond the {self.n_frames} frames of the video",
                                path=self.path, clip=clip_id)
        return VideoFrames(self.path, idx, size=self.size)

    def _check_size(self, image: Path, clip_id: str) -> DataError | None:
        """An image's header size against the folder's (its first image's): boxes are pixels of one size."""
        if image in self.checked:
            return None
        try:
            size = image_header_size(image)
        except DataError as err:
            err.clip = clip_id
            return err
        if size != self.size:
            first = self.images[min(self.images)].name
            return FormatError(size_mismatch("this frame", size, self.size, f"the video's first frame {first}"),
                               path=image, clip=clip_id)
        self.checked.add(image)
        return None


def looks_like_mot(root: str | Path) -> bool:
    """True when ``root/tracks`` holds at least one ``.txt`` track file (a broken link counts: the reader names it)."""
    tracks = Path(root) / "tracks"
    return tracks.is_dir() and any(p.suffix == ".txt" and (p.is_file() or p.is_symlink()) for p in tracks.iterdir())


def _broken_link(path: Path) -> str | None:
    """A message when ``path`` is a symbolic link whose target does not exist (``None`` otherwise)."""
    if path.is_symlink() and not path.exists():
        try:
            target = path.readlink()
        except OSError:
            target = "?"
        return f"broken symbolic link (its target {target} does not exist)"
    return None


def _track_names(root: Path, problems: Problems) -> tuple[list[str], list[str]]:
    """Video names of ``tracks/*.txt``, and those whose track file is a broken link or a folder (each
    reported, never silently dropped)."""
    names, bad = [], []
    for p in sorted((root / "tracks").iterdir()):
        if p.suffix != ".txt":
            continue
        if p.is_file():
            names.append(p.stem)
        elif p.is_symlink() or p.is_dir():
            problems.report(FormatError(_broken_link(p) or "a folder, not a track file", path=p))
            bad.append(p.stem)
    return names, bad


def _image_folder(folder: Path, problems: Problems) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit() and p.is_file():
            n = int(p.stem)
            if n in out:
                problems.report(FormatError(f"two images for frame {n}: {out[n].name} and {p.name}",
                                            path=folder))
                continue
            out[n] = p
    return out


def _find_source(root: Path, video: str, problems: Problems) -> _Source | None:
    """The frames of ``video``: ``frames/<video>/`` wins over ``videos/<video>.<ext>``."""
    folder = root / "frames" / video
    if folder.is_dir():
        images = _image_folder(folder, problems)
        if not images:
            problems.report(MissingFrame("no frame images (<number>.jpg/.png) in the folder", path=folder))
            return None
        try:
            size = image_header_size(images[min(images)])
        except DataError as err:  # never guess a frame size from a corrupt image
            problems.report(err)
            return None
        return _Source(folder, size, images=images)
    for ext in VIDEO_EXTS:
        path = root / "videos" / f"{video}{ext}"
        if path.is_file():
            return _probe_video(path, problems)
        if _broken_link(path):
            problems.report(UnreadableVideo(_broken_link(path), path=path))
            return None
    problems.report(MissingFrame(
        f"no frames/{video}/ folder and no videos/{video}.{{{','.join(e[1:] for e in VIDEO_EXTS)}}}",
        path=root / "tracks" / f"{video}.txt"))
    return None


def _probe_video(path: Path, problems: Problems) -> _Source | None:
    import av
    from av.error import FFmpegError

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                problems.report(UnreadableVideo("no video stream", path=path))
                return None
            stream = container.streams.video[0]
            h, w = stream.codec_context.height, stream.codec_context.width
            n = int(stream.frames or 0)
    except (FFmpegError, OSError, ValueError) as e:
        problems.report(UnreadableVideo(f"cannot open: {e}", path=path))
        return None
    if not h or not w:
        problems.report(UnreadableVideo("stream has no frame size", path=path))
        return None
    return _Source(path, (int(h), int(w)), n_frames=n)


def _parse_tracks(path: Path, size: tuple[int, int], problems: Problems) -> dict[int, dict[int, np.ndarray]]:
    """``{track id: {frame: box x1y1x2y2}}``; rows with ``conf == 0`` are ignored.

    An empty file, or one whose rows all have ``conf == 0``, is an
    :class:`EmptyFile`: a video must not silently give no clips.
    """
    tracks: dict[int, dict[int, np.ndarray]] = {}
    first_line: dict[tuple[int, int], int] = {}
    reported = len(problems)
    lines = text_lines(path, problems)
    if not lines and len(problems) == reported:  # (an unreadable file was reported by text_lines)
        problems.report(EmptyFile("no rows (one 'frame,id,x,y,w,h[,conf,...]' row per box expected)", path=path))
    ignored = 0
    for lineno, raw in lines:
        fields = [f.strip() for f in raw.split(",")] if "," in raw else raw.split()
        if len(fields) < 6:
            problems.report(MalformedLine(f"expected 'frame,id,x,y,w,h[,conf,...]', got {len(fields)} fields",
                                          path=path, line=lineno))
            continue
        try:
            frame, tid = parse_int(fields[0]), parse_int(fields[1])
            x, y, w, h = (parse_float(f, MAX_INT) for f in fields[2:6])
            conf = parse_float(fields[6]) if len(fields) > 6 else 1.0
        except ValueError as exc:
            problems.report(MalformedLine(f"non-numeric, non-finite or too large (above 10^9) field in "
                                          f"{raw[:80]!r} ({exc})", path=path, line=lineno))
            continue
        if conf == 0:
            ignored += 1
            continue
        if frame < 1:
            problems.report(MalformedLine(f"frame {frame} < 1 (MOT frames are 1-based)", path=path, line=lineno))
            continue
        if tid < 0:
            problems.report(MalformedLine(f"track id {tid} < 0 (detections without ids are not tracks)",
                                          path=path, line=lineno))
            continue
        box = xywh_to_box(x, y, w, h, size)
        if isinstance(box, str):
            problems.report(BadBox(box, path=path, line=lineno))
            continue
        if (tid, frame) in first_line:
            problems.report(DuplicateKey(f"track {tid} has two boxes at frame {frame} (first on line "
                                         f"{first_line[(tid, frame)]})", path=path, line=lineno))
            continue
        first_line[(tid, frame)] = lineno
        tracks.setdefault(tid, {})[frame] = box
    if lines and ignored == len(lines):
        problems.report(EmptyFile(f"all {ignored} rows have conf=0; nothing is tracked", path=path))
    return tracks


@dataclass
class _Video:
    name: str
    source: _Source
    tracks: dict[int, dict[int, np.ndarray]]
    first: int
    last: int


def _load_video(root: Path, name: str, problems: Problems) -> _Video | None:
    source = _find_source(root, name, problems)
    if source is None:
        return None
    tracks = _parse_tracks(root / "tracks" / f"{name}.txt", source.size, problems)
    if not tracks:
        return None
    frames = [f for t in tracks.values() for f in t]
    return _Video(name, source, tracks, min(frames), max(frames))


def _persons(video: _Video, frame_ids: list[int], n_max: int) -> np.ndarray:
    """Boxes ``(T, n, 4)`` of the ids present in the window (see module docs)."""
    window = set(frame_ids)
    counts = {tid: len(window & tr.keys()) for tid, tr in video.tracks.items()}
    present = sorted((t for t, c in counts.items() if c > 0), key=lambda t: (-counts[t], t))
    ids = sorted(present[:n_max])
    boxes = np.zeros((len(frame_ids), len(ids), 4), dtype=np.float32)
    for j, tid in enumerate(ids):
        track = video.tracks[tid]
        known = np.array(sorted(track), dtype=np.int64)
        for i, f in enumerate(frame_ids):
            if f in track:
                boxes[i, j] = track[f]
                continue
            k = int(np.searchsorted(known, f))  # nearest frame of the track; ties -> earlier
            cands = [known[c] for c in (k - 1, k) if 0 <= c < len(known)]
            nearest = min(cands, key=lambda g: (abs(int(g) - f), int(g)))
            boxes[i, j] = track[int(nearest)]
    return boxes


@dataclass
class _Row:
    line: int
    video: str
    start: int
    end: int
    activity: str
    group: str
    split: str = ""


def _read_clips_csv(path: Path, problems: Problems) -> list[_Row]:
    """The rows of ``clips.csv`` (read with :func:`read_text`), each checked; bad rows are reported."""
    rows: list[_Row] = []
    try:
        text = read_text(path)
    except FormatError as err:
        problems.report(err)
        return rows
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        problems.report(EmptyFile("no header (video,start,end[,activity][,group] expected)", path=path))
        return rows
    except csv.Error as e:
        problems.report(MalformedLine(str(e), path=path, line=1))
        return rows
    missing = {"video", "start", "end"} - set(header)
    if missing or len(set(header)) != len(header):
        what = f"missing {sorted(missing)}" if missing else "a column is named twice"
        problems.report(MalformedLine(f"header must name video,start,end[,activity][,group][,split]; {what}",
                                      path=path, line=1))
        return rows
    col = {h: i for i, h in enumerate(header)}
    spellings: dict[tuple[str, str], tuple[str, int]] = {}  # (column, lower-case value) -> (first spelling, line)
    reported, rows_seen = len(problems), 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.report(MalformedLine(str(e), path=path, line=reader.line_num))
            continue
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue
        rows_seen += 1
        if len(row) != len(header):
            problems.report(MalformedLine(f"expected {len(header)} fields, got {len(row)}", path=path, line=line))
            continue
        get = lambda name: row[col[name]].strip() if name in col else ""  # noqa: E731
        try:
            start, end = parse_int(get("start"), 1, MAX_INT), parse_int(get("end"), 1, MAX_INT)
        except ValueError:
            problems.report(MalformedLine(f"start/end must be integers 1..{MAX_INT} (frame numbers): {row!r}"[:200],
                                          path=path, line=line))
            continue
        video = get("video")
        if not video:
            problems.report(MalformedLine("empty video name", path=path, line=line))
            continue
        if end < start:
            problems.report(MalformedLine(f"end {end} < start {start}", path=path, line=line))
            continue
        clash = _case_clash(spellings, (("activity", get("activity")), ("group", get("group"))), line)
        if clash:
            problems.report(AmbiguousLabel(clash, path=path, line=line))
            continue
        split = canonical_split(get("split")) if get("split") else ""
        if split is None:
            problems.report(MalformedLine(f"split {get('split')!r} is not a split name ({ACCEPTED})", path=path,
                                          line=line))
            continue
        rows.append(_Row(line, video, start, end, get("activity"), get("group"), split))
    if not rows_seen and len(problems) == reported:
        problems.report(EmptyFile("a header but no clip rows; add rows or delete clips.csv to cut every video "
                                  "into windows", path=path))
    return rows


def _case_clash(spellings: dict, values, line: int) -> str | None:
    """A message when a value differs from an earlier one only in case (``Right`` / ``right``)."""
    for column, value in values:
        if not value:
            continue
        first, first_line = spellings.setdefault((column, value.lower()), (value, line))
        if first != value:
            return f"{column} {value!r} differs from {first!r} (line {first_line}) only in case; use one spelling"
    return None


def _window_starts(video: _Video, T: int) -> list[int]:
    """Starts of the non-overlapping T-frame windows ``first, first + T, ...`` that hold a tracked
    frame and end by the last one (a window without a tracked person gives no clip anyway, and a
    stray frame number 10^9 must not enumerate 10^8 empty windows)."""
    starts = {video.first + (f - video.first) // T * T for track in video.tracks.values() for f in track}
    return sorted(s for s in starts if s + T - 1 <= video.last)


def _check_vocabulary(activities) -> None:
    """``activities=(...)``: non-empty strings, no two differing only in case."""
    seen: dict[str, str] = {}
    for a in activities:
        if not isinstance(a, str) or not a.strip():
            raise ValueError(f"activities must be non-empty strings, got {a!r}")
        if a.lower() in seen:
            raise ValueError(f"activities {seen[a.lower()]!r} and {a!r} differ only in case (or repeat); "
                             f"use one spelling")
        seen[a.lower()] = a


def read_mot(root: str | Path, *, frames_per_clip: int = 10, n_max: int = 12,
             activities: tuple[str, ...] | list[str] | None = None,
             skip_bad: bool = False) -> ClipDataset:
    """Read MOT tracks + videos/frame folders (+ optional clips.csv) into a ClipDataset."""
    root = Path(root)
    T = int(frames_per_clip)
    if T < 1:
        raise ValueError("frames_per_clip must be >= 1")
    if n_max < 1:
        raise ValueError("n_max must be >= 1")
    if not looks_like_mot(root):
        raise FormatError("no tracks/<video>.txt files found", path=root)
    if activities is not None:
        _check_vocabulary(activities)
    problems = Problems(skip_bad=skip_bad)
    splits = read_splits(root)
    csv_path = root / "clips.csv"
    track_names, bad_tracks = _track_names(root, problems)

    # video, start, frame ids, activity, group, clips.csv line (None without clips.csv)
    plans: list[tuple[str, int, list[int], str, str, int | None]] = []
    csv_splits: dict[str, str] = {}  # clip id -> the split column of clips.csv (splits.json overrides it)
    videos: dict[str, _Video | None] = {}

    def video(name: str) -> _Video | None:
        if name not in videos:
            videos[name] = _load_video(root, name, problems)
        return videos[name]

    if csv_path.is_file():
        rows = _read_clips_csv(csv_path, problems)
        names = set(track_names)
        planned: dict[tuple[str, int], int] = {}
        vocab = tuple(activities) if activities is not None else tuple(
            sorted({r.activity for r in rows if r.activity}))
        for r in rows:
            if r.video in bad_tracks:
                continue  # its track file was reported (skip_bad) already
            if r.video not in names:
                hint = [n for n in names if n.lower() == r.video.lower()]
                hint_text = f" (tracks/{hint[0]}.txt differs only in case)" if hint else ""
                problems.report(MalformedLine(f"video {r.video!r} has no tracks/{r.video}.txt{hint_text}",
                                              path=csv_path, line=r.line))
                continue
            v = video(r.video)
            if v is None:
                continue  # the video's own problem was reported (skip_bad) already
            if r.start < v.first or r.end > v.last:
                problems.report(MalformedLine(
                    f"frames {r.start}..{r.end} outside the track range {v.first}..{v.last} of {r.video}",
                    path=csv_path, line=r.line))
                continue
            if r.activity and r.activity not in vocab:
                hint = [a for a in vocab if a.lower() == r.activity.lower()]
                hint_text = f"; {hint[0]!r} differs only in case" if hint else ""
                problems.report(UnknownLabel(f"activity {r.activity!r} not in {list(vocab)}{hint_text}",
                                             path=csv_path, line=r.line))
                continue
            if (r.video, r.start) in planned:
                problems.report(DuplicateKey(
                    f"duplicate clip {r.video}/{r.start:06d} (same video and start as line "
                    f"{planned[(r.video, r.start)]})", path=csv_path, line=r.line))
                continue
            planned[(r.video, r.start)] = r.line
            ids = np.rint(np.linspace(r.start, r.end, T)).astype(np.int64).tolist()
            plans.append((r.video, r.start, ids, r.activity, r.group or r.video, r.line))
            if r.split:
                csv_splits[f"{r.video}/{r.start:06d}"] = r.split
    else:
        vocab = tuple(activities) if activities is not None else ()
        for name in track_names:
            v = video(name)
            if v is None:
                continue
            for start in _window_starts(v, T):
                plans.append((name, start, list(range(start, start + T)), "", name, None))

    clips: list[Clip] = []
    for name, start, frame_ids, activity, group, line in plans:
        v = videos[name]
        clip_name = f"{start:06d}"
        clip_id = f"{name}/{clip_name}"
        boxes = _persons(v, frame_ids, n_max)
        if boxes.shape[1] == 0:
            if line is not None:
                problems.report(MalformedLine(f"no tracked person in the frames of clip {clip_id}",
                                              path=csv_path, line=line))
            continue  # automatic windows without persons are dropped
        frames = v.source.frames_for(frame_ids, clip_id)
        if isinstance(frames, DataError):
            problems.report(frames)
            continue
        boxes, mask, actions = pad_persons(boxes, np.full(boxes.shape[1], UNKNOWN, np.int64), n_max)
        clip = Clip(video=name, clip=clip_name, frame_ids=np.asarray(frame_ids, dtype=np.int64),
                    boxes=boxes, mask=mask, actions=actions,
                    activity=vocab.index(activity) if activity else UNKNOWN, group=group,
                    image_size=v.source.size, frames=frames, tracked=True, key_index=T // 2)
        clip.validate()
        clips.append(clip)

    no_split = "" if csv_splits else NO_SPLIT  # a split column that leaves a row empty: that clip is in no split
    assign_splits(clips, splits, lambda c: csv_splits.get(c.id, no_split), problems,
                  videos=track_names + bad_tracks, read=videos)
    return ClipDataset(format="mot", root=root, clips=clips, activities=vocab, actions=(),
                       skipped=list(problems.errors))
