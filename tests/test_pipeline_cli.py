"""The pipeline from the command line: extract -> train -> encode -> eval -> report -> index -> search."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from stvh.cli import app
from stvh.data.feature_cache import FeatureCache

runner = CliRunner()
TINY = ["model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.depth=2", "train.epochs=2",
        "train.batch_size=4", "train.lr=3e-3", "data.val_fraction=0.25", "filter.steps=20"]


def ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_cli_pipeline_on_cached_features(tiny_synth, tmp_path):
    feats, run = tmp_path / "feats", tmp_path / "run"
    out = ok(["extract", "--data", tiny_synth, "--backbone", "mobilenet_v3_small", "--out", feats, "--no-progress",
              "--pca", 8])
    summary = json.loads(out[out.index("{"):])
    assert summary["clips"] == 16 and summary["channels"] == 8
    cache = FeatureCache(feats)
    assert len(cache) == 16 and cache.meta["reduction"] == "pca8"
    roi = cache[cache.ids()[0]]
    assert roi.shape == (12, 4, 8, 5, 5)
    # a second run resumes: nothing left to extract
    out = ok(["extract", "--data", tiny_synth, "--backbone", "mobilenet_v3_small", "--out", feats, "--no-progress",
              "--pca", 8])
    assert json.loads(out[out.index("{"):])["extracted"] == 0
    # another backbone into the same cache is refused with one line
    bad = runner.invoke(app, ["extract", "--data", str(tiny_synth), "--backbone", "resnet18", "--out", str(feats),
                              "--no-progress", "--pca", "8"])
    assert bad.exit_code == 2 and "backbone" in bad.output and "mismatch" in bad.output

    ok(["train", "--data", tiny_synth, "--features", feats, "--out", run, "--no-progress",
        "model.backbone=mobilenet_v3_small", "extract.pca=8", *TINY])
    assert (run / "best.pt").exists() and (run / "metrics.csv").exists() and (run / "config.yaml").exists()
    out = ok(["eval", "--run", run, "--json"])
    m = json.loads(out)
    for key in ("mca", "mpca", "action_acc", "map@10/activity/K16/depth2", "map@10/visual/K16/depth1",
                "map@10/visual/K16/depth1/derived", "map@50/activity/K16/depth1/byk", "precision@5/visual/K16/depth2"):
        assert key in m and 0.0 <= m[key] <= 1.0, key
    ok(["report", "--run", run])
    assert (run / "report.html").stat().st_size > 10_000

    idx = tmp_path / "index.npz"
    ok(["index", "build", "--codes", run / "codes.npz", "--out", idx, "--mode", "compact"])
    out = ok(["search", "--index", idx, "--clip", "0/1000", "--focus", "1", "-k", "3", "--json"])
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == [1, 2, 3] and all(r["clip"] != "0/1000" for r in rows)
    assert [r["distance"] for r in rows] == sorted(r["distance"] for r in rows)


def test_train_resume_and_errors(tiny_synth, tmp_path):
    run = tmp_path / "run"
    ok(["train", "--data", tiny_synth, "--out", run, "--no-progress", "model.backbone=none", *TINY])
    out = ok(["train", "--resume", run, "--no-progress"])  # already finished: nothing left to do
    assert json.loads(out[out.index("{"):])["epochs_run"] == 0
    bad = runner.invoke(app, ["train", "--data", str(tiny_synth), "--out", str(tmp_path / "r2"), "model.bitz=3"])
    assert bad.exit_code == 2 and "unknown config key 'model.bitz'" in bad.output
    bad = runner.invoke(app, ["train", "--data", str(tiny_synth), "--out", str(tmp_path / "r3"),
                              "model.backbone=resnet18", *TINY[:1]])
    assert bad.exit_code == 2 and "--features" in bad.output
    (run / "best.pt").write_bytes(b"garbage")
    bad = runner.invoke(app, ["encode", "--run", str(run), "--out", str(tmp_path / "c.npz")])
    assert bad.exit_code == 2 and "best.pt is corrupt" in bad.output


def test_extract_real_volleyball_frames(volleyball_sample, tmp_path):
    """The 9 clips of the real sample that have frames (skipped when the sample is absent)."""
    out = ok(["extract", "--data", volleyball_sample, "--backbone", "mobilenet_v3_small", "--out", tmp_path / "f",
              "--no-progress", "--frame-size", "360x640", "extract.pca=null"])  # raw channels, not the default PCA
    summary = json.loads(out[out.index("{"):])
    assert summary["cached"] == 9 and summary["channels"] == 576
    assert summary["no_frames"] == summary["clips"] - 9 > 0  # said, not silently dropped
    assert "9 clips cached" in out and "have no frames" in out
    cache = FeatureCache(tmp_path / "f")
    roi = cache["7/38025"]
    assert roi.shape == (12, 10, 576, 5, 5) and np.isfinite(roi.astype(np.float32)).all()
    assert np.abs(roi[:11]).sum() > 0 and np.abs(roi[11]).sum() == 0  # 11 real players, one padded slot


def test_torchrun_two_processes_on_cpu(tiny_synth, tmp_path):
    """DistributedDataParallel with the Gloo backend: two CPU processes train one run."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        import pytest
        pytest.skip("torchrun not found")
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "stvh.cli", "train", "--data", str(tiny_synth),
                           "--out", str(run), "--no-progress", "model.backbone=none", *TINY],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count('"epochs_run"') == 1  # only rank 0 reports
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and (run / "best.pt").exists()


def test_demo_end_to_end_on_a_tiny_dataset(tmp_path):
    """`stvh demo` with overrides that shrink every stage (the full demo takes minutes)."""
    out = ok(["demo", "--out", tmp_path / "demo", "--no-progress",
              "synth.matches=2", "synth.clips_per_match=8", "synth.frames=4", "synth.size=[90, 160]",
              "model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.shared_bits=8", "train.epochs=1",
              "filter.steps=10"])
    for stage in range(1, 8):
        assert f"[{stage}/7]" in out
    assert "activity mAP@10" in out and "focus 1 (visual)" in out and "focus 3 (activity)" in out
    assert "rank  clip" in out
    headline = json.loads(out[out.rindex("{"):])
    assert 0 <= headline["activity_map@10_deepest"] <= 1 and 0 <= headline["visual_map@10_shallowest"] <= 1
    m = json.loads((tmp_path / "demo" / "run" / "metrics.json").read_text())
    assert headline["activity_map@10_deepest"] == m["map@10/activity/K16/depth3"]
    assert headline["activity_map@10_derived"] == m["map@10/activity/K16/depth2/derived"]  # just below the deepest
    assert headline["visual_map@10_shallowest_derived"] == m["map@10/visual/K16/depth1/derived"]
    assert (tmp_path / "demo" / "run" / "report.html").exists() and (tmp_path / "demo" / "index.npz").exists()
