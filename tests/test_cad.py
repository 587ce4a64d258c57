"""CAD / CAED reader: labels, windows, padding, splits, frame sizes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stvh.data.cad import looks_like_cad, read_caed, read_cad
from stvh.data.clip import UNKNOWN, ImageFrames
from stvh.data.errors import BadBox, FormatError, MalformedLine, MissingFrame, UnknownLabel
from stvh.data.labels import CAD_ACTIVITIES_4, CAD_ACTIVITIES_5, CAED_ACTIONS, CAED_ACTIVITIES

# file action ids
NA, CROSS, WAIT, QUEUE, WALK, TALK, DANCE, JOG = range(1, 9)


def write_seq(root: Path, name: str, rows: list[tuple], frames: range | None = None,
              size: tuple[int, int] = (48, 64), skip: tuple[int, ...] = ()) -> Path:
    """rows: (frame, x, y, w, h, action[, pose]); frames: frame numbers to write as JPEG (H, W = size)."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        r = tuple(r) + ((1,) if len(r) == 6 else ())
        lines.append("\t".join(str(v) for v in r))
    (d / "annotations.txt").write_text("\n".join(lines) + "\n")
    if frames is not None:
        img = Image.new("RGB", (size[1], size[0]), (10, 20, 30))
        for f in frames:
            if f not in skip:
                img.save(d / f"frame{f:04d}.jpg")
    return d


def people(frame: int, *actions: int) -> list[tuple]:
    """Rows of one frame, one distinct 10x10 box per person (the same box twice is a duplicate line)."""
    return [(frame, 12 * i, 0, 10, 10, a) for i, a in enumerate(actions)]


BASIC = [
    (1, 10, 20, 30, 40, CROSS),
    (1, 100, 100, 20, 20, CROSS),
    (1, 200, 200, 10, 10, WAIT),
    (2, 0, 0, 5, 5, TALK),          # not a key frame: ignored for clips
    (11, 50, 60, 10, 10, TALK),
    (11, 70, 60, 10, 10, TALK),
]


def test_cad5_basic(tmp_path):
    write_seq(tmp_path, "seq01", BASIC)
    ds = read_cad(tmp_path)
    assert ds.format == "cad"
    assert ds.activities == CAD_ACTIVITIES_5 and ds.actions == CAD_ACTIVITIES_5
    assert [c.id for c in ds] == ["seq01/1", "seq01/11"]
    c = ds.clips[0]
    assert c.boxes.shape == (10, 13, 4) and c.boxes.dtype == np.float32
    for t in range(10):  # key-frame boxes repeated over T
        np.testing.assert_array_equal(c.boxes[t, 0], [10, 20, 40, 60])
        np.testing.assert_array_equal(c.boxes[t, 1], [100, 100, 120, 120])
        np.testing.assert_array_equal(c.boxes[t, 2], [200, 200, 210, 210])
    assert c.mask.tolist() == [True] * 3 + [False] * 10
    assert c.actions.tolist() == [0, 0, 1] + [-1] * 10
    assert np.all(c.boxes[:, 3:] == 0)
    assert c.activity == CAD_ACTIVITIES_5.index("crossing")
    assert ds.clips[1].activity == CAD_ACTIVITIES_5.index("talking")
    assert c.tracked is False and c.key_index == 5 and c.group == "seq01"
    assert c.image_size == (480, 720) and c.frames is None and c.split == "train"
    # window -5..+4 clamped into [1, last annotated frame = 11]
    assert c.frame_ids.tolist() == [1, 1, 1, 1, 1, 1, 2, 3, 4, 5]
    assert ds.clips[1].frame_ids.tolist() == [6, 7, 8, 9, 10, 11, 11, 11, 11, 11]
    assert ds.summary()["clips"] == 2


def test_cad4_merge_moving(tmp_path):
    write_seq(tmp_path, "seq01", [
        *people(1, CROSS, WALK, WAIT), *people(11, WALK, WALK, TALK), *people(21, CROSS, WALK, WAIT, WAIT),
    ])
    five = read_cad(tmp_path)
    four = read_cad(tmp_path, merge_moving=True)
    assert four.activities == CAD_ACTIVITIES_4 and four.actions == CAD_ACTIVITIES_4
    moving, waiting = CAD_ACTIVITIES_4.index("moving"), CAD_ACTIVITIES_4.index("waiting")
    assert four.clips[0].actions[:3].tolist() == [moving, moving, waiting]
    # frame 1: crossing/walking/waiting tie -> crossing (smallest id) -> moving
    assert five.clips[0].activity == CAD_ACTIVITIES_5.index("crossing")
    assert four.clips[0].activity == moving
    assert five.clips[1].activity == CAD_ACTIVITIES_5.index("walking")
    assert four.clips[1].activity == moving
    # frame 21: the vote is taken on the 5 classes, then merged: waiting 2 beats crossing 1, walking 1
    assert five.clips[2].activity == CAD_ACTIVITIES_5.index("waiting")
    assert four.clips[2].activity == waiting
    with pytest.raises(ValueError):
        read_caed(tmp_path, merge_moving=True)


