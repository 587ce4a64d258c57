"""Uploaded clips: a short video or a zip of frames, plus MOT tracks -> one :class:`Clip`.

The upload is laid out as a MOT folder (``docs/data-user.md``)::

    <root>/tracks/<name>.txt          the tracks file as uploaded
    <root>/videos/<name>.<ext>        the video, or
    <root>/frames/<name>/<n>.<ext>    the zip's frame images, renamed by the server
    <root>/clips.csv                  one row: the whole tracked range is one clip

and read with :func:`stvh.data.mot.read_mot`, so an upload gets the reader's
checks and its ``file:line`` errors (the temporary paths in a message are
replaced by the names of the uploaded files). The clip's T frames are sampled
evenly over the tracked range (``np.linspace``), as for a ``clips.csv`` row.

Zip members are checked before anything is written: no absolute path, no
``..``, no link, only images named by frame number (``000001.jpg``); every
file the server writes is named by the server (never by a member's path), so
no archive can write outside ``<root>`` (no zip slip).

Pixels are bounded before any is decoded: each frame's width x height (from
the image header, or the video stream's header) against ``max_frame_pixels``
and their sum over the upload against ``max_upload_pixels`` (413 naming the
limit and its flag), so an image bomb (a 140 KB PNG of 12000 x 12000) is
refused without taking memory.
"""

from __future__ import annotations

import math
import re
import shutil
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..data.clip import Clip
from ..data.errors import DataError
from ..data.mot import IMAGE_EXTS, VIDEO_EXTS, read_mot
from .settings import UploadLimits

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_CHUNK = 1 << 20


class UploadError(Exception):
    """A bad upload: ``status`` 422 (malformed) or 413 (over a limit), one-line ``message``."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


def too_large(message: str) -> UploadError:
    return UploadError(message, 413)


@dataclass
class UploadedFile:
    """One file part of the request: its client-side name and a readable binary stream."""

    filename: str
    file: BinaryIO


def check_name(name: str) -> str:
    """A video name chosen by the client: letters, digits, ``_`` and ``-`` only (it names files)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UploadError(f"name {name!r} must be 1-64 letters, digits, '_' or '-', starting with a letter or digit")
    return name


def _copy(src: BinaryIO, dest: Path, limit: int, what: str, why: str = "") -> int:
    """Copy a stream to ``dest`` in chunks, refusing more than ``limit`` bytes; returns the bytes copied."""
    total = 0
    with open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise too_large(f"{what} is larger than the limit of {limit} bytes{why}")
            out.write(chunk)
    return total


class PixelBudget:
    """Frame sizes of one upload against the limits (413 naming the limit and the ``stvh serve`` flag)."""

    def __init__(self, limits: UploadLimits, display: str):
        self.limits = limits
        self.display = display
        self.total = 0

    def frame(self, width: int, height: int, what: str, count: int = 1) -> None:
        """Account ``count`` frames of ``width`` x ``height``."""
        pixels = int(width) * int(height)
        if pixels > self.limits.max_frame_pixels:
            raise too_large(f"{what} is {width}x{height} = {pixels:,} pixels, over the limit of "
                            f"{self.limits.max_frame_pixels:,} pixels per frame (--max-frame-mp)")
        self.total += pixels * max(int(count), 1)
        if self.total > self.limits.max_upload_pixels:
            raise too_large(f"{self.display}: the frames hold more than the limit of "
                            f"{self.limits.max_upload_pixels:,} pixels in all (--max-upload-mp)")


