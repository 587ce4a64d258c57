"""Volleyball reader: fixtures written here, hand-computed expectations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stvh.data import BadBox, MalformedLine, MissingFrame, UnknownLabel
from stvh.data.volleyball import (VOLLEYBALL_TEST, VOLLEYBALL_TRAINVAL, official_image_size, official_split,
                                  read_volleyball)
from stvh.data.labels import VOLLEYBALL_ACTIONS, VOLLEYBALL_ACTIVITIES


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_dataset(root: Path, lines: dict[str, list[str]]) -> Path:
    for video, rows in lines.items():
        write(root / "videos" / video / "annotations.txt", "\n".join(rows) + "\n")
    return root


def test_official_constants():
    assert len(VOLLEYBALL_TRAINVAL) == 39 and len(VOLLEYBALL_TEST) == 16
    assert set(VOLLEYBALL_TEST) == {4, 5, 9, 11, 14, 20, 21, 25, 29, 34, 35, 37, 43, 44, 45, 47}
    assert not set(VOLLEYBALL_TEST) & set(VOLLEYBALL_TRAINVAL)
    assert official_split("4") == "test" and official_split("7") == "train" and official_split("99") == ""
    assert official_image_size("2") == (1080, 1920) and official_image_size("7") == (720, 1280)


def test_both_label_spellings_and_boxes(tmp_path):
    root = make_dataset(tmp_path, {"7": [
        "100.jpg r_set 10 20 30 40 standing 100 200 10 10 setting",
        "200.jpg l-pass 5 6 7 8 digging",
    ]})
    ds = read_volleyball(root)
    assert [c.id for c in ds] == ["7/100", "7/200"]
    a, b = ds.clips
    assert VOLLEYBALL_ACTIVITIES[a.activity] == "r_set" and VOLLEYBALL_ACTIVITIES[b.activity] == "l_pass"
    assert a.boxes.shape == (10, 12, 4) and a.mask.tolist() == [True, True] + [False] * 10
    np.testing.assert_array_equal(a.boxes[0, 0], [10, 20, 40, 60])
    np.testing.assert_array_equal(a.boxes[9, 1], [100, 200, 110, 210])
    assert (a.boxes[:, 2:] == 0).all() and a.actions.tolist()[:3] == [
        VOLLEYBALL_ACTIONS.index("standing"), VOLLEYBALL_ACTIONS.index("setting"), -1]
    assert a.frame_ids.tolist() == list(range(95, 105)) and a.key_index == 5
    assert not a.tracked and a.frames is None and a.group == "7" and a.split == "train"
    assert a.image_size == (720, 1280)
    a.validate()


def test_window_and_n_max(tmp_path):
    persons = " ".join(f"{10 * i} 0 {5 + i} 10 standing" for i in range(14))
    root = make_dataset(tmp_path, {"4": [f"50.jpg r_spike {persons}"]})
    ds = read_volleyball(root, window=(-2, 1), n_max=12)
    (c,) = ds.clips
    assert c.frame_ids.tolist() == [48, 49, 50, 51] and c.key_index == 2 and c.split == "test"
    # the two smallest boxes (persons 0 and 1) are dropped, order kept
    np.testing.assert_array_equal(c.boxes[0, :, 0], [10 * i for i in range(2, 14)])
    assert c.mask.all()


def test_tracks_present_and_absent(tmp_path):
    root = make_dataset(tmp_path, {"7": ["100.jpg r_set 10 20 30 40 standing 300 300 20 20 moving",
                                         "200.jpg r_set 10 20 30 40 standing"]})
    rows = []
    for f in range(90, 110):
        shift = f - 100
        rows.append(f"3 {10 + shift} 20 {40 + shift} 60 {f} 0 1 1 standing ")
    # person matched to track 3; a lost frame uses the nearest usable frame
    rows[7] = "3 0 0 1 1 97 1 1 1 standing "
    write(root / "tracking" / "7" / "100" / "100.txt", "\n".join(rows) + "\n")
    ds = read_volleyball(root)
    c, d = ds.clips
    assert c.tracked and not d.tracked
    x1 = c.boxes[:, 0, 0].tolist()
    assert x1 == [5, 6, 6, 8, 9, 10, 11, 12, 13, 14]  # frame 97 lost -> nearest usable frame, earlier on ties (96)
    # unmatched person (no overlapping track) keeps its key-frame box on every frame
    assert (c.boxes[:, 1] == np.array([300, 300, 320, 320])).all()
    assert (d.boxes == d.boxes[5:6]).all()
    without = read_volleyball(root, use_tracks=False)
    assert not without.clips[0].tracked


def test_frames_and_image_size_from_header(tmp_path):
    root = make_dataset(tmp_path, {"12": ["10.jpg l_winpoint 1 1 5 5 standing"]})
    for f in range(5, 15):
        p = root / "videos" / "12" / "10" / f"{f}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48)).save(p)
    (c,) = read_volleyball(root).clips
    assert c.image_size == (48, 64) and len(c.frames.paths) == 10 and c.frames.exists()
    (root / "videos" / "12" / "10" / "14.jpg").unlink()
    with pytest.raises(MissingFrame, match=r"annotations.txt:1.*clip 12/10.*14\.jpg"):
        read_volleyball(root)


def test_require_frames(tmp_path):
    root = make_dataset(tmp_path, {"7": ["100.jpg r_set 10 20 30 40 standing"]})
    with pytest.raises(MissingFrame, match="frame folder"):
        read_volleyball(root, require_frames=True)


@pytest.mark.parametrize("line, error, pattern", [
    ("100.jpg r_set 10 20 30 standing", MalformedLine, "annotations.txt:2"),
    ("abc.jpg r_set 10 20 30 40 standing", MalformedLine, "not a number"),
    ("100.jpg r_smash 10 20 30 40 standing", UnknownLabel, "r_smash"),
    ("100.jpg r_set 10 20 30 40 dancing", UnknownLabel, "dancing"),
    ("100.jpg r_set 10 20 0 40 standing", BadBox, "non-positive"),
    ("100.jpg r_set 2000 20 30 40 standing", BadBox, "outside"),
    ("100.jpg r_set 10 x 30 40 standing", MalformedLine, "non-numeric"),
])
def test_errors_name_file_and_line(tmp_path, line, error, pattern):
    root = make_dataset(tmp_path, {"7": ["50.jpg r_set 1 1 5 5 standing", line]})
    with pytest.raises(error, match=pattern) as info:
        read_volleyball(root)
    assert "annotations.txt:2" in str(info.value)
    ds = read_volleyball(root, skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1 and isinstance(ds.skipped[0], error)


def test_partly_outside_box_is_clipped(tmp_path):
    root = make_dataset(tmp_path, {"7": ["100.jpg r_set 1270 700 30 40 standing"]})
    (c,) = read_volleyball(root).clips
    np.testing.assert_array_equal(c.boxes[0, 0], [1270, 700, 1280, 720])


def test_malformed_tracking_line(tmp_path):
    root = make_dataset(tmp_path, {"7": ["100.jpg r_set 10 20 30 40 standing"]})
    write(root / "tracking" / "7" / "100" / "100.txt", "3 10 20 40\n")
    with pytest.raises(MalformedLine, match=r"100\.txt:1"):
        read_volleyball(root)


def test_splits_json_and_dataset_json(tmp_path):
    root = make_dataset(tmp_path, {"0": ["100.jpg r_set 10 20 30 40 standing", "200.jpg l_set 1 1 5 5 waiting"]})
    write(root / "splits.json", json.dumps({"train": ["0/100"], "test": ["0/200"]}))
    write(root / "dataset.json", json.dumps({"image_size": [180, 320], "window": [-2, 2]}))
    a, b = read_volleyball(root).clips
    assert (a.split, b.split) == ("train", "test")
    assert a.image_size == (180, 320) and a.num_frames == 5


def test_trailing_newline_optional(tmp_path):
    root = tmp_path
    write(root / "videos" / "3" / "annotations.txt", "1.jpg r_set 1 1 5 5 standing\n2.jpg r_set 1 1 5 5 standing")
    assert len(read_volleyball(root)) == 2


def test_real_sample(volleyball_sample):
    ds = read_volleyball(volleyball_sample)
    per_video = ds.summary()["clips_per_video"]
    assert (per_video["4"], per_video["7"], per_video["10"]) == (111, 106, 103)
    assert {c.split for c in ds if c.video == "4"} == {"test"}
    c = next(c for c in ds if c.id == "7/38025")
    assert c.tracked and c.frames is not None and c.frames.exists() and c.image_size == (720, 1280)
    assert c.boxes.shape == (10, 12, 4)
    c39 = next(c for c in ds if c.video == "39")
    assert c39.image_size == (1080, 1920) and not c39.tracked
    for clip in ds:
        clip.validate()
