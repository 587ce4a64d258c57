"""MOT user-data reader: windows, clips.csv, sources, nearest-frame fill, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stvh.data.clip import UNKNOWN, ImageFrames, VideoFrames
from stvh.data.errors import BadBox, MalformedLine, MissingFrame, UnknownLabel, UnreadableVideo
from stvh.data.mot import looks_like_mot, read_mot

W, H = 320, 240


def write_tracks(root: Path, video: str, rows: list[tuple]) -> Path:
    p = root / "tracks" / f"{video}.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return p


def write_folder(root: Path, video: str, frames, size=(H, W), pad=6, ext="png") -> Path:
    d = root / "frames" / video
    d.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size[1], size[0]), (1, 2, 3))
    for f in frames:
        img.save(d / f"{f:0{pad}d}.{ext}")
    return d


def write_video(path: Path, n: int = 20, w: int = 64, h: int = 48) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), (i * 53) % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def person(tid, frames, x=10, y=20, w=30, h=40, conf=1):
    return [(f, tid, x, y, w, h, conf, -1, -1, -1) for f in frames]


def test_windows_without_clips_csv(tmp_path):
    write_tracks(tmp_path, "cam1", person(1, range(1, 26))
                 + person(3, range(5, 8), x=100, y=100, w=10, h=10)
                 + [(7, 3, 0, 0, 0, 0, 0)]               # conf 0 (and a bad box): ignored
                 + person(2, range(1, 26), conf=0))       # conf 0: ignored
    d = write_folder(tmp_path, "cam1", range(1, 26))
    ds = read_mot(tmp_path)
    assert ds.format == "mot" and ds.activities == () and ds.actions == ()
    assert [c.id for c in ds] == ["cam1/000001", "cam1/000011"]  # 21..25 is a partial window: dropped
    c = ds.clips[0]
    assert c.frame_ids.tolist() == list(range(1, 11))
    assert c.boxes.shape == (10, 12, 4) and c.mask.tolist() == [True, True] + [False] * 10
    np.testing.assert_array_equal(c.boxes[:, 0], np.tile([10, 20, 40, 60], (10, 1)))
    # track 3 exists on frames 5..7: frames 1..4 take frame 5's box, 8..10 take frame 7's
    np.testing.assert_array_equal(c.boxes[:, 1], np.tile([100, 100, 110, 110], (10, 1)))
    assert c.actions.tolist() == [UNKNOWN] * 12 and c.activity == UNKNOWN
    assert c.tracked and c.split == "all" and c.group == "cam1" and c.image_size == (H, W)
    assert c.key_index == 5
    assert isinstance(c.frames, ImageFrames)
    assert c.frames.paths == tuple(d / f"{f:06d}.png" for f in range(1, 11))
    assert ds.clips[1].num_persons == 1  # track 3 is not in 11..20


def test_nearest_fill_uses_nearest_frame(tmp_path):
    rows = [(2, 5, 0, 0, 10, 10, 1), (9, 5, 50, 50, 10, 10, 1)] + person(1, range(1, 11))
    write_tracks(tmp_path, "v", rows)
    write_folder(tmp_path, "v", range(1, 11), pad=1, ext="jpg")
    c = read_mot(tmp_path).clips[0]
    x1 = c.boxes[:, 1, 0].tolist()
    # frames 1..10: nearest of {2, 9}; frame 5.5 would tie, 5 -> 2 (dist 3), 6 -> 9 (dist 3 vs 4)
    assert x1 == [0, 0, 0, 0, 0, 50, 50, 50, 50, 50]


def test_n_max_keeps_most_present_ids(tmp_path):
    write_tracks(tmp_path, "v", person(9, range(1, 11)) + person(4, range(1, 11))
                 + person(2, range(1, 4)) + person(7, range(1, 11), x=200))
    write_folder(tmp_path, "v", range(1, 11))
    c = read_mot(tmp_path, n_max=2).clips[0]
    # ids 4, 7, 9 are in all 10 frames (tie -> smallest ids 4, 7), id 2 in 3; kept ordered by id
    np.testing.assert_array_equal(c.boxes[0, :, 0], [10, 200])
    assert c.boxes.shape == (10, 2, 4)


def test_clips_csv_labels_sampling_groups(tmp_path):
    write_tracks(tmp_path, "a", person(1, range(1, 31)))
    write_tracks(tmp_path, "b", person(1, range(1, 31)))
    write_folder(tmp_path, "a", range(1, 31))
    write_folder(tmp_path, "b", range(1, 31))
    (tmp_path / "clips.csv").write_text(
        "video,start,end,activity,group\n"
        "a,1,19,walk,g1\n"
        "a,5,14,,\n"
        "b,3,6,run,\n")
    ds = read_mot(tmp_path)
    assert ds.activities == ("run", "walk")
    assert [c.id for c in ds] == ["a/000001", "a/000005", "b/000003"]
    c0, c1, c2 = ds.clips
    assert c0.frame_ids.tolist() == list(range(1, 20, 2)) and c0.activity == 1 and c0.group == "g1"
    assert c1.frame_ids.tolist() == list(range(5, 15)) and c1.activity == UNKNOWN and c1.group == "a"
    # 10 samples of 3..6: rint(3, 3.33, 3.67, 4, 4.33, 4.67, 5, 5.33, 5.67, 6)
    assert c2.frame_ids.tolist() == [3, 3, 4, 4, 4, 5, 5, 5, 6, 6] and c2.activity == 0
    ds5 = read_mot(tmp_path, frames_per_clip=5, activities=("walk", "run", "jump"))
    assert ds5.activities == ("walk", "run", "jump")
    assert ds5.clips[0].frame_ids.tolist() == [1, 6, 10, 14, 19] and ds5.clips[0].activity == 0


def test_clips_csv_unknown_activity(tmp_path):
    write_tracks(tmp_path, "a", person(1, range(1, 11)))
    write_folder(tmp_path, "a", range(1, 11))
    (tmp_path / "clips.csv").write_text("video,start,end,activity,group\na,1,10,walk,\na,2,9,dance,\n")
    with pytest.raises(UnknownLabel) as e:
        read_mot(tmp_path, activities=("walk",))
    assert f"{tmp_path / 'clips.csv'}:3" in str(e.value)
    ds = read_mot(tmp_path, activities=("walk",), skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1


def test_video_source(tmp_path):
    write_tracks(tmp_path, "clip", person(1, range(1, 21), x=5, y=5, w=10, h=10)
                 + person(2, range(1, 21), x=60, y=40, w=10, h=10))
    video = write_video(tmp_path / "videos" / "clip.mp4")
    ds = read_mot(tmp_path)
    assert [c.id for c in ds] == ["clip/000001", "clip/000011"]
    c = ds.clips[1]
    assert c.image_size == (48, 64)
    assert isinstance(c.frames, VideoFrames) and c.frames.path == video
    assert c.frames.indices == tuple(range(10, 20))
    np.testing.assert_array_equal(c.boxes[0, 1], [60, 40, 64, 48])  # clipped to 64x48


def test_frame_folder_wins_over_video(tmp_path):
    write_tracks(tmp_path, "v", person(1, range(1, 11)))
    write_folder(tmp_path, "v", range(1, 11))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v.mp4").write_bytes(b"not a video")
    assert isinstance(read_mot(tmp_path).clips[0].frames, ImageFrames)


def test_splits_json(tmp_path):
    write_tracks(tmp_path, "a", person(1, range(1, 21)))
    write_folder(tmp_path, "a", range(1, 21))
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a/000001"], "test": ["a/000011"]}))
    assert [c.split for c in read_mot(tmp_path)] == ["train", "test"]


def test_detection(tmp_path):
    assert not looks_like_mot(tmp_path)
    write_tracks(tmp_path, "a", person(1, range(1, 3)))
    assert looks_like_mot(tmp_path)


@pytest.mark.parametrize("row, error, text", [
    ("1,1,10,20", MalformedLine, "expected"),
    ("1,1,10,20,x,40,1", MalformedLine, "non-numeric"),
    ("0,1,10,20,30,40,1", MalformedLine, "frame 0"),
    ("2,-1,10,20,30,40,1", MalformedLine, "track id -1"),
    ("2,1,10,20,30,40,1", MalformedLine, "two boxes"),
    ("2,2,10,20,0,40,1", BadBox, "non-positive"),
    ("2,2,10,20,30,-4,1", BadBox, "non-positive"),
    ("2,2,500,20,30,40,1", BadBox, "outside"),
    ("2,2,-50,20,30,40,1", BadBox, "outside"),
])
def test_track_errors_name_file_and_line(tmp_path, row, error, text):
    path = write_tracks(tmp_path, "a", person(1, range(1, 11)))
    path.write_text(path.read_text() + row + "\n")  # line 11
    write_folder(tmp_path, "a", range(1, 11))
    with pytest.raises(error) as e:
        read_mot(tmp_path)
    assert f"{path}:11" in str(e.value) and text in str(e.value)
    ds = read_mot(tmp_path, skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1 and isinstance(ds.skipped[0], error)


@pytest.mark.parametrize("row, text", [
    ("a,9,5,,", "end 5 < start 9"),
    ("a,5,12,,", "outside the track range 1..10"),
    ("a,x,5,,", "integers"),
    ("a,1,5,", "expected 5 fields"),
    ("zz,1,5,,", "no tracks/zz.txt"),
    ("a,1,10,,", "duplicate clip a/000001"),
])
def test_csv_errors_name_file_and_line(tmp_path, row, text):
    write_tracks(tmp_path, "a", person(1, range(1, 11)))
    write_folder(tmp_path, "a", range(1, 11))
    csv = tmp_path / "clips.csv"
    csv.write_text("video,start,end,activity,group\na,1,10,,\n" + row + "\n")
    with pytest.raises(MalformedLine) as e:
        read_mot(tmp_path)
    assert f"{csv}:3" in str(e.value) and text in str(e.value)
    ds = read_mot(tmp_path, skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1


def test_csv_bad_header(tmp_path):
    write_tracks(tmp_path, "a", person(1, range(1, 11)))
    write_folder(tmp_path, "a", range(1, 11))
    (tmp_path / "clips.csv").write_text("name,from,to\na,1,10\n")
    with pytest.raises(MalformedLine, match=r"clips.csv:1"):
        read_mot(tmp_path)


def test_missing_frame_image(tmp_path):
    write_tracks(tmp_path, "a", person(1, range(1, 21)))
    d = write_folder(tmp_path, "a", [f for f in range(1, 21) if f != 14])
    with pytest.raises(MissingFrame) as e:
        read_mot(tmp_path)
    assert str(d) in str(e.value) and "frame 14" in str(e.value) and "a/000011" in str(e.value)
    ds = read_mot(tmp_path, skip_bad=True)
    assert [c.id for c in ds] == ["a/000001"] and len(ds.skipped) == 1


def test_missing_source_and_unreadable_video(tmp_path):
    write_tracks(tmp_path, "a", person(1, range(1, 11)))
    write_tracks(tmp_path, "b", person(1, range(1, 11)))
    write_folder(tmp_path, "b", range(1, 11))
    with pytest.raises(MissingFrame, match="no frames/a/ folder"):
        read_mot(tmp_path)
    bad = tmp_path / "videos" / "a.avi"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UnreadableVideo) as e:
        read_mot(tmp_path)
    assert str(bad) in str(e.value)
    ds = read_mot(tmp_path, skip_bad=True)
    assert [c.video for c in ds] == ["b"] and len(ds.skipped) == 1


def test_video_too_short_for_clip(tmp_path):
    write_tracks(tmp_path, "v", person(1, range(1, 31)))
    write_video(tmp_path / "videos" / "v.mp4", n=15)
    with pytest.raises(MissingFrame, match="beyond the 15 frames"):
        read_mot(tmp_path)