def test_caed_classes_and_walking_excluded(tmp_path):
    write_seq(tmp_path, "seq01", [
        *people(1, WALK, WALK, WALK, DANCE), *people(11, JOG, NA), *people(21, WALK, NA),
    ])
    ds = read_caed(tmp_path)
    assert ds.format == "caed"
    assert ds.activities == CAED_ACTIVITIES and ds.actions == CAED_ACTIONS[1:]
    assert ds.clips[0].activity == CAED_ACTIVITIES.index("dancing")
    assert ds.clips[0].actions[:4].tolist() == [3, 3, 3, CAED_ACTIONS[1:].index("dancing")]
    assert ds.clips[1].activity == CAED_ACTIVITIES.index("jogging")
    assert ds.clips[1].actions[:2].tolist() == [CAED_ACTIONS[1:].index("jogging"), UNKNOWN]
    assert ds.clips[2].activity == UNKNOWN  # only walking and NA: unlabeled, clip kept
    # CAD does not know dancing (7)
    with pytest.raises(UnknownLabel):
        read_cad(tmp_path)


def test_majority_tie_and_all_na(tmp_path):
    write_seq(tmp_path, "seq01", [
        *people(1, QUEUE, WAIT, NA, NA), *people(11, NA, NA), *people(21, TALK, TALK, QUEUE),
    ])
    ds = read_cad(tmp_path)
    assert ds.clips[0].activity == CAD_ACTIVITIES_5.index("waiting")  # tie 1-1: smallest id (3 < 4)
    assert ds.clips[0].actions[:4].tolist() == [2, 1, -1, -1]
    assert ds.clips[1].activity == UNKNOWN and ds.clips[1].num_persons == 2
    assert ds.clips[2].activity == CAD_ACTIVITIES_5.index("talking")
    assert ds.summary()["activity_counts"]["unlabeled"] == 1


def test_window_options(tmp_path):
    write_seq(tmp_path, "seq01", [(1, 0, 0, 10, 10, WAIT), (21, 0, 0, 10, 10, WAIT)])
    ds = read_cad(tmp_path, window=(0, 2))
    assert ds.clips[0].frame_ids.tolist() == [1, 2, 3] and ds.clips[0].key_index == 0
    assert ds.clips[1].frame_ids.tolist() == [21, 21, 21]  # last frame = 21 (no images)
    ds = read_cad(tmp_path, window=(-2, 1))
    assert ds.clips[1].frame_ids.tolist() == [19, 20, 21, 21] and ds.clips[1].key_index == 2
    with pytest.raises(ValueError):
        read_cad(tmp_path, window=(1, 3))


def test_window_clamped_to_last_image(tmp_path):
    write_seq(tmp_path, "seq01", [(1, 0, 0, 10, 10, WAIT), (11, 0, 0, 10, 10, WAIT)], frames=range(1, 14))
    ds = read_cad(tmp_path)
    c = ds.clips[1]
    assert c.frame_ids.tolist() == [6, 7, 8, 9, 10, 11, 12, 13, 13, 13]
    assert isinstance(c.frames, ImageFrames)
    assert [p.name for p in c.frames.paths] == [f"frame{f:04d}.jpg" for f in c.frame_ids.tolist()]
    assert c.frames.exists()


def test_n_max_keeps_largest_boxes(tmp_path):
    write_seq(tmp_path, "seq01", [
        (1, 0, 0, 10, 10, WAIT),     # area 100
        (1, 0, 0, 30, 30, QUEUE),    # 900
        (1, 0, 0, 5, 5, QUEUE),      # 25   dropped
        (1, 0, 0, 20, 20, TALK),     # 400
    ])
    ds = read_cad(tmp_path, n_max=3)
    c = ds.clips[0]
    assert c.boxes.shape == (10, 3, 4) and c.mask.all()
    np.testing.assert_array_equal(c.boxes[0, :, 2], [10, 30, 20])  # file order kept
    assert c.actions.tolist() == [1, 2, 4]
    # vote over all 4 persons: queueing 2
    assert c.activity == CAD_ACTIVITIES_5.index("queueing")


def test_official_and_default_splits(tmp_path):
    for n in (1, 3, 5, 29):
        write_seq(tmp_path, f"seq{n:02d}", [(1, 0, 0, 10, 10, WAIT)])
    cad = {c.video: c.split for c in read_cad(tmp_path)}
    assert cad == {"seq01": "train", "seq03": "train", "seq05": "test", "seq29": "test"}
    caed = {c.video: c.split for c in read_caed(tmp_path)}
    assert caed == {"seq01": "train", "seq03": "test", "seq05": "train", "seq29": "train"}


