"""benchmarks/volleyball_sample.py: its recipe, per-depth figures, aggregation over seeds and visual baselines.

None of this needs the real sample (the benchmark itself skips when it is absent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vs():
    path = ROOT / "benchmarks" / "volleyball_sample.py"
    spec = importlib.util.spec_from_file_location("bench_volleyball_sample", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_absent_sample_is_a_skip_with_status_0(vs, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert vs.main(["--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("skip: the Volleyball sample is not available")
    assert not out.exists()


def test_default_seeds_are_0_1_2_and_the_recipe_is_the_shipped_one(vs):
    from stvh.train.config import resolve_config

    args = vs.parse_args([])
    assert args.seeds == [0, 1, 2] and args.config is None and args.epochs is None
    shipped, _ = resolve_config(None, [])
    cfg = vs.make_config(args, "mstvh", 1)
    assert cfg["seed"] == 1 and cfg["model"]["backbone"] == "none" and cfg["train"]["device"] == "cpu"
    assert cfg["data"]["reader"] == {"videos": [4, 7, 10], "use_tracks": False}  # 39 and 41: 2 clips, no tracks
    # every other key of the model, loss and train sections is the shipped default's
    for section, changed in (("model", {"backbone", "name"}), ("loss", set()), ("train", {"device"})):
        assert {k: v for k, v in cfg[section].items() if k not in changed} == \
            {k: v for k, v in shipped[section].items() if k not in changed}, section
    assert cfg["model"]["shared_bits"] == 12 and cfg["loss"]["filter"] == 1.0 and cfg["train"]["steps"] == 400


def test_stvh_gets_one_code_with_activity_weight_1(vs):
    from stvh.losses import layer_weights

    args = vs.parse_args(["--tracks", "on", "--epochs", "3", "--set", "loss.contrast=0.2"])
    cfg = vs.make_config(args, "stvh", 2)
    assert cfg["model"]["name"] == "stvh" and cfg["model"]["depth"] == 1
    assert cfg["model"]["shared_bits"] == 0 and cfg["loss"]["filter"] == 0
    assert layer_weights(1, cfg["loss"]["layer_weights"]) == [1.0]  # not the shallowest weight 0.1
    assert cfg["train"]["epochs"] == 3 and cfg["loss"]["contrast"] == 0.2
    assert cfg["data"]["reader"]["use_tracks"] is True


def test_sample_overrides_put_the_users_last(vs):
    o = vs.sample_overrides("stvh", 5, "off", 7, ["model.d=64"])
    assert o[0] == "seed=5" and o[-1] == "model.d=64" and o[-2] == "train.epochs=7"
    assert set(vs.STVH_OVERRIDES) <= set(o)
    assert not set(vs.STVH_OVERRIDES) & set(vs.sample_overrides("mstvh", 5, "off"))


def test_per_depth_reads_stored_and_derived_shallow_first(vs):
    m = {"map@10/visual/K64/depth1": 0.9, "map@10/visual/K64/depth2": 0.5, "map@10/visual/K64/depth3": 0.7,
         "map@10/visual/K64/depth1/derived": 0.8, "map@10/visual/K64/depth2/derived": 0.4,
         "map@10/activity/K64/depth3": 0.6, "map@5/visual/K64/depth1": 0.1}
    assert vs.per_depth(m, "visual", 64, 3) == [0.9, 0.5, 0.7]
    assert vs.per_depth(m, "visual", 64, 3, derived=True) == [0.8, 0.4]
    assert vs.per_depth(m, "visual", 64, 1, k=5) == [0.1]
    with pytest.raises(KeyError):
        vs.per_depth(m, "activity", 64, 3)


def test_mean_std_is_the_sample_std(vs):
    assert vs.mean_std([1.0, 2.0, 6.0]) == (3.0, pytest.approx(np.sqrt(7.0)))  # ((4 + 1 + 9) / 2) ** 0.5
    assert vs.mean_std([0.4]) == (0.4, 0.0)
    mean, std = vs.mean_std([[1.0, 4.0], [3.0, 4.0]])
    assert mean == [2.0, 4.0] and std == [pytest.approx(np.sqrt(2.0)), 0.0]


def test_summarise_keeps_numbers_and_lists_present_in_every_seed(vs):
    per_seed = {0: {"m": {"acc": 0.2, "v": [0.1, 0.5], "flag": True, "name": "x", "only0": 1.0}},
                1: {"m": {"acc": 0.4, "v": [0.3, 0.5], "flag": False, "name": "y"}}}
    s = vs.summarise(per_seed, [0, 1], ["m"])["m"]
    assert set(s) == {"acc", "acc_std", "v", "v_std"}
    assert s["acc"] == pytest.approx(0.3) and s["acc_std"] == pytest.approx(0.1 * np.sqrt(2))
    assert s["v"] == pytest.approx([0.2, 0.5]) and s["v_std"] == pytest.approx([0.1 * np.sqrt(2), 0.0])
    assert vs.pm([0.2, 0.5], [0.01, 0.0]) == "0.200 ± 0.010 / 0.500 ± 0.000"
    assert vs.ratio(0.5, 0.25) == 2.0 and vs.ratio(1.0, 0.0) is None


def _tensors(groups, splits, activity):
    """Clips whose box layout is fixed by their group: group g's 4 persons stand at x = 100 g, 6 frames."""
    from stvh.train.tensors import ClipTensors

    M, T, N = len(groups), 6, 4
    boxes = torch.zeros(M, T, N, 4)
    for i, g in enumerate(groups):
        for n in range(N):
            x, y, h = 100.0 * int(g) + 30 * n, 200.0 + 10 * n, 40.0 + 20 * int(g)
            boxes[i, :, n] = torch.tensor([x, y, x + h / 3, y + h])
    return ClipTensors(ids=[f"{g}_{i}" for i, g in enumerate(groups)], groups=list(groups), splits=list(splits),
                       boxes=boxes, mask=torch.ones(M, N, dtype=torch.bool),
                       image_size=torch.tensor([[720.0, 1280.0]]).repeat(M, 1),
                       activity=torch.tensor(activity), actions=torch.full((M, N), -1))


