"""Volleyball dataset reader (Ibrahim et al., CVPR 2016), also the synthetic layout.

Layout (either ``ROOT/videos/<match>/...`` or ``ROOT/<match>/...``)::

    videos/<match>/annotations.txt          <key>.jpg <activity> (x y w h action)*
    videos/<match>/<key>/<frame>.jpg        frames around the key frame (optional)
    tracking/<match>/<key>/<key>.txt        pid x1 y1 x2 y2 frame lost grouping generated action
    splits.json                             {"train": [...], "test": [...]} (optional)
    dataset.json                            image size / window of generated data (optional)

Each annotation line is one clip whose key frame is ``<key>``; the clip covers
the frames ``key + o`` for the window offsets ``o`` (default -5..+4, T = 10, the
setting the paper follows).
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

import numpy as np

from .clip import Clip, ClipDataset, ImageFrames, pad_persons
from .errors import (MAX_INT, BadBox, DataError, DuplicateKey, EmptyFile, FormatError, MalformedLine, MissingFrame,
                     Problems, UnknownLabel, parse_float, parse_int, read_text, text_lines)
from .frames import image_header_size
from .geometry import clip_box_to_image, iou_matrix
from .labels import VOLLEYBALL_ACTIONS, VOLLEYBALL_ACTIVITIES, normalise_volleyball_label
from .splits import assign_splits, read_splits

# Official split (videos/Info.txt of the dataset); the paper trains on train+val.
VOLLEYBALL_TRAIN = (1, 3, 6, 7, 10, 13, 15, 16, 18, 22, 23, 31, 32, 36, 38, 39, 40, 41, 42, 48, 50, 52, 53, 54)
VOLLEYBALL_VAL = (0, 2, 8, 12, 17, 19, 24, 26, 27, 28, 30, 33, 46, 49, 51)
VOLLEYBALL_TEST = (4, 5, 9, 11, 14, 20, 21, 25, 29, 34, 35, 37, 43, 44, 45, 47)
VOLLEYBALL_TRAINVAL = tuple(sorted(VOLLEYBALL_TRAIN + VOLLEYBALL_VAL))
# Videos recorded at 1920x1080; every other video is 1280x720.
VOLLEYBALL_FULL_HD = (2, 37, 38, 39, 40, 41, 44, 45)
DEFAULT_WINDOW = (-5, 4)
MAX_WINDOW = 1000  # frames per clip; a longer window in dataset.json is a typo
N_MAX = 12

_ACTIVITY_ID = {name: i for i, name in enumerate(VOLLEYBALL_ACTIVITIES)}
_ACTION_ID = {name: i for i, name in enumerate(VOLLEYBALL_ACTIONS)}


def official_split(video: str) -> str:
    """``train`` (train+val videos), ``test``, or ``""`` for a video outside the lists."""
    if not video.isdigit():
        return ""
    v = int(video)
    if v in VOLLEYBALL_TEST:
        return "test"
    return "train" if v in VOLLEYBALL_TRAINVAL else ""


def official_image_size(video: str) -> tuple[int, int]:
    """(height, width) of an official video."""
    if video.isdigit() and int(video) in VOLLEYBALL_FULL_HD:
        return (1080, 1920)
    return (720, 1280)


def _layout(root: Path) -> tuple[Path, Path]:
    """Return (videos_dir, tracking_dir) for either accepted layout."""
    videos = root / "videos" if (root / "videos").is_dir() else root
    return videos, root / "tracking"


def looks_like_volleyball(root: str | Path) -> bool:
    """True when ``root`` holds ``<match>/annotations.txt`` files whose lines start with ``<n>.jpg``."""
    videos, _ = _layout(Path(root))
    for ann in sorted(p for p in videos.glob("*/annotations.txt") if p.is_file())[:3]:
        first = _sniff_first_line(ann).split()
        if first and first[0].endswith(".jpg"):
            return True
    return False


def _sniff_first_line(path: Path) -> str:
    """The first line, decoded leniently (UTF-16/32 too): detection only sniffs, so
    that the reader, not the detection, reports a wrong encoding by name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return ""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        text = head.decode("utf-32", errors="replace")
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = head.decode("utf-16", errors="replace")
    else:  # UTF-8, or UTF-16 without a BOM once its NUL bytes are dropped
        text = head.replace(b"\x00", b"").decode("utf-8-sig", errors="replace")
    return text.split("\n", 1)[0]


