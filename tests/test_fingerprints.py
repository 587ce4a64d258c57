"""Caches and runs that know their inputs: fingerprints, stale clips re-extracted, foreign caches and data refused."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from stvh.data.feature_cache import FeatureCache
from stvh.data.fingerprint import clip_fingerprint, clip_fingerprints, data_fingerprint
from stvh.data.formats import read_dataset
from test_pipeline_errors import invoke, one_line_error  # one-line CLI errors, exit 2

CONFIG = """\
seed: 0
model: {name: mstvh, backbone: mobilenet_v3_small, bits: 16, depth: 2, d: 16, d_v: 8, heads: 2}
train: {epochs: 1, batch_size: 4, lr: 3.0e-3}
data: {val_fraction: 0.25}
filter: {steps: 5}
extract: {frame_size: null, pca: 4}
"""




def summary(result) -> dict:
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = result.output
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def shift_track_line(data, video="0", clip="1000", line=0, dx=5):
    """Move one person's box of one frame of ``video/clip`` right by ``dx`` pixels (its tracking file)."""
    path = data / "tracking" / video / clip / f"{clip}.txt"
    rows = path.read_text().splitlines()
    tok = rows[line].split()
    tok[1], tok[3] = str(int(tok[1]) + dx), str(int(tok[3]) + dx)
    rows[line] = " ".join(tok)
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def extracted(tiny_synth, tmp_path_factory):
    """(data copy, config, cache) extracted once; tests copy the cache before changing anything."""
    root = tmp_path_factory.mktemp("fp")
    data, cfg, feats = root / "data", root / "c.yaml", root / "feats"
    shutil.copytree(tiny_synth, data)
    cfg.write_text(CONFIG)
    s = summary(invoke("extract", "--config", cfg, "--data", data, "--out", feats, "--no-progress"))
    assert s["extracted"] == 16 and s["re_extracted"] == 0
    return data, cfg, feats


def copies(extracted, tmp_path):
    data, cfg, feats = extracted
    shutil.copytree(data, tmp_path / "data")  # copy2: mtimes kept, so the fingerprints too
    shutil.copytree(feats, tmp_path / "feats")
    return tmp_path / "data", cfg, tmp_path / "feats"


