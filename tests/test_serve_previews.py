"""Animated previews (stvh.serve.previews): every frame of a clip with that frame's boxes, as a looping WebP.

A hand-made clip: 3 frames of 100 x 200 px in three plain colours, one person
whose box moves right and down over the frames, key frame 1. Drawn 100 px
wide (scale 0.5), each frame must carry its own box (not the key frame's) and
a timeline marker at its own third of the width.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stvh.data.clip import Clip, ImageFrames
from stvh.serve.previews import (BOX_BLANK, BOX_FRAME, FRAME_MS, fingerprint, frame_positions, preview_frames,
                                 preview_webp)

COLOURS = [(200, 30, 30), (30, 160, 30), (30, 30, 200)]  # frame t is a plain colour
BOXES = [(20, 10, 60, 50), (100, 10, 140, 50), (140, 40, 180, 90)]  # x1 y1 x2 y2 of the person at t


def make_clip(root: Path, with_frames: bool = True) -> Clip:
    paths = []
    for t, colour in enumerate(COLOURS):
        path = root / f"{t + 1:06d}.png"
        if with_frames:
            Image.new("RGB", (200, 100), colour).save(path)
        paths.append(path)
    boxes = np.zeros((3, 2, 4), np.float32)  # (T, N, 4); person slot 1 is padding
    boxes[:, 0] = BOXES
    return Clip(video="v", clip="1", frame_ids=np.arange(1, 4), boxes=boxes, mask=np.array([True, False]),
                actions=np.array([0, -1]), activity=0, group="v", image_size=(100, 200),
                frames=ImageFrames(tuple(paths)), key_index=1)


def test_each_frame_has_its_own_boxes_and_timeline(tmp_path):
    frames = preview_frames(make_clip(tmp_path), width=100)
    assert [f.size for f in frames] == [(100, 50)] * 3
    for t, img in enumerate(frames):
        x1, y1, x2, y2 = (round(v / 2) for v in BOXES[t])  # scale 0.5
        mid = (x1 + x2) // 2
        assert img.getpixel((mid, y1)) == BOX_FRAME          # top edge of this frame's box
        assert img.getpixel((x1, (y1 + y2) // 2)) == BOX_FRAME  # left edge
        assert img.getpixel((mid, (y1 + y2) // 2)) == COLOURS[t]  # inside the box: the frame itself
        for other in {0, 1, 2} - {t}:  # where the other frames' boxes are, this frame shows its colour
            ox1, oy1, ox2, _ = (round(v / 2) for v in BOXES[other])
            if not (x1 - 1 <= (ox1 + ox2) // 2 <= x2 + 1):
                assert img.getpixel(((ox1 + ox2) // 2, oy1)) == COLOURS[t]
        # timeline: the bottom row is white in this frame's third only
        bottom = [img.getpixel((x, 48)) for x in (16, 50, 83)]  # centres of the three thirds
        assert [p == (255, 255, 255) for p in bottom] == [i == t for i in range(3)]


def test_unreadable_frames_draw_the_boxes_on_grey(tmp_path):
    frames = preview_frames(make_clip(tmp_path, with_frames=False), width=100)
    assert len(frames) == 3
    x1, y1, x2, _ = (round(v / 2) for v in BOXES[2])
    assert frames[2].getpixel(((x1 + x2) // 2, y1)) == BOX_BLANK
    assert frames[2].getpixel((5, 5)) == (236, 236, 236)


def test_webp_loops_over_every_frame(tmp_path):
    data = preview_webp(make_clip(tmp_path), width=100)
    img = Image.open(io.BytesIO(data))
    assert img.format == "WEBP" and img.n_frames == 3 and img.size == (100, 50)
    assert img.info.get("loop") == 0  # forever
    means = []
    for t in range(3):
        img.seek(t)
        img.load()
        assert img.info.get("duration") == FRAME_MS
        means.append(np.asarray(img.convert("RGB"), float)[0, :50].mean(0))  # top row, left half: no box
    assert [int(np.argmax(m)) for m in means] == [0, 1, 2]  # red, green, blue frames, in order


def test_frame_positions_bounded_and_even():
    assert frame_positions(6).tolist() == [0, 1, 2, 3, 4, 5]
    many = frame_positions(100, max_frames=5)
    assert many.tolist() == [0, 25, 50, 74, 99]


def test_fingerprint_follows_boxes_and_frame_files(tmp_path):
    clip = make_clip(tmp_path)
    before = fingerprint(clip)
    path = clip.frames.paths[0]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = fingerprint(clip)
    assert touched != before
    clip.boxes[0, 0, 0] += 1
    assert fingerprint(clip) != touched


@pytest.fixture
def preview_client(tmp_path):
    """The two preview routes on a bare app around a stand-in service holding one clip and one query."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from stvh.serve.previews import add_preview_routes
    from stvh.serve.service import ServiceError

    clip = make_clip(tmp_path)

    class Stub:
        def known(self, clip_id):
            if clip_id != "v/1":
                raise ServiceError(404, f"clip {clip_id!r} is not in the index")

        def clip_record(self, clip_id):
            return clip

        def query(self, token):
            if token != "q0123456789abcdef":
                raise ServiceError(404, "unknown query")
            return type("Q", (), {"clip": clip})()

    app = FastAPI()

    @app.exception_handler(ServiceError)
    async def _err(_, exc):
        from fastapi.responses import JSONResponse

        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    add_preview_routes(app, Stub())
    return TestClient(app)


def test_routes_answer_webp_with_etag(preview_client):
    r = preview_client.get("/api/clips/v/1/preview.webp?width=100")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(r.content)).n_frames == 3
    tag = r.headers["etag"]
    again = preview_client.get("/api/clips/v/1/preview.webp?width=100", headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    other = preview_client.get("/api/clips/v/1/preview.webp?width=120")
    assert other.headers["etag"] != tag and Image.open(io.BytesIO(other.content)).size == (120, 60)
    q = preview_client.get("/api/queries/q0123456789abcdef/preview.webp")
    assert q.status_code == 200 and Image.open(io.BytesIO(q.content)).size == (240, 120)  # default width


def test_routes_refuse_unknown_and_oversized(preview_client):
    assert preview_client.get("/api/clips/v/2/preview.webp").status_code == 404
    assert preview_client.get("/api/queries/q0000000000000000/preview.webp").status_code == 404
    assert preview_client.get("/api/clips/v/1/preview.webp?width=2000").status_code == 422
    assert preview_client.get("/api/clips/v/1/preview.webp?width=8").status_code == 422
