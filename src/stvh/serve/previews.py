"""Animated previews: a clip's T frames with its persons' boxes, as one looping WebP.

A key frame shows one still; the preview shows the play. Each frame is drawn
like the key-frame thumbnail (``serve/images.py``, the report's
``clip_thumbnail``): the frame scaled to ``width`` px, the real persons' boxes
of that frame in yellow (blue on a grey canvas when the frames cannot be read,
so the boxes still move), and a thin timeline at the bottom whose marker moves
with the frame and whose tick marks the key frame.

Routes (registered by :func:`add_preview_routes` before the clip-detail route,
whose ``{clip_id:path}`` would otherwise catch them):

* ``GET /api/clips/{id}/preview.webp?width=240``
* ``GET /api/queries/{token}/preview.webp?width=240``

Rendered once per (clip, width, content), then cached (bounded in entries);
the cache key and the ETag carry a fingerprint of the clip's boxes and frame
files, so a clip removed and added again under the same id is drawn again.
"""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

import numpy as np
from fastapi import Query, Request
from fastapi.responses import Response

from ..data.clip import Clip, ImageFrames, VideoFrames
from .images import BytesCache

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from .service import Service

MAX_FRAMES = 32          # a longer clip is sampled evenly down to this many frames
FRAME_MS = 160           # display time of one frame (a 10-frame clip loops in 1.6 s)
MAX_WIDTH = 640
BOX_FRAME = (255, 215, 0)    # on a real frame (the thumbnails' yellow)
BOX_BLANK = (40, 70, 160)    # on the grey canvas of a clip without readable frames
CACHE_ENTRIES = 256      # previews are tens of KB each: at most a few tens of MB


def frame_positions(num_frames: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Window positions shown: all of them, or ``max_frames`` spread evenly (first and last kept)."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.unique(np.round(np.linspace(0, num_frames - 1, max_frames)).astype(int))


def _read(clip: Clip) -> np.ndarray | None:
    """The clip's frames (T, H, W, 3) uint8, or ``None`` when it has none or they cannot be read."""
    if clip.frames is None:
        return None
    from ..data.frames import read_frames

    try:
        return read_frames(clip.frames)
    except Exception:  # noqa: BLE001 - missing / unreadable frames: the boxes are drawn on a grey canvas
        return None


def preview_frames(clip: Clip, width: int) -> list:
    """The preview's frames as PIL images, ``width`` px wide (height by the clip's aspect, at most 2 x width)."""
    from PIL import Image, ImageDraw

    H, W = (max(int(v), 1) for v in clip.image_size)
    frames = _read(clip)  # (T, h, w, 3) or None
    scale = min(width / W, 2 * width / H)
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    line = max(1, round(size[0] / 160))
    real = np.flatnonzero(clip.mask)
    T = clip.num_frames
    out = []
    sx, sy = size[0] / W, size[1] / H  # boxes are in image_size pixels
    for t in frame_positions(T):
        if frames is None:
            img, colour = Image.new("RGB", size, (236, 236, 236)), BOX_BLANK
        else:
            img, colour = Image.fromarray(frames[t]).resize(size, Image.BILINEAR), BOX_FRAME
        draw = ImageDraw.Draw(img)
        for n in real:
            x1, y1, x2, y2 = (float(v) for v in clip.boxes[t, n])
            if x2 > x1 and y2 > y1:  # a person absent from this frame has an empty box
                draw.rectangle((x1 * sx, y1 * sy, x2 * sx, y2 * sy), outline=colour, width=line)
        _timeline(draw, size, t, T, clip.key_index)
        out.append(img)
    return out


def _timeline(draw, size: tuple[int, int], t: int, T: int, key: int) -> None:
    """A 4 px bar at the bottom: dark track, white marker at frame ``t``, red tick at the key frame."""
    w, h = size
    bar = max(3, h // 40)
    draw.rectangle((0, h - bar, w, h), fill=(36, 41, 47))
    step = w / max(T, 1)
    kx = round(key * step + step / 2)
    draw.rectangle((kx - 1, h - bar, kx + 1, h), fill=(207, 34, 46))
    draw.rectangle((round(t * step), h - bar + 1, round((t + 1) * step) - 1, h - 1), fill=(255, 255, 255))


def preview_webp(clip: Clip, width: int, quality: int = 70) -> bytes:
    """The looping animated WebP of ``clip``: every frame (at most :data:`MAX_FRAMES`) with its boxes."""
    frames = preview_frames(clip, width)
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0,
                   quality=quality, method=4)
    return buf.getvalue()


def fingerprint(clip: Clip) -> str:
    """A short hash of what the preview shows: boxes, mask, key frame, frame files (with their mtimes)."""
    h = hashlib.blake2b(digest_size=8)
    for arr in (clip.boxes, clip.mask):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(f"{clip.key_index}|{clip.image_size}".encode())
    src = clip.frames
    paths = src.paths if isinstance(src, ImageFrames) else (src.path,) if isinstance(src, VideoFrames) else ()
    if isinstance(src, VideoFrames):
        h.update(repr(src.indices).encode())
    for p in paths:
        try:
            h.update(f"{p}|{p.stat().st_mtime_ns}".encode())
        except OSError:
            h.update(f"{p}|missing".encode())
    return h.hexdigest()


def add_preview_routes(app: "FastAPI", service: "Service") -> None:
    """Register the two preview routes on ``app`` (call before the ``/api/clips/{clip_id:path}`` route).

    The routes' annotations (``Request``, ``Query``) are imported at module level: FastAPI resolves them there.
    """
    from .service import ServiceError

    cache = BytesCache(CACHE_ENTRIES)
    webp = {200: {"content": {"image/webp": {}}, "description": "looping animated WebP"}}

    def answer(request: Request, key: str, clip: Clip, width: int) -> Response:
        tag = f'"{fingerprint(clip)}-{width}"'
        headers = {"ETag": tag, "Cache-Control": "no-cache"}  # revalidate: an id may come back with other content
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        body = cache.get((key, "preview", width, tag), lambda: preview_webp(clip, width))
        return Response(body, media_type="image/webp", headers=headers)

    @app.get("/api/clips/{clip_id:path}/preview.webp", tags=["clips"], response_class=Response, responses=webp)
    def clip_preview(request: Request, clip_id: str, width: int = Query(240, ge=32, le=MAX_WIDTH)):
        """The clip's frames with its persons' boxes, as a looping animated WebP (the play, not one still)."""
        service.known(clip_id)
        clip = service.clip_record(clip_id)
        if clip is None:
            raise ServiceError(404, f"clip {clip_id!r} has no record in the dataset (no frames or boxes to draw)")
        return answer(request, clip_id, clip, width)

    @app.get("/api/queries/{token}/preview.webp", tags=["search"], response_class=Response, responses=webp)
    def query_preview(request: Request, token: str, width: int = Query(240, ge=32, le=MAX_WIDTH)):
        """An uploaded query's frames with its boxes, as a looping animated WebP."""
        return answer(request, token, service.query(token).clip, width)