def image_size(path: Path, what: str) -> tuple[int, int]:
    """``(width, height)`` from an image header: PIL reads the header only, no pixel is decoded."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError:  # over twice PIL's own limit: a 413 like ours
        raise too_large(f"{what} is an image too large to decode (a decompression bomb; --max-frame-mp)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"{what} is not a readable image ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- tracks

@dataclass
class TrackSummary:
    """What a lenient first pass over a tracks file finds (the reader does the strict checks)."""

    persons: int
    first: int | None
    last: int | None


TRACK_ROW_BYTES = 128  # a MOT row is about 45 characters: ten columns, two decimals


def tracks_max_bytes(limits: UploadLimits) -> int:
    """Largest tracks file: one row per person and frame, ``TRACK_ROW_BYTES`` each (the reader's arrays and
    Python's per-line objects take several times the file's size: a 58 MB file took 900 MB); 1 MiB at least."""
    return max(1 << 20, limits.max_frames * limits.max_persons * TRACK_ROW_BYTES)


def scan_tracks(path: Path, limits: UploadLimits, display: str) -> TrackSummary:
    """Count distinct track ids, rows and the tracked frame range; refuse more persons or rows than the limits."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UploadError(f"{display}: not a UTF-8 text file (expected MOT lines frame,id,x,y,w,h[,conf])") from None
    ids: set[int] = set()
    frames: list[int] = []
    for raw in text.splitlines():
        fields = [f.strip() for f in raw.split(",")] if "," in raw else raw.split()
        try:
            frame, tid = float(fields[0]), float(fields[1])
            conf = float(fields[6]) if len(fields) > 6 else 1.0
        except (ValueError, IndexError):
            continue  # the reader reports it with its line number
        if conf == 0 or not (math.isfinite(frame) and math.isfinite(tid)) or frame < 1 or tid < 0:
            continue
        ids.add(int(tid))
        frames.append(int(frame))
        if len(ids) > limits.max_persons:
            raise too_large(f"{display}: more than {limits.max_persons} persons (distinct track ids)")
        if len(frames) > limits.max_frames * limits.max_persons:
            raise too_large(f"{display}: more than {limits.max_frames * limits.max_persons} rows (one per person "
                            f"and frame: --max-frames x --max-persons)")
    return TrackSummary(len(ids), min(frames) if frames else None, max(frames) if frames else None)


# --------------------------------------------------------------------------- zip of frames