def test_clip_fingerprint_follows_boxes_and_frame_files_not_the_root(tiny_synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    before = clip_fingerprints(read_dataset(data).clips, data)
    assert before == clip_fingerprints(read_dataset(tiny_synth).clips, tiny_synth)  # moved: same fingerprints
    shift_track_line(data, "0", "1000")
    frame = sorted((data / "videos" / "1").glob("*/*.jpg"))[0]
    os.utime(frame, ns=(1, 1))  # touched: same size, another mtime
    after = clip_fingerprints(read_dataset(data).clips, data)
    changed = sorted(c for c in before if before[c] != after[c])
    assert changed == ["0/1000", f"1/{frame.parent.name}"]
    clip = read_dataset(data).clips[3]
    moved = type(clip)(**{**clip.__dict__, "boxes": clip.boxes + np.float32(0.5) * clip.mask[None, :, None]})
    assert clip_fingerprint(moved, data) != clip_fingerprint(clip, data)
    relabelled = type(clip)(**{**clip.__dict__, "activity": (clip.activity + 1) % 8, "split": "test"})
    assert clip_fingerprint(relabelled, data) == clip_fingerprint(clip, data)  # labels do not change features


def test_data_fingerprint_covers_labels_and_splits_not_frame_mtimes(tiny_synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    ds = read_dataset(data)
    fp = data_fingerprint(ds)
    for frame in (data / "videos" / "0").glob("*/*.jpg"):
        os.utime(frame, ns=(5, 5))
    assert data_fingerprint(read_dataset(data)) == fp
    ds.clips[0].split = "train" if ds.clips[0].split == "test" else "test"
    assert data_fingerprint(ds) != fp
    ds = read_dataset(data)
    ds.clips.reverse()
    assert data_fingerprint(ds) == fp  # clip order does not matter


def test_track_file_edited_and_extract_rerun(extracted, tmp_path):
    """The issue's case: a box moved in one tracking file; extract again re-extracts that clip only."""
    data, cfg, feats = copies(extracted, tmp_path)
    old = FeatureCache(feats)
    old_roi = old.load(old.ids())
    shift_track_line(data, "0", "1000", line=0, dx=20)
    result = invoke("extract", "--config", cfg, "--data", data, "--out", feats, "--no-progress")
    s = summary(result)
    assert (s["resumed"], s["re_extracted"], s["extracted"], s["cached"]) == (15, 1, 1, 16)
    assert "resumed 15, re-extracted 1 (inputs changed), extracted 0" in result.output
    new = FeatureCache(feats)
    roi = new.load(new.ids())
    assert sorted(roi) == sorted(old_roi)
    assert not np.array_equal(roi["0/1000"], old_roi["0/1000"])
    assert all(np.array_equal(roi[c], old_roi[c]) for c in roi if c != "0/1000")
    assert new.fingerprints()["0/1000"] == clip_fingerprints(read_dataset(data).clips, data)["0/1000"]
    s = summary(invoke("extract", "--config", cfg, "--data", data, "--out", feats, "--no-progress"))
    assert (s["resumed"], s["re_extracted"], s["extracted"]) == (16, 0, 0)


def test_train_refuses_a_cache_whose_clip_inputs_changed(extracted, tmp_path):
    data, cfg, feats = copies(extracted, tmp_path)
    shift_track_line(data, "1", sorted(p.name for p in (data / "tracking" / "1").iterdir())[2])
    run = tmp_path / "run"
    line = one_line_error(invoke("train", "--config", cfg, "--data", data, "--features", feats, "--out", run,
                                 "--no-progress"), "feature cache mismatch", str(feats), str(data),
                          "1 of 16 cached clips", "stvh extract")
    assert "first: 1/" in line
    assert not run.exists()  # refused before the run folder is made


def test_train_refuses_a_cache_of_another_T_naming_the_key(extracted, tmp_path):
    data, cfg, feats = extracted
    run = tmp_path / "run"
    one_line_error(invoke("train", "--config", cfg, "--data", data, "--features", feats, "--out", run,
                          "--no-progress", "data.window=[-1, 1]"),
                   str(feats), "T=4", "T=3", "data.window=[-1, 1]")
    assert not run.exists()


def test_extract_into_another_datasets_cache_is_refused(extracted, tmp_path):
    from stvh.data.synth import generate

    data, cfg, feats = copies(extracted, tmp_path)
    other = tmp_path / "other"
    generate(other, matches=2, clips_per_match=8, frames=4, size=(90, 160), progress=False, seed=4)
    origin = str(extracted[0].resolve())  # the copied cache names the data it was extracted from
    line = one_line_error(invoke("extract", "--config", cfg, "--data", other, "--out", feats, "--no-progress"),
                          "holds features of", origin, str(other.resolve()), "another --out")
    assert line.count("fingerprint") == 2
    assert len(FeatureCache(feats)) == 16 and FeatureCache(feats).meta["dataset"] == origin
    # the same dataset moved (its mtimes kept) is not another dataset: everything resumes
    moved = tmp_path / "moved"
    data.rename(moved)
    s = summary(invoke("extract", "--config", cfg, "--data", moved, "--out", feats, "--no-progress"))
    assert (s["resumed"], s["extracted"]) == (16, 0)
    assert FeatureCache(feats).meta["dataset"] == str(moved.resolve())


def test_extract_refuses_a_cache_of_another_T(extracted, tmp_path):
    data, cfg, feats = copies(extracted, tmp_path)
    other_t = _with(cfg, tmp_path, "data: {window: [-1, 1]}")
    one_line_error(invoke("extract", "--config", other_t, "--data", data, "--out", feats, "--no-progress"),
                   "frames_per_clip is [4] in the cache but [3] now", "data.window")


def _with(cfg, tmp_path, line):
    """A copy of the config file with one more section line (overriding the same section)."""
    text = cfg.read_text().replace("data: {val_fraction: 0.25}\n", "")
    out = tmp_path / "c2.yaml"
    out.write_text(text + line + "\n")
    return out


@pytest.fixture(scope="module")
def trained(extracted, tmp_path_factory):
    """A run on a copy of the extracted data and cache (the run's own data may then be edited)."""
    data, cfg, feats = extracted
    root = tmp_path_factory.mktemp("fprun")
    shutil.copytree(data, root / "data")
    shutil.copytree(feats, root / "feats")
    run = root / "run"
    summary(invoke("train", "--config", cfg, "--data", root / "data", "--features", root / "feats", "--out", run,
                   "--no-progress"))
    return root / "data", cfg, root / "feats", run


def test_run_records_data_and_cache_and_resume_refuses_other_data(trained, tmp_path):
    data, cfg, feats, run = trained
    info = json.loads((run / "run.json").read_text())
    assert info["data_fingerprint"] == data_fingerprint(read_dataset(data)) and info["data_clips"] == 16
    assert info["cache"]["path"] == str(feats.resolve()) and info["cache"]["reduction"] == "pca4"
    assert info["cache"]["frames_per_clip"] == [4] and info["cache"]["pca_sha256"].startswith("sha256:")
    other = tmp_path / "other"
    shutil.copytree(data, other)
    (other / "videos" / "0" / "annotations.txt").write_text(
        (other / "videos" / "0" / "annotations.txt").read_text().replace("l_pass", "r_pass", 1))
    before = (run / "run.json").read_text()
    one_line_error(invoke("train", "--resume", run, "--data", other, "--no-progress"),
                   f"--data {other} is not the data {run} was trained on", "fingerprint", "resume with the data")
    assert (run / "run.json").read_text() == before


def test_encode_own_data_changed_is_a_note_and_other_data_still_encodes(trained, tmp_path):
    data, cfg, feats, run = trained
    ann = data / "videos" / "1" / "annotations.txt"
    text = ann.read_text()
    try:
        first = text.split()[1]
        ann.write_text(text.replace(first, "l_set" if first != "l_set" else "r_set", 1))
        result = invoke("encode", "--run", run, "--out", tmp_path / "c.npz")
        assert result.exit_code == 0, result.output
        assert f"the data {data} changed since {run} was trained" in result.output
        one_line_error(invoke("train", "--resume", run, "--no-progress"), "changed since", "fingerprint")
    finally:
        ann.write_text(text)
    result = invoke("encode", "--run", run, "--out", tmp_path / "c2.npz")
    assert result.exit_code == 0 and "changed since" not in result.output


def test_encode_other_data_refuses_features_projected_with_another_pca(trained, tmp_path):
    """Same config, other footage: its own cache fits its own PCA, which the run's model never saw."""
    from stvh.data.synth import generate

    data, cfg, feats, run = trained
    other, other_feats = tmp_path / "other", tmp_path / "of"
    generate(other, matches=1, clips_per_match=4, frames=4, size=(90, 160), progress=False, seed=5)
    summary(invoke("extract", "--config", cfg, "--data", other, "--out", other_feats, "--no-progress"))
    one_line_error(invoke("encode", "--run", run, "--data", other, "--features", other_feats,
                          "--out", tmp_path / "c.npz"), str(other_feats), "pca_sha256", "the run's settings")
    result = invoke("encode", "--run", run, "--data", other, "--out", tmp_path / "c.npz")  # features from frames
    assert result.exit_code == 0, result.output


def test_older_cache_without_fingerprints_or_T_is_noted_and_shape_checked(tiny_synth, tmp_path):
    """Caches made before fingerprints: used with a note; their arrays' T still checked against the data."""
    from stvh.data.feature_cache import FeatureCacheWriter
    from stvh.train.config import load_config
    from stvh.train.loop import load_data

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(CONFIG)
    meta = {"backbone": "mobilenet_v3_small", "weights_hash": "random-init-seed0", "frame_size": "native",
            "roi_size": 5, "channels": 4, "reduction": "pca4"}
    ds = read_dataset(tiny_synth)
    for name, T in (("ok", 4), ("t3", 3)):
        with FeatureCacheWriter(tmp_path / name, meta) as w:
            for c in ds.clips:
                w.add(c.id, np.ones((12, T, 4, 5, 5), np.float32))  # no fingerprint, no T in meta.json
    loaded = load_data(load_config(cfg_path), tiny_synth, tmp_path / "ok")
    assert len(loaded.roi) == 16 and "records no fingerprints of its inputs for 16 clips" in loaded.notes[0]
    run = tmp_path / "run"
    one_line_error(invoke("train", "--config", cfg_path, "--data", tiny_synth, "--features", tmp_path / "t3",
                          "--out", run, "--no-progress"),
                   "12 persons x 3 frames in the cache but 12 x 4 as the data is read", "data.window")
    assert not run.exists()


def test_clips_added_after_extraction_are_named_with_the_fix(extracted, tmp_path):
    """A cache that lacks clips which have frames is stale, not a dataset with missing frames."""
    from stvh.data.feature_cache import FeatureCacheWriter
    from stvh.train.config import load_config
    from stvh.train.loop import load_data

    data, cfg, feats = copies(extracted, tmp_path)
    FeatureCacheWriter(feats, FeatureCache(feats).meta).remove(["0/1100", "1/1200"])  # as if added later
    loaded = load_data(load_config(cfg), data, feats)
    assert loaded.without_features == ["0/1100", "1/1200"]
    assert loaded.notes == [f"2 of them have frames (first: 0/1100): the cache predates them or its extraction "
                            f"stopped early; run `stvh extract --data {data} --out {feats}` to add them"]
    one_line_error(invoke("train", "--config", cfg, "--data", data, "--features", feats, "--out", tmp_path / "r",
                          "--no-progress", "data.require_features=true"),
                   "2 of 16 clips have no cached features (first: 0/1100); 2 of them have frames")