def test_splits_json_override(tmp_path):
    write_seq(tmp_path, "seq01", [(1, 0, 0, 10, 10, WAIT), (11, 0, 0, 10, 10, WAIT)])
    write_seq(tmp_path, "seq05", [(1, 0, 0, 10, 10, WAIT), (11, 0, 0, 10, 10, WAIT)])
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["seq05/1"], "test": ["seq01"]}))
    splits = {c.id: c.split for c in read_cad(tmp_path)}
    assert splits == {"seq01/1": "test", "seq01/11": "test", "seq05/1": "train", "seq05/11": ""}
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["seq01"], "test": ["seq01"]}))
    with pytest.raises(FormatError, match="splits.json"):
        read_cad(tmp_path)
    (tmp_path / "splits.json").write_text("{not json")
    with pytest.raises(FormatError, match="splits.json"):
        read_cad(tmp_path)


def test_frame_size_header_vs_table(tmp_path):
    write_seq(tmp_path, "seq15", [(1, 700, 400, 50, 40, WAIT)])             # table: 450x800
    write_seq(tmp_path, "seq02", [(1, 150, 50, 100, 100, WAIT)], frames=range(1, 6), size=(100, 200))
    ds = read_cad(tmp_path)
    by = {c.video: c for c in ds}
    assert by["seq15"].image_size == (450, 800)
    np.testing.assert_array_equal(by["seq15"].boxes[0, 0], [700, 400, 750, 440])
    assert by["seq02"].image_size == (100, 200)        # JPEG header wins
    np.testing.assert_array_equal(by["seq02"].boxes[0, 0], [150, 50, 200, 100])  # clipped to 200x100
    # a box entirely outside the 200x100 image
    write_seq(tmp_path, "seq02", [(1, 250, 10, 10, 10, WAIT)], frames=range(1, 6), size=(100, 200))
    with pytest.raises(BadBox, match="annotations.txt:1"):
        read_cad(tmp_path)


def test_missing_frame_names_file_and_clip(tmp_path):
    write_seq(tmp_path, "seq01", [(1, 0, 0, 10, 10, WAIT), (11, 0, 0, 10, 10, WAIT)],
              frames=range(1, 16), skip=(3,))
    with pytest.raises(MissingFrame) as e:
        read_cad(tmp_path)
    assert "frame0003.jpg" in str(e.value) and "seq01/1" in str(e.value)
    ds = read_cad(tmp_path, skip_bad=True)
    assert [c.id for c in ds] == ["seq01/11"] and len(ds.skipped) == 1
    assert isinstance(ds.skipped[0], MissingFrame)


@pytest.mark.parametrize("line, error, text", [
    ("1\t0\t0\t10\t10\t3", MalformedLine, "expected 7 fields"),
    ("1\t0\t0\t10\tten\t3\t1", MalformedLine, "non-integer"),
    ("1\t0\t0\t10\t10\t9\t1", UnknownLabel, "action id 9"),
    ("1\t0\t0\t10\t10\t0\t1", UnknownLabel, "action id 0"),
    ("1\t0\t0\t0\t10\t3\t1", BadBox, "non-positive"),
    ("1\t0\t0\t10\t-1\t3\t1", BadBox, "non-positive"),
    ("1\t800\t0\t10\t10\t3\t1", BadBox, "outside"),
    ("0\t0\t0\t10\t10\t3\t1", MalformedLine, "frame 0"),
])
def test_errors_name_file_and_line(tmp_path, line, error, text):
    d = write_seq(tmp_path, "seq01", [(1, 0, 0, 10, 10, WAIT), (11, 0, 0, 10, 10, TALK)])
    ann = d / "annotations.txt"
    good = ann.read_text().splitlines()
    ann.write_text("\n".join([good[0], "", line, good[1]]) + "\n")  # bad line is line 3
    with pytest.raises(error) as e:
        read_cad(tmp_path)
    assert f"{ann}:3" in str(e.value) and text in str(e.value)
    assert e.value.line == 3 and e.value.path == str(ann)
    ds = read_cad(tmp_path, skip_bad=True)
    assert len(ds) == 2 and len(ds.skipped) == 1 and isinstance(ds.skipped[0], error)
    assert ds.summary()["skipped"] == 1


def test_space_separated_and_detection(tmp_path):
    assert not looks_like_cad(tmp_path)
    d = tmp_path / "seq07"
    d.mkdir()
    (d / "annotations.txt").write_text("1 5 6 7 8 2 3\n")
    (tmp_path / "seqXX").mkdir()
    assert looks_like_cad(tmp_path)
    ds = read_cad(tmp_path)
    assert len(ds) == 1 and ds.clips[0].split == "test"
    np.testing.assert_array_equal(ds.clips[0].boxes[0, 0], [5, 6, 12, 14])
    with pytest.raises(FormatError):
        read_cad(tmp_path / "seqXX")
