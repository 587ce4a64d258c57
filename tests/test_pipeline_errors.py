"""What a user gets wrong on the pipeline commands: one line, exit 2, the path or key named, nothing lost."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from stvh import __version__
from stvh.cli import app

runner = CliRunner()
TINY = ["model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.depth=2", "train.epochs=2",
        "train.batch_size=4", "train.lr=3e-3", "data.val_fraction=0.25", "filter.steps=5", "model.shared_bits=0",
        "loss.layer_weights=[0.5,1.0]", "model.backbone=none"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tiny_synth, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    result = invoke("train", "--data", tiny_synth, "--out", run, "--no-progress", *TINY)
    assert result.exit_code == 0, result.output
    return run


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"stvh {__version__}"


def test_encode_never_writes_over_its_inputs(trained, tiny_synth, tmp_path):
    before = (trained / "best.pt").read_bytes()
    one_line_error(invoke("encode", "--run", trained, "--out", trained / "best.pt"), "best.pt", "input")
    assert (trained / "best.pt").read_bytes() == before  # the checkpoint survives
    one_line_error(invoke("encode", "--run", trained, "--out", tiny_synth / "codes.npz"), "dataset")
    (tmp_path / "adir").mkdir()
    one_line_error(invoke("encode", "--run", trained, "--out", tmp_path / "adir"), "is a directory")
    assert invoke("encode", "--run", trained, "--out", tmp_path / "c.npz").exit_code == 0
    one_line_error(invoke("encode", "--run", trained, "--out", tmp_path / "c.npz"), "exists", "--overwrite")
    assert invoke("encode", "--run", trained, "--out", tmp_path / "c.npz", "--overwrite").exit_code == 0


def test_train_output_folder_checks(trained, tiny_synth, tmp_path):
    one_line_error(invoke("train", "--data", tiny_synth, "--out", trained, *TINY), "not empty", "--overwrite")
    (tmp_path / "file").write_text("x")
    one_line_error(invoke("train", "--data", tiny_synth, "--out", tmp_path / "file", *TINY), "is a file")
    one_line_error(invoke("train", "--data", tiny_synth, "--out", tiny_synth / "run", *TINY), "inside input folder")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    one_line_error(invoke("train", "--data", tiny_synth, "--out", tmp_path / "other", "--overwrite", *TINY),
                   "not a run folder")
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tiny_synth, tmp_path, monkeypatch):
    from stvh.train import loop

    real = loop._train_epoch

    def interrupted(*args, **kwargs):
        import inspect

        if inspect.signature(real).bind(*args, **kwargs).arguments["epoch"] == 2:  # the 1-based epoch number
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", interrupted)
    run = tmp_path / "run"
    result = invoke("train", "--data", tiny_synth, "--out", run, "--no-progress", *TINY)
    assert result.exit_code == 130
    assert "interrupted during epoch 2/2; 1 finished epoch(s) saved" in result.output
    assert f"stvh train --resume {run}" in result.output
    monkeypatch.setattr(loop, "_train_epoch", real)
    assert invoke("train", "--resume", run, "--no-progress").exit_code == 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_mot_without_train_split_says_how_to_make_one(tmp_path, tiny_synth):
    from stvh.data.mot_export import export_mot

    export_mot(tiny_synth, tmp_path / "mot", media="frames", splits=False)
    line = one_line_error(invoke("train", "--data", tmp_path / "mot", "--out", tmp_path / "run", *TINY),
                          "no training clips", "splits.json")
    assert "all: 16" in line


def test_encode_other_data_reports_unknown_labels(trained, tiny_synth, tmp_path):
    from stvh.data.mot_export import export_mot
    from stvh.index.codes import CodeSet

    mot = tmp_path / "mot"
    export_mot(tiny_synth, mot, media="frames")
    text = (mot / "clips.csv").read_text().replace(",r_set,", ",R_Set,").splitlines()  # matched ignoring case
    first = text[1].split(",")
    text[1] = ",".join(first[:3] + ["juggling"] + first[4:])
    (mot / "clips.csv").write_text("\n".join(text) + "\n")
    result = invoke("encode", "--run", trained, "--data", mot, "--out", tmp_path / "c.npz")
    assert result.exit_code == 0, result.output
    assert "1 clips have activities the model does not know (juggling: 1); encoded as unlabeled" in result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["unknown_labels"] == {"juggling": 1}
    cs = CodeSet.load(tmp_path / "c.npz")
    names = cs.meta["activities"]
    assert cs.activity[0] == -1 and first[3] != "juggling"
    assert sorted(names[a] for a in cs.activity[1:]) == sorted(r.split(",")[3].lower() for r in text[2:])


def test_skip_bad_through_train_encode_eval(tiny_synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    ann = data / "videos" / "0" / "annotations.txt"
    lines = ann.read_text().splitlines()
    lines.insert(1, "999.jpg r_set 1 2 3")  # malformed: wrong number of fields
    ann.write_text("\n".join(lines) + "\n")
    one_line_error(invoke("train", "--data", data, "--out", tmp_path / "r0", *TINY), "annotations.txt:2")
    result = invoke("train", "--data", data, "--out", tmp_path / "run", "--skip-bad", "--no-progress", *TINY)
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad input(s)" in result.output
    rows = list(csv.DictReader((tmp_path / "run" / "skipped.csv").open()))
    assert len(rows) == 1 and rows[0]["file"].endswith("annotations.txt") and rows[0]["line"] == "2"
    assert rows[0]["kind"] == "malformed line"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["skipped"] == 1
    result = invoke("encode", "--run", tmp_path / "run", "--out", tmp_path / "c.npz", "--skip-bad")
    assert result.exit_code == 0 and (tmp_path / "c.skipped.csv").read_text().count("annotations.txt") == 1
    result = invoke("eval", "--run", tmp_path / "run", "--skip-bad")
    assert result.exit_code == 0 and (tmp_path / "run" / "codes.skipped.csv").is_file()


def test_non_finite_features_stop_training_with_a_message(tiny_synth, tmp_path):
    from stvh.data.feature_cache import FeatureCacheWriter
    from stvh.data.formats import read_dataset

    ds = read_dataset(tiny_synth)
    meta = {"backbone": "mobilenet_v3_small", "weights_hash": "random-init-seed0", "frame_size": "native",
            "roi_size": 5, "channels": 4, "reduction": "none"}
    rng = np.random.default_rng(0)
    from stvh.data.fingerprint import clip_fingerprints
    fps = clip_fingerprints(ds.clips, tiny_synth)  # a cache as `stvh extract` makes it: fingerprints recorded
    with FeatureCacheWriter(tmp_path / "f", meta) as w:
        for c in ds.clips:
            roi = rng.normal(size=(12, c.num_frames, 4, 5, 5)).astype(np.float32)
            roi[0, 0, 0, 0, 0] = np.nan
            w.add(c.id, roi, fps[c.id])
    result = invoke("train", "--data", tiny_synth, "--features", tmp_path / "f", "--out", tmp_path / "run",
                    "--no-progress", *TINY[:-1], "model.backbone=mobilenet_v3_small", "extract.frame_size=null",
                    "extract.pca=null")
    one_line_error(result, "training loss is nan at epoch 1, batch 1", "non-finite")


def test_extract_skip_bad_skips_an_undecodable_frame(tiny_synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    frame = sorted((data / "videos" / "1").glob("*/*.jpg"))[-1]  # not the first frame: the reader reads that one
    frame.write_bytes(b"\xff\xd8 not really a jpeg")
    args = ["extract", "--data", data, "--backbone", "mobilenet_v3_small", "--no-progress"]
    one_line_error(invoke(*args, "--out", tmp_path / "f0"), frame.name)
    result = invoke(*args, "--out", tmp_path / "f", "--skip-bad")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert summary["skipped"] == 1 and summary["cached"] == 15
    rows = list(csv.DictReader((tmp_path / "f" / "skipped.csv").open()))
    assert len(rows) == 1 and rows[0]["file"].endswith(frame.name) and rows[0]["clip"] == f"1/{frame.parent.name}"


def test_extract_ctrl_c_keeps_finished_clips(tiny_synth, tmp_path, monkeypatch):
    from stvh.train import extract as ex

    real, calls = ex.RoIExtractor.__call__, []

    def interrupted(self, clips, frames=None):
        calls.append(len(clips))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, clips, frames)

    monkeypatch.setattr(ex.RoIExtractor, "__call__", interrupted)
    out = tmp_path / "f"
    # raw channels: with PCA, tiny_synth's clips all make the PCA sample and are written after its fit
    result = invoke("extract", "--data", tiny_synth, "--backbone", "mobilenet_v3_small", "--out", out,
                    "--no-progress", "extract.pca=null")
    assert result.exit_code == 130 and "4 clips are cached" in result.output and "run the same command again" in \
        result.output
    monkeypatch.setattr(ex.RoIExtractor, "__call__", real)
    result = invoke("extract", "--data", tiny_synth, "--backbone", "mobilenet_v3_small", "--out", out,
                    "--no-progress", "extract.pca=null")
    assert result.exit_code == 0 and json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])[
        "resumed"] == 4


def test_report_out_checks(trained, tmp_path):
    assert invoke("eval", "--run", trained).exit_code == 0
    one_line_error(invoke("report", "--run", trained, "--out", trained / "best.pt"), "input")
    assert invoke("report", "--run", trained, "--out", tmp_path / "r.html").exit_code == 0
    one_line_error(invoke("report", "--run", trained, "--out", tmp_path / "r.html"), "--overwrite")
    assert invoke("report", "--run", trained).exit_code == 0 and invoke("report", "--run", trained).exit_code == 0


def test_stvh_trains_with_a_config_that_has_mstvh_layer_weights(tiny_synth, tmp_path):
    """configs/synthetic.yaml sets loss.layer_weights for its 3 depths; STVH has one head and ignores them."""
    from stvh.train.config import load_config
    from stvh.train.loop import loss_config

    cfg = load_config(None, ["model.name=stvh", "loss.layer_weights=[0.1, 0.4, 1.0]"])
    assert loss_config(cfg).layer_weights is None
    assert loss_config(load_config(None, ["loss.layer_weights=[0.1, 0.4, 1.0]"])).layer_weights == (0.1, 0.4, 1.0)
    result = invoke("train", "--data", tiny_synth, "--out", tmp_path / "run", "--no-progress", *TINY,
                    "model.name=stvh", "model.depth=3", "loss.layer_weights=[0.1, 0.4, 1.0]")
    assert result.exit_code == 0, result.output


# ---- one writer, nothing lost, one line for every failure (issue 14) ----

GATED_TRAIN = """
import pathlib, sys, time
from stvh.train import loop
from stvh.cli import app
real, gate = loop._train_epoch, pathlib.Path(sys.argv[1])
def gated(*args, **kwargs):  # the first writer waits inside its first epoch until the test opens the gate
    while not gate.exists():
        time.sleep(0.05)
    return real(*args, **kwargs)
