"""Splits as written (issue 14): split names in any case, user val split, clips in no split left out and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stvh.cli import app
from stvh.data.clip import Clip
from stvh.data.errors import FormatError, MalformedLine
from stvh.data.mot import read_mot
from stvh.data.splits import canonical_split, read_splits
from stvh.data.splits import unit_hash
from stvh.train.tensors import limit_per_class, partition, partition_notes

runner = CliRunner()
TINY = ["model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.depth=2", "train.epochs=1",
        "train.batch_size=4", "data.val_fraction=0.25", "filter.steps=5", "model.backbone=none"]


def clip(video: str, n: int, split: str, group: str = "g") -> Clip:
    return Clip(video=video, clip=str(n), frame_ids=np.arange(2), boxes=np.zeros((2, 1, 4), np.float32),
                mask=np.ones(1, bool), actions=np.full(1, -1), activity=0, group=group, image_size=(9, 16),
                split=split)


def ids(clips) -> list[str]:
    return sorted(c.id for c in clips)


# ------------------------------------------------------------------ names

def test_split_names_in_any_case(tmp_path):
    (tmp_path / "splits.json").write_text(json.dumps({"Train": ["a"], "VALIDATION": ["b/1"], "tEST": ["c"]}))
    assert dict(read_splits(tmp_path)) == {"a": "train", "b/1": "val", "c": "test"}
    assert [canonical_split(n) for n in (" Val ", "validation", "TRAIN", "training", "")] == [
        "val", "val", "train", None, None]


def test_unknown_split_name_is_refused_with_the_names_found(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text('{"train": ["a"],\n "training": ["b"]}')
    with pytest.raises(FormatError) as info:
        read_splits(tmp_path)
    assert str(info.value) == (f"{path}:2: format error: unknown split name 'training' (splits found: 'train', "
                               "'training'); split names are train, val (or validation), test; any case")
    path.write_text('{"val": ["a"],\n "Validation": ["b"]}')
    with pytest.raises(FormatError, match=r"splits.json:2: .*'val' and 'Validation' both name the val split"):
        read_splits(tmp_path)


def test_clips_csv_split_column_in_any_case(tmp_path):
    from test_reader_checks import jpegs, track_rows, write

    write(tmp_path / "tracks" / "a.txt", "".join(r + "\n" for r in track_rows(frames=range(1, 31))))
    jpegs(tmp_path / "frames" / "a", [f"{f:06d}.jpg" for f in range(1, 31)])
    csv = write(tmp_path / "clips.csv", "video,start,end,split\na,1,10,Train\na,11,20,VAL\na,21,30,\n")
    assert [c.split for c in read_mot(tmp_path)] == ["train", "val", ""]  # an empty cell: in no split
    write(csv, "video,start,end,split\na,1,10,Train\na,11,20,dev\n")
    with pytest.raises(MalformedLine, match=r"clips.csv:3: malformed line: split 'dev' is not a split name"):
        read_mot(tmp_path)
    assert [c.split for c in read_mot(tmp_path, skip_bad=True)] == ["train"]


# ------------------------------------------------------------------ partition

def test_partition_takes_the_splits_as_written():
    clips = [clip("t", i, "train") for i in range(4)] + [clip("v", 0, "val"), clip("s", 0, "test"),
                                                         clip("u", 0, ""), clip("m", 0, "all")]
    parts = partition(clips, 0.5, seed=0)  # a user val split: exactly it, val_fraction unused
    assert {k: ids(v) for k, v in parts.items()} == {
        "train": ["t/0", "t/1", "t/2", "t/3"], "val": ["v/0"], "test": ["s/0"], "none": ["m/0", "u/0"]}
    assert partition_notes(parts, 0.5) == [
        "validation: the 1 clips of the val split (data.val_fraction = 0.5 is unused)",
        "2 clips are in no split (none given by splits.json or clips.csv): not trained on; data.unlisted=train "
        "trains on them"]
    old = partition(clips, 0.5, seed=0, unlisted="train")  # the clip in no split ("") joins train
    assert ids(old["train"]) == ["t/0", "t/1", "t/2", "t/3", "u/0"] and ids(old["none"]) == ["m/0"]


def test_limit_per_class_keeps_the_first_n_of_each_activity_by_seeded_hash():
    clips = []
    for activity, n in ((0, 5), (1, 2), (-1, 3)):
        for i in range(n):
            c = clip(f"a{activity}", i, "train")
            c.activity = activity
            clips.append(c)
    kept, dropped = limit_per_class(clips, 3, seed=7)
    # by hand: each activity's clips ranked by unit_hash(id, 7); activity 0 keeps its 3 lowest, 1 keeps both,
    # unlabelled clips are all kept; the kept list keeps the input order
    rank0 = sorted((c for c in clips if c.activity == 0), key=lambda c: unit_hash(c.id, 7))
    expect = {c.id for c in rank0[:3]} | {c.id for c in clips if c.activity != 0}
    assert [c.id for c in kept] == [c.id for c in clips if c.id in expect]
    assert ids(dropped) == ids(rank0[3:]) and len(dropped) == 2
    smaller, _ = limit_per_class(clips, 1, seed=7)  # nested: a smaller size keeps a subset
    assert {c.id for c in smaller} <= {c.id for c in kept} and sum(c.activity == 0 for c in smaller) == 1
    assert limit_per_class(clips, None, seed=7) == (clips, [])
    with pytest.raises(ValueError, match="train_per_class"):
        limit_per_class(clips, 0, seed=7)


def test_train_per_class_trains_on_fewer_clips(tiny_synth, tmp_path):
    from stvh.data.formats import read_dataset

    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data", str(tiny_synth), "--out", str(out), "--no-progress", *TINY,
                                 "data.train_per_class=1"])
    assert result.exit_code == 0, result.output
    full = partition(read_dataset(tiny_synth).clips, 0.25, seed=0)["train"]
    per_class = {c.activity for c in full}  # one clip of each activity the train part has
    assert len(per_class) < len(full)  # the data has some activity twice, so the option drops clips
    assert f"training on {len(per_class)} train clips, {len(full) - len(per_class)} left out" in result.output
    assert json.loads((out / "run.json").read_text())["splits"]["train"] == len(per_class)


def test_visual_contrast_is_off_when_the_training_clips_come_from_one_video(footage, tmp_path):
    out = tmp_path / "run"  # the footage's train split is video v0 alone (v1 is in no split)
    result = runner.invoke(app, ["train", "--data", str(footage), "--out", str(out), "--no-progress", *TINY,
                                 "loss.visual=1"])
    assert result.exit_code == 0, result.output
    assert "the training clips come from one video: loss.visual (same-video contrast) is off" in result.output
    assert "loss_visual" not in (out / "metrics.csv").read_text().splitlines()[0]


def test_partition_carves_val_from_train_without_a_val_split():
    clips = [clip("t", i, "train") for i in range(4)] + [clip("u", i, "") for i in range(2)]
    parts = partition(clips, 0.5, seed=0)
    assert len(parts["train"]) == 2 and len(parts["val"]) == 2 and ids(parts["none"]) == ["u/0", "u/1"]
    assert {c.video for c in parts["train"] + parts["val"]} == {"t"}
    old = partition(clips, 0.5, seed=0, unlisted="train")  # 6 clips carved: 3 val, 3 train
    assert len(old["train"]) == 3 and len(old["val"]) == 3 and not old["none"]
    assert partition_notes(old, 0.5, "train") == ["2 clips in no split joined the train split (data.unlisted=train)"]
    with pytest.raises(ValueError, match="data.unlisted must be one of ignore, train"):
        partition(clips, 0.5, seed=0, unlisted="val")


# ------------------------------------------------------------------ from the command line

@pytest.fixture(scope="module")
def footage(tiny_synth, tmp_path_factory) -> Path:
    """MOT export of the tiny synthetic data: v0 labelled and split, v1 unlabelled and in no split."""
    from stvh.data.mot_export import export_mot

    root = tmp_path_factory.mktemp("footage") / "mot"
    export_mot(tiny_synth, root, media="frames", unlabeled=["1"])
    return root


def with_splits(footage: Path, tmp_path: Path, splits: dict) -> Path:
    import shutil

    root = tmp_path / "mot"
    shutil.copytree(footage, root)
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def test_data_info_counts_clips_in_no_split(footage):
    result = runner.invoke(app, ["data", "info", str(footage)])
    assert result.exit_code == 0, result.output
    row = [ln for ln in result.output.splitlines() if "not in any split" in ln]
    assert len(row) == 1 and row[0].split()[4] == "8", result.output  # the 8 clips of v1


def test_train_on_splits_as_written(footage, tmp_path):
    written = json.loads((footage / "splits.json").read_text())
    train_ids, test_ids = written["train"], written["test"]
    assert {i.split("/")[0] for i in train_ids + test_ids} == {"v0"} and len(train_ids) > 2
    # "Train" / "Test" (capitalised) are the train and test splits; the first two train clips are a user val split
    root = with_splits(footage, tmp_path, {"Train": train_ids[2:], "Validation": train_ids[:2], "Test": test_ids})
    result = runner.invoke(app, ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--no-progress",
                                 *TINY])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["splits"] == {"train": len(train_ids) - 2, "val": 2, "test": len(test_ids), "none": 8}
    assert "note: validation: the 2 clips of the val split (data.val_fraction = 0.25 is unused)" in result.output
    assert "note: 8 clips are in no split" in result.output
    # the old behaviour on request: the 8 clips of v1 join the train split
    result = runner.invoke(app, ["train", "--data", str(root), "--out", str(tmp_path / "run2"), "--no-progress",
                                 *TINY, "data.unlisted=train"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run2" / "run.json").read_text())
    assert info["splits"] == {"train": len(train_ids) - 2 + 8, "val": 2, "test": len(test_ids), "none": 0}


def test_no_train_split_names_the_clips_in_no_split(footage, tmp_path):
    root = with_splits(footage, tmp_path, {"test": ["v0"]})  # v0 tests, v1 in no split: nothing to train on
    result = runner.invoke(app, ["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY])
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "(clips per split: not in any split: 8, test: 8)" in lines[0]
    assert lines[0].endswith("or set data.unlisted=train to train on the 8 clips in no split")
