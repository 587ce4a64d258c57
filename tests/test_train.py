"""Training: config, partition, lr schedule, resume-after-kill equivalence, checkpoints, encode, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stvh.data.formats import read_dataset
from stvh.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stvh.train.config import ConfigError, load_config
from stvh.train.loop import fit
from stvh.train.schedule import Schedule
from stvh.train.tensors import clips_to_tensors, partition

TINY = ["model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.depth=2", "model.backbone=none",
        "train.epochs=3", "train.batch_size=4", "train.lr=3e-3", "data.val_fraction=0.25"]


def test_config_defaults_overrides_and_errors(tmp_path):
    cfg = load_config(None, ["model.bits=64", "train.lr=1e-4", "train.lr_steps=[[11, 5e-6], [21, 1e-6]]"])
    assert cfg["model"]["bits"] == 64 and cfg["train"]["lr"] == pytest.approx(1e-4)
    assert cfg["train"]["lr_steps"] == [[11, 5e-6], [21, 1e-6]] and cfg["model"]["name"] == "mstvh"
    with pytest.raises(ConfigError, match="unknown config key 'model.bitz'"):
        load_config(None, ["model.bitz=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["model.bits"])
    (tmp_path / "c.yaml").write_text("model: {bits: 32}\ntrain: {lr: 1e-5}\n")
    cfg = load_config(tmp_path / "c.yaml", ["model.depth=4"])
    assert (cfg["model"]["bits"], cfg["model"]["depth"], cfg["train"]["lr"]) == (32, 4, 1e-5)
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_paper_configs_load():
    for name in ("volleyball", "cad", "caed"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg["train"]["lr"] == pytest.approx(1e-5) and cfg["train"]["epochs"] == 60
        assert cfg["model"]["bits"] == 128 and cfg["model"]["depth"] == (3 if name == "volleyball" else 4)
    assert load_config("configs/cad.yaml")["data"]["reader"] == {"merge_moving": True}


def test_volleyball_lr_schedule():
    s = Schedule(1e-5, [[11, 5e-6], [21, 1e-6]], epochs=25, batches_per_epoch=7)
    lrs = []
    for epoch in range(1, 26):
        lrs.append(s.lr)  # epoch runs with s.lr
        assert s.after_epoch(epoch, score=float(epoch)) == (epoch == 25)
    assert lrs[9] == pytest.approx(1e-5) and lrs[10] == pytest.approx(5e-6)  # epochs 10 and 11
    assert lrs[19] == pytest.approx(5e-6) and lrs[20] == pytest.approx(1e-6)
    assert s.epochs == 25 and s.finished


def test_schedule_scaled_to_a_number_of_steps():
    # 500 steps at 11 batches an epoch: ceil(500 / 11) = 46 epochs; lr step of epoch 19 (of 25) at 1 + round(18 * 46 / 25)
    s = Schedule(1e-3, [[19, 3e-4]], epochs=25, batches_per_epoch=11, steps=500)
    assert s.epochs == 46 and s.stages == [(1, 1e-3), (34, 3e-4)] and 1 + round(18 * 46 / 25) == 34
    lrs = []
    for epoch in range(1, 47):
        lrs.append(s.lr)
        s.after_epoch(epoch, 0.5 + epoch)
    assert lrs[32] == 1e-3 and lrs[33] == 3e-4 and s.finished
    assert Schedule(1e-3, [], epochs=25, batches_per_epoch=1, steps=600).epochs == 50  # at most twice train.epochs
    assert Schedule(1e-3, [], epochs=25, batches_per_epoch=27, steps=400).epochs == 15  # the demo: ceil(400 / 27)


def test_step_budget_per_video():
    from stvh.train.schedule import step_budget

    assert step_budget(400, None, 55) == 400 and step_budget(None, None, 55) is None  # off: train.steps as given
    assert step_budget(400, 20, 6) == 400          # the demo's 6 videos: 120 < 400
    assert step_budget(400, 20, 20) == 400         # 20 videos: 400, unchanged
    assert step_budget(400, 20, 55) == 1100        # 55 videos: 20 x 55
    assert step_budget(None, 20, 55) == 1100 and step_budget(None, 20, 0) == 20
    # 55 videos of about 770 training clips, batch 16: 49 batches an epoch -> ceil(1100 / 49) = 23 epochs
    assert Schedule(1e-3, [], epochs=25, batches_per_epoch=49, steps=step_budget(400, 20, 55)).epochs == 23


def test_schedule_patience_starts_the_next_stage_then_stops():
    s = Schedule(1.0, [[10, 0.1]], epochs=20, batches_per_epoch=1, patience=3)
    scores = [0.1, 0.5, 0.6, 0.6, 0.6 + 5e-5, 0.6]  # no gain > 1e-4 after epoch 3
    seen = []
    for epoch, score in enumerate(scores, start=1):
        seen.append(s.lr)
        done = s.after_epoch(epoch, score)
    assert seen == [1.0] * 6 and s.lr == 0.1 and s.stage_start == 7 and not done  # 3 stalled epochs: stage 2 early
    # in the last stage: counted from the stage's start (epoch 7), not from the old best
    assert [s.after_epoch(e, 0.6) for e in (7, 8)] == [False, False]
    assert s.after_epoch(9, 0.6) and s.stopped_at == 9 and s.finished
    s2 = Schedule(1.0, [[10, 0.1]], epochs=20, batches_per_epoch=1, patience=3)
    for epoch, score in enumerate([0.1, 0.5, 0.6, 0.6, 0.6, 0.7, 0.7], start=1):
        s2.after_epoch(epoch, score)
    assert s2.stage == 0 and s2.best_epoch == 6  # a gain at epoch 6 resets the count
    s3 = Schedule(1.0, [[10, 0.1]], epochs=20, batches_per_epoch=1, patience=3)
    s3.load_state_dict(s.state_dict(), epochs_done=9)
    assert s3.finished and s3.lr == 0.1
    s4 = Schedule(1.0, [[10, 0.1]], epochs=20, batches_per_epoch=1, patience=3)
    s4.load_state_dict(None, epochs_done=12)  # a checkpoint of an older run: the nominal stage
    assert s4.lr == 0.1 and not s4.finished


def test_early_stop_is_finished_and_resume_trains_no_further(tiny_synth, tmp_path, monkeypatch):
    import stvh.train.loop as loop

    monkeypatch.setattr(loop, "validate", lambda *a, **k: {"val_map@10": 0.5, "val_mca": 0.5})  # a flat score
    cfg = load_config(None, TINY + ["train.epochs=10", "train.patience=2", "train.select=val_map@10"])
    out = tmp_path / "run"
    result = fit(cfg, tiny_synth, None, out, progress=False)
    state = load_checkpoint(out / "last.pt")
    # epoch 1 sets the best; epochs 2 and 3 gain nothing: with no lr_steps stage left, training stops after 3
    assert result["epochs_run"] == 3 and state["epoch"] == 3 and state["finished"] and (out / "filter.npz").exists()
    again = fit(cfg, tiny_synth, None, out, progress=False, resume=True)
    assert again["epochs_run"] == 0 and load_checkpoint(out / "last.pt")["epoch"] == 3
    assert len((out / "metrics.csv").read_text().splitlines()) == 4


def test_partition(tiny_synth):
    clips = read_dataset(tiny_synth).clips
    parts = partition(clips, 0.25, seed=0)
    assert {c.split for c in parts["test"]} == {"test"}
    assert not {c.id for c in parts["val"]} & {c.id for c in parts["train"]}
    assert len(parts["train"]) + len(parts["val"]) == sum(c.split == "train" for c in clips)
    assert {c.group for c in parts["val"]} <= {c.group for c in parts["train"]}
    again = partition(list(reversed(clips)), 0.25, seed=0)
    assert sorted(c.id for c in again["val"]) == sorted(c.id for c in parts["val"])
    t = clips_to_tensors(parts["train"])
    assert t.boxes.shape[1:] == (4, 12, 4) and t.mask.dtype == torch.bool and len(t) == len(parts["train"])
    with pytest.raises(ValueError, match="no clips"):
        clips_to_tensors([])


def test_resume_after_kill_gives_identical_weights(tiny_synth, tmp_path):
    cfg = load_config(None, TINY)
    fit(cfg, tiny_synth, None, tmp_path / "full", progress=False)
    fit(cfg, tiny_synth, None, tmp_path / "killed", progress=False, stop_after=1)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1  # epochs count from 1
    fit(cfg, tiny_synth, None, tmp_path / "killed", progress=False, resume=True)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and 1 <= a["best"]["epoch"] <= 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rows_a = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    rows_b = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 4
    strip = lambda rows: [",".join(r.split(",")[:2] + r.split(",")[3:]) for r in rows]  # drop "seconds"
    assert strip(rows_a) == strip(rows_b)
    assert [r.split(",")[0] for r in rows_a[1:]] == ["1", "2", "3"]  # metrics.csv counts epochs from 1
    with pytest.raises(FileExistsError, match="--resume"):
        fit(cfg, tiny_synth, None, tmp_path / "full", progress=False)
    info = json.loads((tmp_path / "full" / "run.json").read_text())
    assert info["seed"] == 0 and len(info["activities"]) == 8


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt is corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "other.pt", {"weights": 1})
    with pytest.raises(CheckpointError, match="not a stvh checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "ok.pt", {"model": {}, "config": {}})
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "ok.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "ok.pt")


def test_same_seed_same_codes(tiny_synth, tmp_path):
    from stvh.index.codes import CodeSet
    from stvh.train.encode import encode

    cfg = load_config(None, TINY + ["train.epochs=1"])
    for name in ("a", "b"):
        fit(cfg, tiny_synth, None, tmp_path / name, progress=False)
        encode(tmp_path / name, tmp_path / name / "codes.npz", device="cpu")
    a, b = CodeSet.load(tmp_path / "a" / "codes.npz"), CodeSet.load(tmp_path / "b" / "codes.npz")
    assert np.array_equal(a.codes, b.codes) and a.depth == 2 and a.bits == 16
    assert a.filter is not None and a.filter.shape == (16, 16)


def test_free_form_sections_take_several_overrides(tmp_path):
    cfg = load_config(None, ["data.reader.videos=[4, 7]", "data.reader.use_tracks=false", "synth.matches=2"])
    assert cfg["data"]["reader"] == {"videos": [4, 7], "use_tracks": False} and cfg["synth"] == {"matches": 2}
    (tmp_path / "c.yaml").write_text("data: {reader: {merge_moving: true}}\n")
    cfg = load_config(tmp_path / "c.yaml", ["data.reader.n_max=13"])
    assert cfg["data"]["reader"] == {"merge_moving": True, "n_max": 13}


def test_val_both_of_a_one_code_model_is_its_activity_map(tiny_synth, tmp_path):
    """STVH's single code is its activity code: visual focus must not steer its checkpoint selection."""
    import csv

    cfg = load_config(None, TINY + ["train.epochs=2", "model.name=stvh", "train.select=val_both"])
    fit(cfg, tiny_synth, None, tmp_path / "run", progress=False)
    for row in csv.DictReader((tmp_path / "run" / "metrics.csv").open()):
        assert float(row["score"]) == float(row["val_both"]) == float(row["val_map@10"])
        assert row["val_visual@10"] != ""  # still recorded, not scored


def test_recipe_options_train_and_the_joint_filter_is_the_runs_f(tiny_synth, tmp_path):
    import csv

    cfg = load_config(None, TINY + ["train.epochs=2", "loss.filter=1", "train.select=val_both", "model.pooling=sides",
                                    "model.tracks=stable", "model.geometry_units=body", "train.augment.flip=0.5",
                                    "train.augment.jitter=0.05", "train.augment.pan=0.02", "train.augment.drop=0.1"])
    summary = fit(cfg, tiny_synth, None, tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2 and "loss_filter" in rows[0]
    for row in rows:  # val_both = mean of activity, visual and derived visual mAP@10 on the validation part
        parts = [float(row[k]) for k in ("val_map@10", "val_visual@10", "val_visual_derived@10")]
        assert float(row["score"]) == pytest.approx(sum(parts) / 3)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    scores = [float(r["score"]) for r in rows]
    assert summary["best_epoch"] == max(i + 1 for i, s in enumerate(scores) if s == max(scores))  # ties: later
    with np.load(tmp_path / "run" / "filter.npz") as z:  # the F trained with the model, not a refit
        assert np.array_equal(z["filter"], best["model"]["filter.weight"].numpy())
