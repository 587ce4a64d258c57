"""Clip record, padding, atomic writes, box geometry, splits.json, format detection."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from stvh.data import FormatError, Problems, MalformedLine, detect_format, read_dataset
from stvh.data.atomic import atomic_path, write_text_atomic
from stvh.data.clip import Clip, ClipDataset, pad_persons
from stvh.data.geometry import clip_box_to_image, iou_matrix
from stvh.data.splits import read_splits


def make_clip(**kw) -> Clip:
    boxes, mask, actions = pad_persons(np.ones((3, 2, 4), np.float32) * [0, 0, 5, 5], np.array([1, 2]), 4)
    base = dict(video="v", clip="1", frame_ids=np.arange(3), boxes=boxes, mask=mask, actions=actions,
                activity=0, group="v", image_size=(10, 10), key_index=1)
    base.update(kw)
    return Clip(**base)


def test_pad_persons():
    boxes, mask, actions = pad_persons(np.full((2, 2, 4), 7, np.float32), np.array([3, 4]), 4)
    assert boxes.shape == (2, 4, 4) and (boxes[:, 2:] == 0).all() and (boxes[:, :2] == 7).all()
    assert mask.tolist() == [True, True, False, False] and actions.tolist() == [3, 4, -1, -1]
    with pytest.raises(ValueError, match="exceed"):
        pad_persons(np.zeros((1, 5, 4)), np.zeros(5), 4)


def test_clip_validate():
    clip = make_clip()
    clip.validate()
    assert clip.id == "v/1" and clip.num_persons == 2 and clip.num_frames == 3
    bad = make_clip()
    bad.boxes[0, 3] = 1  # a padded person with a box
    with pytest.raises(ValueError, match="padded"):
        bad.validate()
    with pytest.raises(ValueError, match="key_index"):
        make_clip(key_index=3).validate()
    with pytest.raises(ValueError, match="boxes shape"):
        make_clip(frame_ids=np.arange(4)).validate()


def test_dataset_summary_counts():
    clips = [make_clip(clip=str(i), activity=i % 2, split="train" if i < 3 else "test") for i in range(4)]
    clips.append(make_clip(clip="9", activity=-1, split="test"))
    ds = ClipDataset("x", "/r", clips, ("a", "b"), ("n0", "n1", "n2"))
    s = ds.summary()
    assert s["clips"] == 5 and s["clips_per_split"] == {"test": 2, "train": 3}
    assert s["activity_counts"] == {"unlabeled": 1, "a": 2, "b": 2}
    assert s["activity_counts_per_split"]["test"] == {"b": 1, "unlabeled": 1}
    assert s["action_counts"] == {"n1": 5, "n2": 5} and s["persons"] == 10
    assert s["clips_per_video"] == {"v": 5}


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temp file left behind
    write_text_atomic(target, "new")
    assert target.read_text() == "new"


def test_geometry():
    np.testing.assert_array_equal(clip_box_to_image((-5, 2, 5, 30), (20, 10)), [0, 2, 5, 20])
    assert clip_box_to_image((11, 0, 20, 5), (20, 10)) is None
    iou = iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]]))
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0]])


def test_read_splits(tmp_path):
    assert read_splits(tmp_path) is None
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a/1"], "test": ["a/2"]}))
    assert read_splits(tmp_path) == {"a/1": "train", "a/2": "test"}
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["a/1"], "test": ["a/1"]}))
    with pytest.raises(FormatError, match="both"):
        read_splits(tmp_path)
    (tmp_path / "splits.json").write_text("{not json")
    with pytest.raises(FormatError, match="splits.json"):
        read_splits(tmp_path)


def test_problems_collector():
    p = Problems(skip_bad=True)
    p.report(MalformedLine("x", path="f", line=3))
    assert len(p) == 1 and p.counts() == {"malformed line": 1}
    with pytest.raises(MalformedLine, match="f:3: malformed line: x"):
        Problems().report(MalformedLine("x", path="f", line=3))


def test_detect_format(tmp_path):
    vb = tmp_path / "vb" / "videos" / "1"
    vb.mkdir(parents=True)
    (vb / "annotations.txt").write_text("1.jpg r_set 1 1 2 2 standing\n")
    assert detect_format(tmp_path / "vb") == "volleyball"
    cad = tmp_path / "cad" / "seq01"
    cad.mkdir(parents=True)
    (cad / "annotations.txt").write_text("1\t10\t10\t20\t40\t3\t1\n")
    assert detect_format(tmp_path / "cad") == "cad"
    caed = tmp_path / "caed" / "seq01"
    caed.mkdir(parents=True)
    (caed / "annotations.txt").write_text("1\t10\t10\t20\t40\t7\t1\n")
    assert detect_format(tmp_path / "caed") == "caed"
    with pytest.raises(FormatError, match="cannot detect"):
        detect_format(tmp_path)
    with pytest.raises(FormatError, match="does not exist"):
        detect_format(tmp_path / "nope")
    assert len(read_dataset(tmp_path / "vb")) == 1
    with pytest.raises(ValueError, match="unknown format"):
        read_dataset(tmp_path / "vb", format="kinetics")


def test_text_lines(tmp_path):
    from stvh.data.errors import text_lines

    f = tmp_path / "a.txt"
    f.write_text("first\n\n  second  \n   \nthird")
    assert text_lines(f, Problems()) == [(1, "first"), (3, "second"), (5, "third")]
    f.write_bytes(b"\xff\xfe bad utf-8\n")
    with pytest.raises(FormatError, match="a.txt: format error: file is UTF-16; save it as UTF-8"):
        text_lines(f, Problems())
    skipping = Problems(skip_bad=True)
    assert text_lines(tmp_path / "missing.txt", skipping) == [] and len(skipping) == 1


def test_unit_hash_is_seeded_and_uniform():
    from stvh.data.splits import unit_hash

    values = [unit_hash(f"v/{i}", 0) for i in range(2000)]
    assert all(0 <= v < 1 for v in values) and abs(np.mean(values) - 0.5) < 0.03
    assert unit_hash("v/1", 0) == unit_hash("v/1", 0) != unit_hash("v/1", 1)
