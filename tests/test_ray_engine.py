"""`--engine ray`: the same bytes per clip as the single process, resumable, failing videos retried then named.

One local Ray instance (127.0.0.1, 2 CPUs) serves the whole module; every Ray test is skipped, saying why,
when Ray is not installed (`pip install "stvh[cluster]"`, also in the dev extra).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from stvh.cli import app
from stvh.data.feature_cache import FeatureCache, FeatureCacheWriter

runner = CliRunner()
# the shipped backbone at 90x160, PCA 8 fitted on 4 clips, a tiny model: the cheapest pipeline whose codes differ
OVERRIDES = ["model.backbone=efficientnet_lite0", "extract.pca=8", "extract.frame_size=[90, 160]", "seed=1",
             "model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.depth=2", "train.epochs=2",
             "train.lr=3e-3", "train.batch_size=4", "data.val_fraction=0.25", "filter.steps=5", "train.device=cpu"]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (the engine uses it as it is and leaves it running)."""
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "stvh[cluster]")')
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    """3 videos x 5 clips, their features by the single process, and a tiny run trained on them."""
    import torch

    from stvh.data.synth import generate
    from stvh.train.config import load_config
    from stvh.train.extract import extract_with_config
    from stvh.train.loop import fit

    root = tmp_path_factory.mktemp("ray")
    generate(root / "data", matches=3, clips_per_match=5, frames=4, size=(90, 160), progress=False, seed=5)
    cfg = load_config(None, OVERRIDES)
    # batches of 4 clips over videos of 5: batching across videos would put clips in other batches than Ray's
    local = extract_with_config(cfg, root / "data", root / "local", progress=False, pca_clips=4)
    assert local["engine"] == "local" and local["extracted"] == 15
    torch.manual_seed(0)
    fit(cfg, root / "data", root / "local", root / "run", progress=False, log=lambda *a: None)
    return {"root": root, "cfg": cfg, "data": root / "data", "local": root / "local", "run": root / "run"}


def same_bytes(a, b, ids=None) -> list[str]:
    """Clip ids whose cached arrays differ (dtype, shape or bytes) between caches ``a`` and ``b``."""
    ca, cb = FeatureCache(a), FeatureCache(b)
    ids = sorted(ids if ids is not None else ca.ids())
    la, lb = ca.load(ids), cb.load(ids)
    return [i for i in ids if la[i].dtype != lb[i].dtype or la[i].tobytes() != lb[i].tobytes()]


def test_extract_on_ray_is_bit_identical_and_resumes_by_clip(world):
    from stvh.train.extract import extract_with_config

    out = world["root"] / "ray-feats"
    r = extract_with_config(world["cfg"], world["data"], out, progress=False, pca_clips=4, engine="ray",
                            retries=0)
    assert (r["engine"], r["extracted"], r["failed_videos"]) == ("ray", 15, [])
    assert sorted(FeatureCache(out).ids()) == sorted(FeatureCache(world["local"]).ids())
    assert same_bytes(world["local"], out) == []
    assert (out / "pca.npz").read_bytes() == (world["local"] / "pca.npz").read_bytes()
    # delete one clip's features from both caches: each engine's next run extracts that clip alone, and the
    # two agree (a clip alone is a batch of 1, whose last float bits may differ from a batch of 4: docs/scale.md)
    local = world["root"] / "local-resumed"
    shutil.copytree(world["local"], local)
    for cache in (out, local):
        assert "1/1100" in FeatureCache(cache)
        FeatureCacheWriter(cache, FeatureCache(cache).meta).remove(["1/1100"])
        assert "1/1100" not in FeatureCache(cache)
    r = extract_with_config(world["cfg"], world["data"], out, progress=False, engine="ray")
    assert (r["extracted"], r["resumed"], r["cached"]) == (1, 14, 15)
    r = extract_with_config(world["cfg"], world["data"], local, progress=False)
    assert (r["extracted"], r["resumed"], r["cached"]) == (1, 14, 15)
    assert same_bytes(local, out) == []
    assert same_bytes(world["local"], out, [i for i in FeatureCache(out).ids() if i != "1/1100"]) == []


def test_a_failing_video_is_retried_then_named_while_the_others_are_cached(world):
    from stvh.train.extract import extract_with_config

    data = world["root"] / "data-bad"
    shutil.copytree(world["data"], data)  # keeps mtimes: the same clips' fingerprints
    out = world["root"] / "feats-bad"
    shutil.copytree(world["local"], out)
    FeatureCacheWriter(out, FeatureCache(out).meta).remove([f"0/{c}" for c in (1000, 1100, 1200, 1300, 1400)])
    for clip_dir in sorted((data / "videos" / "1").iterdir()):
        if clip_dir.is_dir():  # one frame per clip of video 1 becomes garbage: its clips change and fail
            frame = next(p for p in sorted(clip_dir.glob("*.jpg")) if p.stem != clip_dir.name)  # not the key
            frame.write_bytes(b"not a jpeg")  # frame, whose header the reader reads
    r = extract_with_config(world["cfg"], data, out, progress=False, engine="ray", retries=1)
    assert r["failed_videos"] == ["1"]
    assert (r["extracted"], r["re_extracted"], r["cached"]) == (5, 0, 10)  # video 0 again; video 2 resumed
    held = sorted(FeatureCache(out).ids())
    assert held == sorted(i for i in FeatureCache(world["local"]).ids() if not i.startswith("1/"))
    assert same_bytes(world["local"], out, held) == []
    rows = list(csv.DictReader(open(out / "failed.csv", encoding="utf-8")))
    assert [(row["clip"], row["kind"]) for row in rows] == [("1", "failed video")]
    assert rows[0]["message"].startswith("failed after 2 tries: ") and "unreadable frame" in rows[0]["message"]
    # from the command line: the summary, then one error line naming the video and the file, exit status 2
    res = runner.invoke(app, ["extract", "--data", str(data), "--out", str(out), "--no-progress", "--engine", "ray",
                              "--retries", "0", *OVERRIDES[:4]])
    assert res.exit_code == 2, res.output
    assert json.loads(res.stdout[res.stdout.index("{"):])["failed_videos"] == ["1"]
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: 1 video(s) failed after their retries") and f"{out / 'failed.csv'}" in last
    assert "failed after 1 try: " in (out / "failed.csv").read_text(encoding="utf-8")