def test_visual_baselines_use_stvh_evals_mixed_protocol(vs):
    from stvh.eval.evaluate import visual_protocol

    # groups 1 and 2 train, group 3 test only: no test group in train, so queries come from every group
    groups = ["1"] * 20 + ["2"] * 20 + ["3"] * 20
    splits = ["train"] * 40 + ["test"] * 20
    activity = [i % 2 for i in range(60)]
    t = _tensors(groups, splits, activity)
    r = vs.baselines(t, seed=3, bits=32)
    db, q, how = visual_protocol(t.ids, t.groups, t.splits, 3)
    assert how.startswith("all clips mixed")
    g = np.asarray(groups)
    assert {*g[q]} == {"1", "2", "3"} and r["_sizes"]["visual_queries"] == int(q.sum())
    # constant codes rank the database in its order: its first 10 clips are group 1's, so exactly the
    # group-1 queries find their match
    assert (g[db][:10] == "1").all()
    assert r["majority"]["visual@10"] == pytest.approx(np.mean(g[q] == "1"))
    # one layout per group: the boxes' LSH codes are equal within a group and differ across groups
    assert r["boxes"]["visual@10"] == 1.0 and r["boxes_nc"]["visual@10"] == 1.0
    # the activity baselines see only the official split: 20 test queries
    assert r["_sizes"]["test"] == 20 and r["_sizes"]["train"] == 40
    assert r["majority"]["acc"] == 0.5  # classes 0 and 1 tie on train (20 each): argmax takes 0


def test_a_runs_folder_holding_a_run_is_refused_before_training(vs, tmp_path, capsys):
    (tmp_path / "data" / "videos").mkdir(parents=True)
    for v in vs.VIDEOS:  # only the presence check reads these; the refusal comes before any loading
        (tmp_path / "data" / "videos" / v).mkdir()
        (tmp_path / "data" / "videos" / v / "annotations.txt").write_text("")
    (tmp_path / "runs" / "stvh-seed1").mkdir(parents=True)
    (tmp_path / "runs" / "stvh-seed1" / "last.pt").write_bytes(b"")
    code = vs.main(["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--seeds", "0", "1",
                    "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --runs ") and "stvh-seed1 already holds a run" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r.json").exists()
