"""Frame decoding: image folders (exact) and PyAV videos (lossy, mean colour)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import av  # a required dependency: missing is a failure, not a skip
from PIL import Image

from stvh.data.clip import ImageFrames, VideoFrames
from stvh.data.errors import FormatError, MissingFrame, UnreadableFrame, UnreadableVideo
from stvh.data.frames import read_frames

N, W, H = 20, 64, 48


def colour(i: int) -> tuple[int, int, int]:
    return ((i * 53) % 256, (i * 101) % 256, (i * 29) % 256)


def write_video(path: Path, codec: str = "mpeg4", gop: int = 5) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.gop_size = gop
        s.bit_rate = 2_000_000
        for i in range(N):
            img = np.zeros((H, W, 3), np.uint8)
            img[:] = colour(i)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def nearest_colours(arr: np.ndarray) -> list[int]:
    means = arr.reshape(arr.shape[0], -1, 3).mean(1)
    table = np.array([colour(i) for i in range(N)], dtype=np.float64)
    return [int(np.argmin(((table - m) ** 2).sum(1))) for m in means]


def test_images_exact(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i + 1:06d}.png"
        Image.new("RGB", (W, H), colour(i)).save(p)
        paths.append(p)
    arr = read_frames(ImageFrames((paths[2], paths[0], paths[0])))
    assert arr.shape == (3, H, W, 3) and arr.dtype == np.uint8
    assert (arr[0] == colour(2)).all() and (arr[1] == colour(0)).all() and (arr[2] == colour(0)).all()
    # grey images come back as RGB
    g = tmp_path / "grey.png"
    Image.new("L", (W, H), 7).save(g)
    assert read_frames(ImageFrames((g,))).shape == (1, H, W, 3)


def test_image_errors(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (W, H)).save(p)
    with pytest.raises(MissingFrame, match="b.png"):
        read_frames(ImageFrames((p, tmp_path / "b.png")))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(UnreadableFrame, match="bad.jpg: unreadable frame: cannot decode image"):
        read_frames(ImageFrames((bad,)))
    other = tmp_path / "c.png"
    Image.new("RGB", (W + 1, H)).save(other)
    # the odd frame is named (not the clip's first), with both sizes
    with pytest.raises(FormatError, match=rf"c.png: format error: this frame is {H}x{W + 1} \(HxW\) but frame a.png "
                                          rf"of the same clip is {H}x{W}"):
        read_frames(ImageFrames((p, p, other)))


def test_frame_of_another_size_than_the_readers(tmp_path):
    """A source's ``size`` (the reader's frame size) is checked on every frame, the first one included."""
    a, b = tmp_path / "1.png", tmp_path / "2.png"
    Image.new("RGB", (W, H)).save(a)
    Image.new("RGB", (W, H + 2)).save(b)
    assert read_frames(ImageFrames((a, a), size=(H, W))).shape == (2, H, W, 3)
    with pytest.raises(FormatError, match=rf"1.png: .*this frame is {H}x{W} \(HxW\) but the video's frame size"
                                          rf" \(its first frame\) is {H + 2}x{W}"):
        read_frames(ImageFrames((a, b), size=(H + 2, W)))
    video = write_video(tmp_path / "v.mp4")
    assert read_frames(VideoFrames(video, (3,), size=(H, W))).shape == (1, H, W, 3)
    with pytest.raises(FormatError, match=rf"v.mp4: .*frame index 3 \(0-based\) is {H}x{W} \(HxW\) but the video "
                                          rf"stream's frame size is {H}x{W + 2}"):
        read_frames(VideoFrames(video, (3,), size=(H, W + 2)))


@pytest.mark.parametrize("codec, ext", [("mpeg4", "mp4"), ("mpeg4", "avi")])
def test_video_frames_by_index(tmp_path, codec, ext):
    video = write_video(tmp_path / f"v.{ext}", codec)
    idx = (13, 0, 7, 19, 7, 12)  # unordered, repeated, across keyframes (gop 5)
    arr = read_frames(VideoFrames(video, idx))
    assert arr.shape == (len(idx), H, W, 3) and arr.dtype == np.uint8
    assert nearest_colours(arr) == list(idx)
    means = arr.reshape(len(idx), -1, 3).mean(1)
    np.testing.assert_allclose(means, [colour(i) for i in idx], atol=8)


def test_video_errors(tmp_path):
    video = write_video(tmp_path / "v.mp4")
    with pytest.raises(MissingFrame, match="v.mp4"):
        read_frames(VideoFrames(video, (3, N + 5)))
    with pytest.raises(UnreadableVideo, match="missing.mp4"):
        read_frames(VideoFrames(tmp_path / "missing.mp4", (0,)))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UnreadableVideo, match="bad.mp4"):
        read_frames(VideoFrames(bad, (0,)))
