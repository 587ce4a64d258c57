"""Decode the frames of a clip into ``(T, H, W, 3)`` uint8 RGB arrays.

Images are read with PIL; videos with PyAV (imported lazily): seek to the
keyframe at or before the first wanted frame, then decode forward. A frame's
0-based index is derived from its timestamp at the stream's average frame rate
(``round((pts - start_time) * time_base * fps)``); when the stream gives no
timestamps or rate, frames are counted from the start of the file.

Every frame of a video must have one size (boxes are pixels of that size): a
frame whose size differs from the source's ``size`` (the reader's), or from the
clip's first frame, is a :class:`FormatError` naming that frame and both sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .clip import ImageFrames, VideoFrames
from .errors import FormatError, MissingFrame, UnreadableFrame, UnreadableVideo


def image_header_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from an image header (PIL reads the header, not the pixels).

    Raises :class:`MissingFrame` for a missing file and :class:`UnreadableFrame`
    naming the file for anything PIL cannot identify: a reader never guesses a
    frame size from a corrupt image.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise MissingFrame("frame image not found", path=path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except MemoryError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise UnreadableFrame(f"cannot read the image header ({_reason(e, path)})", path=path) from None
    if w < 1 or h < 1:
        raise UnreadableFrame(f"image header gives a {w}x{h} size", path=path)
    return int(h), int(w)


def _reason(exc: BaseException, path: Path) -> str:
    """``Type: first line`` of a decoder exception, without the path the message already names."""
    lines = str(exc).replace(repr(str(path)), "").replace(str(path), "").strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


def read_frames(source: ImageFrames | VideoFrames) -> np.ndarray:
    """Frames of ``source`` in window order as ``(T, H, W, 3)`` uint8 RGB."""
    if isinstance(source, ImageFrames):
        return _read_images(source.paths, source.size)
    if isinstance(source, VideoFrames):
        return _read_video(Path(source.path), list(source.indices), source.size)
    raise TypeError(f"expected ImageFrames or VideoFrames, got {type(source).__name__}")


def size_mismatch(what: str, got: tuple[int, int], want: tuple[int, int], ref: str) -> str:
    """The message for a frame of another size: ``what`` is got HxW, ``ref`` is want HxW."""
    return (f"{what} is {got[0]}x{got[1]} (HxW) but {ref} is {want[0]}x{want[1]}; every frame of a video must "
            f"have one size (its boxes are pixels of it)")


def _read_images(paths: tuple[Path, ...], size: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image

    cache: dict[Path, np.ndarray] = {}
    out = []
    for p in paths:
        p = Path(p)
        if p not in cache:
            if not p.is_file():
                raise MissingFrame("frame image not found", path=p)
            try:
                with Image.open(p) as im:
                    cache[p] = np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
            except MemoryError:
                raise
            except Exception as e:  # OSError (truncated), SyntaxError (broken PNG), DecompressionBombError, ...
                raise UnreadableFrame(f"cannot decode image ({_reason(e, p)})", path=p) from None
        out.append(cache[p])
    if not out:
        raise ValueError("no frames to read")
    want, ref = (tuple(size), "the video's frame size (its first frame)") if size else (
        out[0].shape[:2], f"frame {Path(paths[0]).name} of the same clip")
    for p, a in zip(paths, out):
        if a.shape[:2] != want:
            raise FormatError(size_mismatch("this frame", a.shape[:2], want, ref), path=p)
    return np.stack(out)


def _frame_index(frame, start: int, tb, rate) -> int | None:
    if frame.pts is None or tb is None or not rate:
        return None
    return int(round(float((frame.pts - start) * tb * rate)))


def _decode(path: Path, wanted: set[int], seek: bool, size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    import av

    got: dict[int, np.ndarray] = {}
    last = max(wanted)
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UnreadableVideo("no video stream", path=path)
        stream = container.streams.video[0]
        want = tuple(size) if size else (stream.codec_context.height, stream.codec_context.width)
        tb = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        start = stream.start_time or 0
        first = min(wanted)
        use_pts = tb is not None and bool(rate)
        if seek and use_pts and first > 0:
            target = start + int(first / rate / tb)
            container.seek(target, stream=stream, backward=True, any_frame=False)
        counter = 0
        for frame in container.decode(stream):
            idx = _frame_index(frame, start, tb, rate) if use_pts else None
            if idx is None:
                if seek and first > 0:
                    return {}  # cannot locate frames after a seek without timestamps
                idx = counter
            counter += 1
            if idx in wanted and idx not in got:
                if all(want) and (frame.height, frame.width) != want:
                    raise FormatError(size_mismatch(f"frame index {idx} (0-based)", (frame.height, frame.width),
                                                    want, "the video stream's frame size"), path=path)
                got[idx] = frame.to_ndarray(format="rgb24")
            if idx >= last:
                break
    return got


def _read_video(path: Path, indices: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
    from av.error import FFmpegError

    if not indices:
        raise ValueError("no frames to read")
    if not path.is_file():
        raise UnreadableVideo("video file not found", path=path)
    if min(indices) < 0:
        raise MissingFrame(f"negative frame index {min(indices)}", path=path)
    wanted = set(indices)
    try:
        got = _decode(path, wanted, seek=True, size=size)
        if not wanted <= got.keys():  # seeking failed or timestamps are odd: decode from the start
            got = _decode(path, wanted, seek=False, size=size)
    except (FFmpegError, OSError, ValueError) as e:
        raise UnreadableVideo(f"cannot decode ({_reason(e, path)})", path=path) from None
    missing = sorted(wanted - got.keys())
    if missing:
        raise MissingFrame(f"frame index {missing[0]} (0-based) not in the video", path=path)
    return np.stack([got[i] for i in indices])
