"""Pure parts of benchmarks/quality_grid.py: wrong-side share, clip counts per axis, estimate, goals, tables."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality_grid as qg  # noqa: E402

NAMES = ["r_set", "r_spike", "r-pass", "r_winpoint", "l_set", "l_spike", "l-pass", "l_winpoint"]


def test_wrong_side_share_hand_example():
    names = ["l_set", "l_spike", "r_set", "r_spike"]
    true = np.array([0, 0, 1, 2, 3, 3, -1, 2])
    pred = np.array([2, 1, 3, 2, 2, 1, 0, 0])
    # errors: 0->2 (side), 0->1 (kind), 1->3 (side), 3->2 (kind), 3->1 (side), 2->0 (side); -1 is ignored
    assert qg.wrong_side_share(true, pred, names) == pytest.approx(4 / 6)
    assert qg.wrong_side_share(true[3:4], pred[3:4], names) is None          # no error
    assert qg.wrong_side_share([0], [1], ["a", "b"]) is None                 # names without sides
    conf = np.zeros((4, 4), int)
    np.add.at(conf, (true[true >= 0], pred[true >= 0]), 1)
    assert qg.confusion_wrong_side(conf, names) == pytest.approx(4 / 6)


def test_top1_labels_ties_go_to_the_first_database_code():
    codes = np.array([[1, 1, 1, 1], [-1, -1, 1, 1], [1, 1, 1, -1], [-1, 1, 1, 1], [1, 1, -1, -1]], np.int8)
    labels = np.array([0, 1, 2, 3, 4])
    db = np.array([True, True, True, False, False])
    q = ~db
    # query 3 is 1 bit from code 0 and 1 bit from code 1: code 0 (first); query 4 is 1 bit from code 2
    assert qg.top1_labels(codes, labels, db, q).tolist() == [0, 2]


def test_clip_counts_per_axis():
    grid = [qg.cell_clips(c)["clips"] for c in qg.MODES[("grid", "full")][0]]
    assert grid == [240] * 7 + [400]
    matches = {c: qg.cell_clips(c) for c in qg.MODES[("matches", "full")][0]}
    assert [matches[f"m{m}-demo"]["clips"] for m in (6, 20, 55)] == [240, 600, 1100]
    assert matches["m55-hard"]["test"] == 55 * 6 and matches["m6-demo"]["test"] == 6 * 12
    assert all(20 <= qg.knobs_of(c)["clips_per_match"] <= 40 for c in matches)
    assert qg.knobs_of("m20-hard")["players_per_side"] == 4 and qg.knobs_of("m20-hard")["matches"] == 20
    curve = [qg.cell_clips(c) for c in qg.MODES[("curve", "full")][0]]
    assert {c["clips"] for c in curve} == {6 * 208} and [c["train"] for c in curve] == [80, 160, 320, 640]
    assert len({qg.data_name(c) for c in qg.MODES[("curve", "full")][0]}) == 1   # one dataset for the curve
    # cells with the same knobs share one dataset (and, trained alike, one result): the matches axis's m6-demo
    # is the grid's demo cell
    for a in qg.CELLS:
        for b in qg.CELLS:
            if qg.knobs_of(a) == qg.knobs_of(b):
                assert qg.data_name(a) == qg.data_name(b), (a, b)


def test_curve_dataset_has_80_train_clips_of_every_class_at_seeds_0_to_2():
    for seed in (0, 1, 2):
        counts = qg.train_clips_per_class("curve-n80", seed)
        assert len(counts) == 8 and min(counts.values()) >= 80, (seed, counts)


def test_data_units_group_cells_that_share_a_dataset():
    units = qg.data_units(["curve-n10", "curve-n80", "demo"], [0, 1])
    assert units == [("curve", 0, ["curve-n10", "curve-n80"]), ("demo", 0, ["demo"]),
                     ("curve", 1, ["curve-n10", "curve-n80"]), ("demo", 1, ["demo"])]


def test_makespan_takes_the_next_job_on_the_first_free_worker():
    assert qg.makespan([3, 1, 1, 1], 2) == 3          # worker 2 runs the three short ones
    assert qg.makespan([1, 1, 3], 2) == 4             # the long one starts at 1
    assert qg.makespan([2, 2], 1) == 4 and qg.makespan([], 2) == 0


def test_stage_rates_per_clip_and_per_train_clip_epoch():
    ref = {"epochs": 10, "cells": {"demo": {"knobs": {"matches": 2, "clips_per_match": 50}, "runs": {"0": {
        "baselines": {"synth_s": 10.0, "extract_s": 50.0, "seconds": 1.0},
        "mstvh": {"train_s": 140.0, "eval_s": 5.0}}}}}}
    r = qg.stage_rates(ref)
    # 100 clips, 30 test, 70 * 0.85 = 59.5 -> 60 train clips (round half to even), 10 epochs; 10 s a command off
    assert r["extract"] == pytest.approx(0.4) and r["synth"] == pytest.approx(0.0)
    assert r["train:mstvh"] == pytest.approx(130 / 600) and r["eval"] == pytest.approx(0.0)
    assert r["baselines"] == pytest.approx(0.01)
    assert "train:stvh" not in r


def test_matches_goals():
    mean = {"mstvh/visual": 0.93, "mstvh/derived_ratio_min": 0.96, "mstvh/visual@1": 0.93,
            "mstvh/visual@2": 0.95, "mstvh/visual@3": 0.80}
    assert qg.matches_goals("m55-demo", mean) == {"visual>=0.90": True, "derived>=0.95*stored": True,
                                                  "middle between": False}
    mean["mstvh/visual@2"] = 0.85
    assert qg.matches_goals("m20-demo", mean) == {"visual>=0.95": False, "derived>=0.95*stored": True,
                                                  "middle between": True}


def test_curve_goals_and_tables_of_each_axis():
    mean = {"mstvh/activity": 0.80, "mstvh_bd/activity": 0.79, "stvh/activity": 0.805}
    assert qg.curve_goals(mean) == {"act>=BD+0.02": False, "act>=STVH-0.01": True}
    means = {**mean, "mstvh/visual@1": 0.99, "mstvh/visual@2": 0.5, "mstvh/wrong_side": 0.75}
    cell = {"knob_text": "x", "seeds": ["0"], "clips": {"clips": 240, "test": 72}, "mean": means,
            "std": {k: 0.0 for k in means}, "n": {k: 1 for k in means}, "goals": qg.curve_goals(mean)}
    for axis, needle in (("grid", "0.800"), ("matches", "0.990 / 0.500"), ("curve", "| 10 |")):
        text = qg.table({"axis": axis, "cells": {"curve-n10" if axis == "curve" else "m6-demo": cell}})
        assert needle in text and "0.750" in text and "1/2 (miss: act>=BD+0.02)" in text


def test_readme_markers_keep_the_grid_names():
    assert qg.readme_markers("grid", "full") == ("<!-- quality_grid:full:begin -->", "<!-- quality_grid:full:end -->")
    assert qg.readme_markers("curve", "quick")[0] == "<!-- quality_grid:curve:quick:begin -->"


def test_curve_axis_refuses_its_own_override(capsys):
    with pytest.raises(SystemExit) as exc:
        qg.parse_args(["--axis", "curve", "--set", "data.train_per_class=5"])
    assert exc.value.code == 2 and "--set data.train_per_class=5" in capsys.readouterr().err


def test_feature_caches_are_keyed_by_what_makes_the_features(tmp_path):
    """A new training key keeps the feature caches (and the data); a new extraction setting does not."""
    shipped = (qg.REPO / "configs" / "synthetic.yaml").read_text(encoding="utf-8")
    (tmp_path / "a.yaml").write_text(shipped, encoding="utf-8")
    (tmp_path / "b.yaml").write_text(shipped + "\n# a comment\n", encoding="utf-8")

    def tags(config, *extra):
        ctx = qg.Context(qg.parse_args(["--smoke", "--config", str(tmp_path / config), "--work", str(tmp_path),
                                        *extra]))
        return ctx.feature_tag, ctx.train_tag

    a, b = tags("a.yaml"), tags("b.yaml")
    assert a[0] == b[0] and a[1] != b[1]
    trained = tags("a.yaml", "--set", "train.steps=100")
    assert trained[0] == a[0] and trained[1] != a[1]
    assert tags("a.yaml", "--set", "extract.pca=32")[0] != a[0]


def test_estimate_counts_the_steps_per_video(tmp_path):
    """The time estimate runs each cell as long as the trainer will: train.steps raised to steps_per_video x videos
    (step_budget), then ceil(steps / batches) epochs, at most twice train.epochs."""
    def ctx(*extra):
        return qg.Context(qg.parse_args(["--axis", "matches", "--work", str(tmp_path), "--set", "train.steps=400",
                                         "--set", "train.batch_size=16", "--set", "train.epochs=25", *extra]))

    per_video = ctx("--set", "train.steps_per_video=20")
    assert per_video.epochs_for(654, 55) == 27      # max(400, 20 x 55) = 1100 steps / ceil(654 / 16) = 41 batches
    assert per_video.epochs_for(357, 20) == 18      # 400 steps / 23 batches = 17.4
    assert per_video.epochs_for(143, 6) == 45       # 400 / 9 = 44.4 (cap 50)
    assert per_video.epochs_for(60, 55) == 50       # 1100 / 4: capped at 2 x 25
    assert ctx("--set", "train.steps_per_video=null").epochs_for(654, 55) == 10   # 400 / 41