def _member_frame(info: zipfile.ZipInfo, display: str) -> tuple[int, str] | None:
    """``(frame number, extension)`` of a member, ``None`` for folders and OS clutter; refuses unsafe names."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise UploadError(f"{display}: member {name!r} points outside the archive (absolute path or '..')")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UploadError(f"{display}: member {name!r} is a symbolic link")
    if info.is_dir() or parts[0] == "__MACOSX" or parts[-1].startswith("."):
        return None
    stem, ext = PurePosixPath(parts[-1]).stem, PurePosixPath(parts[-1]).suffix.lower()
    if ext not in IMAGE_EXTS or not stem.isdigit():
        raise UploadError(f"{display}: member {name!r} is not a frame image named by its number "
                          f"(e.g. 000001.jpg; {'/'.join(IMAGE_EXTS)})")
    return int(stem), ext


def unpack_frames(upload: UploadedFile, folder: Path, limits: UploadLimits) -> int:
    """Write the frame images of a zip into ``folder`` as ``<n><ext>``; returns the number of frames."""
    display = upload.filename or "frames.zip"
    try:
        zf = zipfile.ZipFile(upload.file)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(f"{display}: not a zip archive ({exc})") from None
    with zf:
        members: dict[int, tuple[zipfile.ZipInfo, str]] = {}
        for info in zf.infolist():
            found = _member_frame(info, display)
            if found is None:
                continue
            n, ext = found
            if n in members:
                raise UploadError(f"{display}: two images for frame {n}: {members[n][0].filename!r} and "
                                  f"{info.filename!r}")
            members[n] = (info, ext)
        if not members:
            raise UploadError(f"{display}: no frame images (000001.jpg, ...) in the archive")
        if len(members) > limits.max_frames:
            raise too_large(f"{display}: {len(members)} frames, more than the limit of {limits.max_frames}")
        budget = limits.max_unzipped_bytes
        if sum(info.file_size for info, _ in members.values()) > budget:
            raise too_large(f"{display}: the frames expand to more than {budget} bytes")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = PixelBudget(limits, display)
        for n, (info, ext) in sorted(members.items()):
            target = folder / f"{n:06d}{ext}"
            try:
                with zf.open(info) as src:  # the name is ours: nothing is written outside ``folder``
                    budget -= _copy(src, target, budget, f"{display} (unpacked)")
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:  # RuntimeError: encrypted member
                raise UploadError(f"{display}: member {info.filename!r} cannot be read ({exc})") from None
            what = f"{display}: frame {info.filename!r}"
            pixels.frame(*image_size(target, what), what)
    return len(members)


# --------------------------------------------------------------------------- video

def video_frame_count(path: Path, display: str, pixels: PixelBudget | None = None) -> int:
    """Frames of a video file (from the stream header, or its duration x rate); 422 when unreadable.

    ``pixels``: the stream's frame size (from its header, before any frame is
    decoded) is checked against the upload's pixel limits.
    """
    import av
    from av.error import FFmpegError

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UploadError(f"{display}: no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if pixels is not None and not (width and height):
                raise UploadError(f"{display}: the video stream gives no frame size")
            n = int(stream.frames or 0)
            if not n and stream.duration and stream.time_base and stream.average_rate:
                n = int(round(float(stream.duration * stream.time_base * stream.average_rate)))
            if not n and container.duration:
                rate = float(stream.average_rate or 0)
                n = int(round(container.duration / 1e6 * rate))
    except (FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__  # not str(exc): it names the server's path
        raise UploadError(f"{display}: cannot open the video ({reason})") from None
    if pixels is not None:
        pixels.frame(width, height, f"{display}: a frame of the video stream", count=n)
    return n


# --------------------------------------------------------------------------- the whole upload

def stage_upload(root: Path, name: str, *, tracks: UploadedFile, video: UploadedFile | None = None,
                 frames: UploadedFile | None = None, limits: UploadLimits = UploadLimits()) -> dict[str, str]:
    """Lay an upload out as a MOT folder in ``root`` (see the module doc); returns ``{path: display name}``.

    Exactly one of ``video`` and ``frames`` (a zip) is required.
    """
    check_name(name)
    if (video is None) == (frames is None):
        raise UploadError("give exactly one of 'video' (a short video file) or 'frames' (a zip of frame images)")
    root.mkdir(parents=True, exist_ok=True)
    shown: dict[str, str] = {}
    track_path = root / "tracks" / f"{name}.txt"
    track_path.parent.mkdir(parents=True, exist_ok=True)
    shown[str(track_path)] = tracks.filename or "tracks.txt"
    _copy(tracks.file, track_path, min(limits.max_bytes, tracks_max_bytes(limits)), shown[str(track_path)],
          f" for a tracks file (--max-frames x --max-persons rows of {TRACK_ROW_BYTES} bytes, 1 MiB at least)")
    if video is not None:
        display = video.filename or "video"
        ext = PurePosixPath(video.filename or "").suffix.lower()
        if ext not in VIDEO_EXTS:
            raise UploadError(f"{display}: video files must end in one of {', '.join(VIDEO_EXTS)}")
        path = root / "videos" / f"{name}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        shown[str(path)] = display
        _copy(video.file, path, limits.max_bytes, display)
        n = video_frame_count(path, display, PixelBudget(limits, display))
        if n > limits.max_frames:
            raise too_large(f"{display}: {n} frames, more than the limit of {limits.max_frames}")
    else:
        folder = root / "frames" / name
        shown[str(folder)] = frames.filename or "frames.zip"
        unpack_frames(frames, folder, limits)
    summary = scan_tracks(track_path, limits, shown[str(track_path)])
    if summary.first is not None:  # one clip over the whole tracked range; without rows the reader says why
        (root / "clips.csv").write_text(f"video,start,end\n{name},{summary.first},{summary.last}\n")
    return shown


def read_upload(root: Path, shown: dict[str, str], *, frames_per_clip: int, n_max: int,
                activities: tuple[str, ...] | None = None) -> list[Clip]:
    """The clips of a staged (or stored) upload folder; a :class:`DataError` becomes a 422 naming the uploaded file."""
    try:
        ds = read_mot(root, frames_per_clip=frames_per_clip, n_max=n_max, activities=activities)
    except DataError as exc:
        raise UploadError(shown_message(str(exc), root, shown)) from None
    if not ds.clips:
        raise UploadError(f"{next(iter(shown.values()), 'tracks')}: no tracked person in the upload")
    return ds.clips


def shown_message(message: str, root: Path, shown: dict[str, str]) -> str:
    """``message`` with the server's paths replaced by the uploaded files' names."""
    for path in sorted(shown, key=len, reverse=True):
        message = message.replace(path, shown[path])
    return message.replace(f"{root}/", "").replace(str(root), "upload")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