loop._train_epoch = gated
app(sys.argv[2:])
"""


def test_two_trains_on_one_out(tiny_synth, tmp_path):
    import subprocess
    import sys
    import time

    from stvh.locks import holder

    run, gate = tmp_path / "run", tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-c", GATED_TRAIN, str(gate), "train", "--data", str(tiny_synth),
                              "--out", str(run), "--no-progress", *TINY], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        while holder(run) is None:  # the first writer holds --out (it started, nothing written yet)
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.05)
        for extra in ((), ("--overwrite",), ("model.bits=32",)):
            line = one_line_error(invoke("train", "--data", tiny_synth, "--out", run, "--no-progress", *TINY,
                                         *extra), f"{run} is being written by pid {first.pid} (stvh train, started")
            assert line.endswith("wait for it or choose another --out")
        one_line_error(invoke("train", "--resume", run), f"pid {first.pid}")
    finally:
        gate.touch()
        out, _ = first.communicate()
    assert first.returncode == 0, out
    epochs = [r["epoch"] for r in csv.DictReader((run / "metrics.csv").open())]
    assert epochs == ["1", "2"]  # one writer's epochs, once each
    import torch
    assert torch.load(run / "last.pt", weights_only=False)["config"]["model"]["bits"] == 16


def test_resume_refuses_a_model_override_and_a_broken_run_json(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "last.pt").read_bytes()
    one_line_error(invoke("train", "--resume", run, "model.bits=32"),
                   "--resume keeps the run's model; model.bits=32 differs from the run's 16 (start a new --out "
                   "instead)")
    one_line_error(invoke("train", "--resume", run, "model.bits=32", "model.depth=3", "loss.layer_weights=[1,1,1]"),
                   "model.bits=32 differs", "model.depth=3 differs from the run's 2")
    assert (run / "last.pt").read_bytes() == before
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "data"}))
    one_line_error(invoke("train", "--resume", run), f"{run / 'run.json'} lacks key(s) data")
    (run / "run.json").write_text('{\n  "data": ,\n}')
    one_line_error(invoke("train", "--resume", run), f"{run / 'run.json'}:2: corrupt run file, not valid JSON")
    one_line_error(invoke("encode", "--run", run, "--out", tmp_path / "c.npz"), f"{run / 'run.json'}:2")


def test_checkpoint_of_another_model_is_named(trained, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    state = torch.load(run / "best.pt", weights_only=False)
    state["config"]["model"]["bits"] = 32  # as if best.pt came from a 32-bit run
    torch.save(state, run / "best.pt")
    one_line_error(invoke("encode", "--run", run, "--out", tmp_path / "c.npz"),
                   f"checkpoint {run / 'best.pt'} holds another model than its run: model.bits is 32 (the run's "
                   "config.yaml: 16)")
    np.savez(run / "filter.npz", filter=np.zeros((64, 64), np.float32))  # F of a 64-bit run
    one_line_error(invoke("encode", "--run", run, "--checkpoint", "last", "--out", tmp_path / "c.npz"),
                   f"{run / 'filter.npz'} holds a 64x64 filter matrix but the run's model has 16-bit codes")


def test_eval_of_other_data_never_replaces_the_runs_codes(trained, tiny_synth, tmp_path):
    assert invoke("eval", "--run", trained).exit_code == 0
    codes, metrics = (trained / "codes.npz").read_bytes(), (trained / "metrics.json").read_bytes()
    other = tmp_path / "other"
    shutil.copytree(tiny_synth, other)
    splits = json.loads((other / "splits.json").read_text())
    (other / "splits.json").write_text(json.dumps({"train": splits["train"] + splits["test"], "test": []}))
    one_line_error(invoke("eval", "--run", trained, "--data", other),
                   f"{other}: evaluation needs clips in both the train and the test split (here: 16 train/val, 0 test)")
    assert not (trained / "eval-other").exists()  # refused before anything was written
    one_line_error(invoke("eval", "--run", trained, "--data", tiny_synth, "--features", tmp_path, "--out", trained),
                   "is the run folder")
    (other / "splits.json").write_text(json.dumps(splits))
    result = invoke("eval", "--run", trained, "--data", other)
    assert result.exit_code == 0, result.output
    assert f"metrics written to {trained / 'eval-other' / 'metrics.json'}" in result.output
    assert (trained / "eval-other" / "codes.npz").is_file()
    assert (trained / "codes.npz").read_bytes() == codes and (trained / "metrics.json").read_bytes() == metrics
    assert invoke("eval", "--run", trained).exit_code == 0  # the run still evaluates


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "gpu0"])
def test_device_is_checked_up_front(trained, tiny_synth, tmp_path, device):
    from stvh.train.config import devices_here

    if device in devices_here():
        pytest.skip(f"{device} exists here")
    want = "not a device; use auto, cpu, cuda, cuda:N or mps" if device == "gpu0" else \
        "no CUDA device here; use --device cpu" if "cuda" not in devices_here() else "CUDA device(s)"
    for args in (("encode", "--run", trained, "--out", tmp_path / "c.npz"),
                 ("extract", "--data", tiny_synth, "--out", tmp_path / "f"),
                 ("serve", "--run", trained, "--index", tmp_path / "i.npz")):
        one_line_error(invoke(*args, "--device", device), f"--device {device}: {want}")
    assert not (tmp_path / "c.npz").exists() and not (tmp_path / "f").exists()


def test_query_and_codes_files_are_named_by_their_flag(trained, tmp_path):
    assert invoke("eval", "--run", trained).exit_code == 0
    idx = tmp_path / "i.npz"
    assert invoke("index", "build", "--codes", trained / "codes.npz", "--out", idx).exit_code == 0
    np.save(tmp_path / "q.npy", np.full((2, 16), 0.25))
    line = one_line_error(invoke("search", "--index", idx, "--codes-file", tmp_path / "q.npy"),
                          f"--codes-file {tmp_path / 'q.npy'} holds float64 values (e.g. 0.25); it must hold ±1 or "
                          "0/1 bits, or packed uint8 codes")
    np.save(tmp_path / "b.npy", np.tile([0.0, 1.0], (2, 8)))  # 0/1 floats are bits
    assert invoke("search", "--index", idx, "--codes-file", tmp_path / "b.npy").exit_code == 0
    (tmp_path / "t.txt").write_text("not codes\n")
    for result in (invoke("index", "build", "--codes", tmp_path / "t.txt", "--out", tmp_path / "j.npz"),
                   invoke("search", "--index", tmp_path / "t.txt", "--clip", "0/1000")):
        line = one_line_error(result, "(an .npz archive); this file is not one (it looks like text)")
        assert "allow_pickle" not in line and "strict" not in line