def _read_meta(root: Path) -> dict:
    """``dataset.json``, checked: an object; ``image_size`` = [H, W] > 0; ``window`` = [first, last]."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(read_text(meta_path))
    except json.JSONDecodeError as exc:
        raise FormatError(f"cannot parse JSON ({exc.msg}, column {exc.colno})", path=meta_path,
                          line=exc.lineno) from None
    except RecursionError:
        raise FormatError("cannot parse JSON (nested too deeply)", path=meta_path) from None
    if not isinstance(meta, dict):
        raise FormatError("expected a JSON object", path=meta_path)
    if "image_size" in meta:
        size = meta["image_size"]
        if not _int_pair(size) or not all(1 <= v <= MAX_INT for v in size):
            raise FormatError(f"image_size must be [height, width] in pixels, got {json.dumps(size)[:40]}",
                              path=meta_path)
    if "window" in meta:
        window = meta["window"]
        if not _int_pair(window) or not 0 <= window[1] - window[0] < MAX_WINDOW or abs(window[0]) > MAX_INT:
            raise FormatError(f"window must be [first, last] frame offsets, first <= last, at most {MAX_WINDOW} "
                              f"frames; got {json.dumps(window)[:40]}", path=meta_path)
    return meta


def _int_pair(value) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _first_frame(videos_dir: Path, video: str) -> Path | None:
    """The first frame (by name) under the video folder; ``None`` when it has none."""
    for clip_dir in sorted(p for p in (videos_dir / video).iterdir() if p.is_dir()):
        for img in sorted(p for p in clip_dir.glob("*.jpg") if p.is_file())[:1]:
            return img
    return None


def _image_size(videos_dir: Path, video: str, meta: dict, meta_path: Path) -> tuple[int, int]:
    """(H, W) of a video: ``dataset.json``, else the first frame's header, else the official table.

    A corrupt first frame raises :class:`UnreadableFrame` naming it (never a
    guessed size); a ``dataset.json`` size that the frames contradict is a
    :class:`FormatError` naming both.
    """
    first = _first_frame(videos_dir, video)
    header = image_header_size(first) if first is not None else None
    if "image_size" not in meta:
        return header or official_image_size(video)
    size = tuple(int(v) for v in meta["image_size"])
    if header is not None and header != size:
        raise FormatError(f"image_size {size[0]}x{size[1]} (height x width) contradicts the "
                          f"{header[0]}x{header[1]} frame {first}", path=meta_path)
    return size


def parse_annotation_line(line: str, path: Path, lineno: int, image_size: tuple[int, int]):
    """Parse ``<key>.jpg <activity> (x y w h action)*``.

    Returns ``(key, activity_id, boxes (n, 4) x1y1x2y2, actions (n,))``; raises a
    typed :class:`DataError` naming ``path:lineno``.
    """
    tokens = line.split()
    if len(tokens) < 2 or not tokens[0].endswith(".jpg") or (len(tokens) - 2) % 5:
        raise MalformedLine(f"expected '<frame>.jpg <activity> (x y w h action)*', got {line.strip()[:80]!r}",
                            path=path, line=lineno)
    try:
        key = parse_int(tokens[0][:-4], 0, MAX_INT)
    except ValueError:
        raise MalformedLine(f"frame name {tokens[0][:40]!r} is not a number in 0..{MAX_INT}",
                            path=path, line=lineno) from None
    activity = normalise_volleyball_label(tokens[1])
    if activity not in _ACTIVITY_ID:
        raise UnknownLabel(f"activity {tokens[1]!r} (known: {', '.join(VOLLEYBALL_ACTIVITIES)})",
                           path=path, line=lineno)
    boxes, actions = [], []
    for p in range(2, len(tokens), 5):
        try:
            x, y, w, h = (parse_float(t) for t in tokens[p:p + 4])
        except ValueError:
            raise MalformedLine(f"person {(p - 2) // 5}: non-numeric or non-finite box {tokens[p:p + 4]}",
                                path=path, line=lineno) from None
        action = tokens[p + 4].lower()
        if action not in _ACTION_ID:
            raise UnknownLabel(f"action {tokens[p + 4]!r} (known: {', '.join(VOLLEYBALL_ACTIONS)})",
                               path=path, line=lineno)
        if w <= 0 or h <= 0:
            raise BadBox(f"person {(p - 2) // 5}: non-positive size w={w:g} h={h:g}", path=path, line=lineno)
        box = clip_box_to_image((x, y, x + w, y + h), image_size)
        if box is None:
            raise BadBox(f"person {(p - 2) // 5}: box {x:g},{y:g},{w:g},{h:g} lies outside the "
                         f"{image_size[1]}x{image_size[0]} image", path=path, line=lineno)
        boxes.append(box)
        actions.append(_ACTION_ID[action])
    return key, _ACTIVITY_ID[activity], np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(actions, np.int64)


def read_tracks(path: Path, problems: Problems) -> dict[int, dict[int, tuple[np.ndarray, bool]]]:
    """Parse a tracking file into ``{pid: {frame: (box x1y1x2y2, lost)}}``.

    Bad lines (field count, non-integer or non-finite numbers, a second box for
    one person and frame) are reported naming ``path:line``.
    """
    tracks: dict[int, dict[int, tuple[np.ndarray, bool]]] = {}
    first_line: dict[tuple[int, int], int] = {}
    for lineno, line in text_lines(path, problems):
        f = line.split()
        try:
            if len(f) != 10:
                raise ValueError(f"{len(f)} fields")
            pid, x1, y1, x2, y2, frame, lost = (parse_int(v) for v in f[:7])
        except ValueError as exc:
            problems.report(MalformedLine(
                f"expected 'pid x1 y1 x2 y2 frame lost grouping generated action' with integers ({exc})",
                path=path, line=lineno))
            continue
        if (pid, frame) in first_line:
            problems.report(DuplicateKey(f"person {pid} has a second box at frame {frame} (first on line "
                                         f"{first_line[(pid, frame)]})", path=path, line=lineno))
            continue
        first_line[(pid, frame)] = lineno
        tracks.setdefault(pid, {})[frame] = (np.array([x1, y1, x2, y2], np.float32), bool(lost))
    return tracks


def _tracked_boxes(key_boxes: np.ndarray, frame_ids: np.ndarray, key: int,
                   tracks: dict, image_size: tuple[int, int]) -> np.ndarray:
    """Per-frame boxes ``(T, n, 4)`` for the annotated persons, taken from tracks.

    Annotated persons are matched to track ids by IoU at the key frame
    (greedy, highest first, IoU >= 0.5). A frame where the matched track is
    lost, missing or leaves the image uses the track's nearest usable frame
    (the earlier one on ties);
    an unmatched person keeps its key-frame box on every frame.
    """
    T, n = len(frame_ids), len(key_boxes)
    out = np.repeat(key_boxes[None], T, axis=0)  # (T, n, 4)
    pids = [p for p in tracks if key in tracks[p]]
    if not pids or n == 0:
        return out
    track_key = np.stack([tracks[p][key][0] for p in pids])  # (P, 4)
    iou = iou_matrix(key_boxes, track_key)  # (n, P)
    used_rows, used_cols = set(), set()
    for flat in np.argsort(-iou, axis=None):
        i, j = divmod(int(flat), len(pids))
        if iou[i, j] < 0.5:
            break
        if i in used_rows or j in used_cols:
            continue
        used_rows.add(i)
        used_cols.add(j)
        usable = {}
        for frame, (box, lost) in tracks[pids[j]].items():
            clipped = None if lost else clip_box_to_image(box, image_size)
            if clipped is not None:
                usable[frame] = clipped
        if not usable:
            continue
        frames = np.array(sorted(usable))
        for t, fid in enumerate(frame_ids):
            nearest = frames[np.argmin(np.abs(frames - fid))]
            out[t, i] = usable[int(nearest)]
    return out


def read_volleyball(root: str | Path, *, window: tuple[int, int] | None = None, n_max: int = N_MAX,
                    use_tracks: bool = True, require_frames: bool = False,
                    videos: list[str] | None = None, skip_bad: bool = False) -> ClipDataset:
    """Read a Volleyball-layout dataset into a :class:`ClipDataset`.

    ``window`` = (first, last) frame offset around the key frame (default from
    ``dataset.json``, else -5..+4). Persons beyond ``n_max`` are dropped,
    smallest boxes first. ``require_frames`` turns a clip without a frame
    folder into a :class:`MissingFrame` error. ``videos`` restricts the read to
    these match ids. With ``skip_bad`` bad lines/clips/videos are skipped and
    listed in ``dataset.skipped``; otherwise the first one raises.
    """
    root = Path(root)
    if not root.is_dir():
        raise FormatError("dataset folder does not exist", path=root)
    if n_max < 1:
        raise ValueError("n_max must be >= 1")
    videos_dir, tracking_dir = _layout(root)
    meta = _read_meta(root)
    if window is None:
        window = tuple(meta.get("window", DEFAULT_WINDOW))
    first, last = int(window[0]), int(window[1])
    if last < first:
        raise ValueError(f"window {window}: last offset must be >= first")
    offsets = np.arange(first, last + 1)
    key_index = int(np.argmin(np.abs(offsets))) if first <= 0 <= last else 0
    splits = read_splits(root)
    problems = Problems(skip_bad)
    ann_files = sorted(videos_dir.glob("*/annotations.txt"), key=lambda p: _video_key(p.parent.name))
    on_disk = [p.parent.name for p in ann_files]
    if videos is not None:
        wanted = {str(v) for v in videos}
        ann_files = [p for p in ann_files if p.parent.name in wanted]
    if not ann_files:
        raise FormatError("no <match>/annotations.txt found (is this a Volleyball-layout folder?)", path=videos_dir)

    clips: list[Clip] = []
    for ann in ann_files:
        clips += _read_video(ann, meta, root / "dataset.json", offsets, key_index, n_max, videos_dir,
                             tracking_dir if use_tracks else None, require_frames, problems)
    assign_splits(clips, splits, lambda c: official_split(c.video), problems,
                  videos=on_disk, read=[p.parent.name for p in ann_files])
    return ClipDataset("volleyball", root, clips, VOLLEYBALL_ACTIVITIES, VOLLEYBALL_ACTIONS, problems.errors)


def _read_video(ann: Path, meta: dict, meta_path: Path, offsets, key_index, n_max, videos_dir, tracking_dir,
                require_frames, problems: Problems) -> list[Clip]:
    """The clips of one ``<match>/annotations.txt``; a bad video is reported whole (empty, unreadable)."""
    video = ann.parent.name
    try:
        image_size = _image_size(videos_dir, video, meta, meta_path)
    except DataError as err:
        problems.report(err)
        return []
    reported = len(problems)
    lines = text_lines(ann, problems)
    if not lines and len(problems) == reported:  # (an unreadable file was reported by text_lines)
        problems.report(EmptyFile("no annotation lines (one '<frame>.jpg <activity> (x y w h action)*' "
                                  "line per clip expected)", path=ann))
    clips: list[Clip] = []
    first_line: dict[int, int] = {}
    for lineno, line in lines:
        try:
            clip = _read_clip(line, ann, lineno, video, image_size, offsets, key_index, n_max,
                              videos_dir, tracking_dir, require_frames, problems, first_line)
        except DataError as err:
            if err.clip is None:
                err.clip = _clip_of(line, video)
            problems.report(err)
            continue
        clips.append(clip)
    return clips


def _clip_of(line: str, video: str) -> str | None:
    """``video/key`` of an annotation line whose first field is ``<key>.jpg`` (to locate a bad line's clip)."""
    first = line.split(maxsplit=1)[0]
    return f"{video}/{int(first[:-4])}" if re.fullmatch(r"\d{1,9}\.jpg", first) else None


def _read_clip(line, ann, lineno, video, image_size, offsets, key_index, n_max,
               videos_dir, tracking_dir, require_frames, problems, first_line: dict[int, int]) -> Clip:
    key, activity, boxes, actions = parse_annotation_line(line, ann, lineno, image_size)
    if key in first_line:
        raise DuplicateKey(f"key frame {key} (clip {video}/{key}) is already annotated on line {first_line[key]}; "
                           f"one line per clip", path=ann, line=lineno)
    first_line[key] = lineno
    if len(boxes) > n_max:  # keep the n_max largest persons, in annotation order
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = np.sort(np.argsort(-area, kind="stable")[:n_max])
        boxes, actions = boxes[keep], actions[keep]
    frame_ids = key + offsets
    tracked = False
    per_frame = np.repeat(boxes[None], len(offsets), axis=0)  # (T, n, 4)
    track_file = tracking_dir / video / str(key) / f"{key}.txt" if tracking_dir is not None else None
    tracks = read_tracks(track_file, problems) if track_file is not None and track_file.is_file() else {}
    if tracks:  # (a tracking file whose lines were all skipped as bad leaves the key-frame boxes: not tracked)
        per_frame = _tracked_boxes(boxes, frame_ids, key, tracks, image_size)
        tracked = True
    clip_id = f"{video}/{key}"
    frames = None
    clip_dir = videos_dir / video / str(key)
    if clip_dir.is_dir():
        paths = tuple(clip_dir / f"{f}.jpg" for f in frame_ids)
        for p in paths:
            if not p.is_file():
                raise MissingFrame(f"frame file {p} is missing", path=ann, line=lineno, clip=clip_id)
        frames = ImageFrames(paths, size=image_size)  # read_frames refuses a frame of another size
    elif require_frames:
        raise MissingFrame(f"frame folder {clip_dir} is missing", path=ann, line=lineno, clip=clip_id)
    out_boxes, mask, out_actions = pad_persons(per_frame, actions, n_max)  # (T, N, 4), (N,), (N,)
    return Clip(video=video, clip=str(key), frame_ids=frame_ids.astype(np.int64), boxes=out_boxes, mask=mask,
                actions=out_actions, activity=activity, group=video, image_size=image_size, frames=frames,
                tracked=tracked, key_index=key_index)


def _video_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