def test_driver_retries_count_real_tries(ray_local, tmp_path):
    """A task that fails twice then succeeds: found with 2 retries, named after 2 tries with 1."""
    from stvh.train.ray_engine import run_tasks

    def flaky(counter: str, fails: int) -> str:
        from pathlib import Path

        with open(counter, "a") as fh:
            fh.write("x")
        if len(Path(counter).read_text()) <= fails:
            raise RuntimeError(f"try {len(Path(counter).read_text())} failed")
        return "done"

    task = ray_local.remote(num_cpus=1, max_retries=0)(flaky)
    ok = list(run_tasks(ray_local, lambda c: task.remote(c, 2), [str(tmp_path / "a")], retries=2, window=2))
    assert [(r, e, t) for _, r, e, t in ok] == [("done", None, 3)]
    bad = list(run_tasks(ray_local, lambda c: task.remote(c, 2), [str(tmp_path / "b")], retries=1, window=2))
    assert [(r, t) for _, r, _, t in bad] == [(None, 2)] and bad[0][2].endswith("try 2 failed")
    assert (tmp_path / "b").read_text() == "xx"


def codes_of(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_encode_on_ray_gives_the_same_codes(world):
    """From the run's cache, and from the frames of a copy of the data (the backbone runs in the workers)."""
    from stvh.train.encode import encode, predictions_path

    root, run = world["root"], world["run"]
    other = root / "data-other"
    shutil.copytree(world["data"], other)
    for name, data in (("own", None), ("other", other)):
        local = encode(run, root / f"{name}-local.npz", data=data, device="cpu", log=lambda *a: None)
        ray = encode(run, root / f"{name}-ray.npz", data=data, log=lambda *a: None, engine="ray", retries=0)
        assert (ray["engine"], ray["clips"], ray["failed_videos"]) == ("ray", 15, []) and local["clips"] == 15
        a, b = codes_of(root / f"{name}-local.npz"), codes_of(root / f"{name}-ray.npz")
        assert sorted(a) == sorted(b)
        for key in a:  # codes, ids, labels, filter F, meta: every array of the file
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
        pa = codes_of(predictions_path(root / f"{name}-local.npz"))
        pb = codes_of(predictions_path(root / f"{name}-ray.npz"))
        assert sorted(pa) == sorted(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa)
        assert len(np.unique(a["codes"], axis=0)) >= 4  # codes that differ between clips, not one constant row


def test_encode_cli_on_ray(world):
    out = world["root"] / "cli-codes.npz"
    res = runner.invoke(app, ["encode", "--run", str(world["run"]), "--out", str(out), "--engine", "ray",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert (summary["engine"], summary["clips"], summary["failed_videos"]) == ("ray", 15, [])


def test_without_ray_engine_ray_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for args in (["extract", "--data", str(tmp_path), "--out", str(tmp_path / "f")],
                 ["encode", "--run", str(tmp_path), "--out", str(tmp_path / "c.npz")]):
        res = runner.invoke(app, [*args, "--engine", "ray"])
        assert res.exit_code == 2
        assert res.output.strip() == 'error: --engine ray needs Ray: pip install "stvh[cluster]"'


def test_engine_flags_are_checked(tmp_path):
    res = runner.invoke(app, ["extract", "--data", str(tmp_path), "--out", str(tmp_path / "f"), "--engine", "spark"])
    assert res.exit_code == 2 and res.output.strip() == "error: --engine must be local or ray, got 'spark'"
    res = runner.invoke(app, ["extract", "--data", str(tmp_path), "--out", str(tmp_path / "f"), "--address", "auto"])
    assert res.exit_code == 2 and res.output.strip() == "error: --address needs --engine ray"


def test_an_address_where_no_head_answers_is_one_line_before_anything_is_written(tmp_path):
    pytest.importorskip("ray", reason='Ray is not installed (pip install "stvh[cluster]")')
    import socket

    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        (tmp_path / "d").mkdir()
        res = runner.invoke(app, ["extract", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "f"), "--engine",
                                  "ray", "--address", f"127.0.0.1:{port}"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith(f"error: --address 127.0.0.1:{port}: no Ray head answers there (")
    assert not (tmp_path / "f").exists()
    res = runner.invoke(app, ["encode", "--run", str(tmp_path), "--out", str(tmp_path / "c.npz"), "--engine", "ray",
                              "--address", "head:port"])
    assert res.exit_code == 2 and res.output.strip() == ("error: --address head:port: expected auto, HOST:PORT or "
                                                         "ray://HOST:PORT")
