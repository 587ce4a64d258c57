"""`stvh ablate`: the rows of Tables 5-7, resuming, aggregation and the written table."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import stvh.train.loop as loop
from stvh.cli import app
from stvh.train import ablate as A

runner = CliRunner()
TINY = ["model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "train.epochs=2", "train.batch_size=8",
        "train.lr=3e-3", "data.val_fraction=0.25", "filter.steps=10", "train.select=val_mca"]
NONE = ["model.backbone=none", *TINY]


# ---- row definitions ----

def test_rows_of_each_table_set_what_the_paper_varies():
    t5 = {r.name: A.run_config(None, NONE, r, 0) for r in A.rows(5)}
    assert [r.name for r in A.rows(5)] == ["mstvh_bd", "mstvh_ed", "mstvh"]
    assert {k: c["model"]["name"] for k, c in t5.items()} == {"mstvh_bd": "mstvh_bd", "mstvh_ed": "mstvh_ed",
                                                              "mstvh": "mstvh"}
    t6 = {r.name: A.run_config(None, NONE, r, 0) for r in A.rows(6)}
    assert {k: c["model"]["depth"] for k, c in t6.items()} == {"depth2": 2, "depth3": 3, "depth4": 4, "depth5": 5}
    # Table 7: L_cls (acty + action) always on; the rows drop mu2 L_H, then mu1 L_q; mu3 L_recon stays
    t7 = {r.name: loop.loss_config(A.run_config(None, NONE, r, 0)) for r in A.rows(7)}
    weights = {k: (lc.acty, lc.action, lc.quant, lc.contrast, lc.recon) for k, lc in t7.items()}
    assert weights == {"cls_recon": (1.0, 0.5, 0.0, 0.0, 0.01), "cls_q_recon": (1.0, 0.5, 0.1, 0.0, 0.01),
                       "full": (1.0, 0.5, 0.1, 0.5, 0.01)}
    # the seed and the user's overrides reach every run; the row wins over a user's value for its own key
    cfg = A.run_config(None, [*NONE, "model.name=stvh"], A.rows(5)[0], 7)
    assert cfg["seed"] == 7 and cfg["model"]["d"] == 16 and cfg["model"]["name"] == "mstvh_bd"
    with pytest.raises(ValueError, match="--table must be one of 5, 6, 7"):
        A.rows(4)


def test_depth_rows_resample_the_configs_layer_weights():
    assert A.stretch_layer_weights([0.1, 0.4, 1.0], 3) == [0.1, 0.4, 1.0]
    assert A.stretch_layer_weights([0.1, 0.4, 1.0], 2) == [0.1, 1.0]
    assert A.stretch_layer_weights([0.1, 0.4, 1.0], 5) == [0.1, 0.25, 0.4, 0.7, 1.0]
    assert A.stretch_layer_weights([0.1, 0.4, 1.0], 1) == [1.0]  # one code: the deepest, activity-focused weight
    assert A.stretch_layer_weights([0.5], 3) == [0.5, 0.5, 0.5]
    over = [*NONE, "loss.layer_weights=[0.1, 0.4, 1.0]"]
    got = {r.name: A.run_config(None, over, r, 0)["loss"]["layer_weights"] for r in A.rows(6)}
    assert got["depth3"] == [0.1, 0.4, 1.0] and got["depth2"] == [0.1, 1.0] and len(got["depth5"]) == 5


def test_paper_figures_cover_every_row_and_dataset():
    for table in A.TABLES:
        assert set(A.PAPER[table]) == {r.name for r in A.rows(table)}
        for figures in A.PAPER[table].values():
            assert set(figures) == set(A.DATASETS)
            assert all(80 < v <= 100 for pair in figures.values() for v in pair)
    # the full model on VD is the same run in the three tables: 95.66 / 96.00
    assert A.PAPER[5]["mstvh"]["VD"] == A.PAPER[6]["depth3"]["VD"] == A.PAPER[7]["full"]["VD"] == (95.66, 96.00)
    assert A.PAPER[6]["depth2"]["CAD"] == (96.21, 88.91) and A.PAPER[7]["cls_recon"]["CAED"] == (97.35, 91.91)


# ---- aggregation ----

def test_mean_and_sample_std_hand_checked():
    mean, std = A.mean_std([0.9, 0.8, 0.7])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    mean, std = A.mean_std([0.5, 1.0])
    assert mean == pytest.approx(0.75) and std == pytest.approx(math.sqrt(0.125))  # (0.25^2 * 2) / 1
    assert A.mean_std([0.3]) == (0.3, None) and A.mean_std([]) == (None, None)
    stats = A.aggregate([{"accuracy": 0.9, "activity_map@10": 0.6, "visual_map@10": 1.0},
                         {"accuracy": 0.7, "activity_map@10": 0.8, "visual_map@10": 1.0}])
    assert stats["accuracy"]["mean"] == pytest.approx(0.8) and stats["accuracy"]["n"] == 2
    assert stats["accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert stats["visual_map@10"]["std"] == 0.0
    assert A._cell(stats["accuracy"]) == "80.00 ± 14.14"
    assert A._cell({"mean": 0.5, "std": None, "n": 1}) == "50.00"
    assert A._cell({"mean": None, "std": None, "n": 0}) == "–"


def test_parse_seeds():
    assert A.parse_seeds("0,1,2") == [0, 1, 2] and A.parse_seeds(" 4 ") == [4]
    for bad in ("a", "0,,1", "-1", "1.5"):
        with pytest.raises(ValueError, match="--seeds: expected comma-separated integers"):
            A.parse_seeds(bad)
    with pytest.raises(ValueError, match="seed 1 is given twice"):
        A.parse_seeds("1,2,1")


# ---- real sweeps on tiny data ----

@pytest.fixture
def count_fit(monkeypatch):
    calls = []
    real = loop.fit

    def counted(cfg, data, features, out, resume=False, **kw):
        calls.append((str(out), resume))
        return real(cfg, data, features, out, resume=resume, **kw)

    monkeypatch.setattr(loop, "fit", counted)
    return calls


def test_resume_skips_finished_runs_and_continues_half_trained_ones(tiny_synth, tmp_path, count_fit):
    out = tmp_path / "abl"
    rows7 = {r.name: r for r in A.rows(7)}
    # a run killed after epoch 1 of 2
    A._claim_folder(out, tiny_synth, None)
    half = out / "table7" / "full" / "seed0"
    loop.fit(A.run_config(None, NONE, rows7["full"], 0), tiny_synth, None, half, stop_after=1, progress=False)
    count_fit.clear()

    first = A.run_table(7, data=tiny_synth, out=out, seeds=[0], overrides=NONE, progress=False, echo=lambda s: None)
    assert sorted(count_fit) == sorted([(str(out / "table7" / n / "seed0"), n == "full") for n in rows7])
    assert [r["runs"][0]["status"] for r in first["rows"]] == ["trained", "trained", "resumed"]

    # everything finished: no training at all, the same figures
    count_fit.clear()
    lines = []
    second = A.run_table(7, data=tiny_synth, out=out, seeds=[0], overrides=NONE, progress=False, echo=lines.append)
    assert count_fit == []
    assert [r["stats"] for r in second["rows"]] == [r["stats"] for r in first["rows"]]
    assert len([s for s in lines if "done before" in s]) == 3

    # trained but not evaluated (killed during eval): evaluated again, not trained
    (half / "result.json").unlink()
    (half / "metrics.json").unlink()
    lines.clear()
    third = A.run_table(7, data=tiny_synth, out=out, seeds=[0], overrides=NONE, progress=False, echo=lines.append)
    assert count_fit == [] and third["rows"][2]["runs"][0]["status"] == "evaluated"
    assert third["rows"][2]["stats"] == first["rows"][2]["stats"]

    # Table 5's M-STVH row is Table 7's full loss (same config and seed): shared, not trained again
    count_fit.clear()
    t5 = A.run_table(5, data=tiny_synth, out=out, seeds=[0], overrides=NONE, progress=False, echo=lambda s: None)
    assert sorted(c[0] for c in count_fit) == [str(out / "table5" / n / "seed0") for n in ("mstvh_bd", "mstvh_ed")]
    assert t5["rows"][2]["runs"][0]["status"] == "same run as table7/full/seed0"
    assert t5["rows"][2]["stats"] == first["rows"][2]["stats"]
    assert sorted(p.name for p in (out / "table5" / "mstvh" / "seed0").iterdir()) == ["config.yaml", "result.json"]
    count_fit.clear()
    again = A.run_table(5, data=tiny_synth, out=out, seeds=[0], overrides=NONE, progress=False, echo=lambda s: None)
    assert count_fit == [] and again["rows"][2]["stats"] == first["rows"][2]["stats"]

    # a changed recipe is refused (one line naming the key), never mixed into the table
    with pytest.raises(ValueError, match=r"trained with another config \(train.lr: 0.003 there, 0.001 now\)"):
        A.run_table(7, data=tiny_synth, out=out, seeds=[0], overrides=[*NONE, "train.lr=1e-3"], progress=False,
                    echo=lambda s: None)
    assert count_fit == []


def test_cli_extracts_once_and_writes_the_table(tiny_synth, tmp_path):
    out = tmp_path / "abl"
    args = ["ablate", "--data", str(tiny_synth), "--table", "5", "--seeds", "0", "--out", str(out), "--no-progress",
            "model.backbone=mobilenet_v3_small", "extract.pca=8", "model.depth=2", *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "features" / "meta.json").is_file()
    md = (out / "table5.md").read_text()
    assert md in result.output
    assert "| M-STVH^BD (transformer, positions added at its input) | 1 |" in md
    assert "| M-STVH (MSF) | 1 |" in md and "95.66 / 96.00" in md and "94.25 / 90.26" in md
    summary = json.loads((out / "table5.json").read_text())
    assert [r["row"] for r in summary["rows"]] == ["mstvh_bd", "mstvh_ed", "mstvh"]
    for r in summary["rows"]:
        run = out / "table5" / r["row"] / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert r["runs"][0]["accuracy"] == metrics["mca"]
        assert r["runs"][0]["activity_map@10"] == metrics["map@10/activity/K16/depth2"]
        assert r["runs"][0]["visual_map@10"] == metrics["map@10/visual/K16/depth1"]
        assert r["stats"]["accuracy"]["mean"] == metrics["mca"] and r["stats"]["accuracy"]["std"] is None
        assert json.loads((run / "run.json").read_text())["features"] == str((out / "features").resolve())
    assert "table 5 mstvh_ed seed 0: trained" in result.output
    # a second call extracts nothing and trains nothing
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("done before") == 3 and "0 extracted now" in again.output


@pytest.mark.parametrize("extra, message", [
    (["--table", "4"], "--table"),
    (["--table", "5", "--seeds", "x"], "--seeds: expected comma-separated integers"),
    (["--table", "5", "model.nme=mstvh"], "model.nme"),
])
def test_cli_bad_input_is_one_line_and_status_2(tiny_synth, tmp_path, extra, message):
    result = runner.invoke(app, ["ablate", "--data", str(tiny_synth), "--out", str(tmp_path / "o"), *extra, *NONE])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_folder_of_other_files_or_another_dataset(tiny_synth, tmp_path):
    other = tmp_path / "other"
    (other).mkdir()
    (other / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["ablate", "--data", str(tiny_synth), "--table", "5", "--out", str(other), *NONE])
    assert result.exit_code == 2 and "holds other files (no ablate.json)" in result.output
    out = tmp_path / "abl"
    A._claim_folder(out, tmp_path / "elsewhere", None)
    result = runner.invoke(app, ["ablate", "--data", str(tiny_synth), "--table", "5", "--out", str(out), *NONE])
    assert result.exit_code == 2 and "holds an ablation of data" in result.output


def test_cli_ctrl_c_exits_130_with_a_resume_hint(tiny_synth, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "run_table", interrupted)
    result = runner.invoke(app, ["ablate", "--data", str(tiny_synth), "--table", "6", "--out", str(tmp_path / "o"),
                                 *NONE])
    assert result.exit_code == 130 and "run the same command again to resume" in result.output


def test_corrupt_result_file_is_named(tiny_synth, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text("{not json")
    cfg = A.run_config(None, NONE, A.rows(7)[0], 0)
    with pytest.raises(ValueError, match=r"result.json is corrupt .*delete it to evaluate the run again"):
        A.run_one(cfg, tiny_synth, None, run, log=print)
