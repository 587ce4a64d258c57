"""One set of defaults: every command runs with the shipped default config, and a cache's settings are taken
over where the user did not set them (src/stvh/configs/default.yaml, train/config.py ``resolve_config``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stvh.cli import app
from stvh.train.config import (DEFAULT_CONFIG, ConfigError, adopt_cache_settings, cache_settings, config_path,
                               fitted_defaults, load_config, resolve_config, user_keys)

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "src" / "stvh" / "configs" / "synthetic.yaml"
runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"stvh {' '.join(map(str, args))}\n{result.output}\n{result.exception!r}"
    return result.output


def test_default_is_the_demo_recipe_and_the_footage_config():
    default = load_config(DEFAULT_CONFIG)
    assert load_config(ROOT / "configs" / "footage.yaml") == default
    synth = load_config(SYNTH)
    assert synth["data"]["format"] == "volleyball" and default["data"]["format"] is None
    synth["data"]["format"], synth["synth"] = None, {}
    assert synth == default  # the demo's recipe, format detected, no generator settings
    assert default["model"]["backbone"] == "efficientnet_lite0" and default["extract"]["pca"] == 64
    assert config_path(None) == DEFAULT_CONFIG and config_path("x.yaml") == Path("x.yaml")


def test_user_keys_name_file_lines_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\nmodel:\n  bits: 32\n  backbone: resnet18\n", encoding="utf-8")
    keys = user_keys(cfg, ["extract={pca: 8}", "train.epochs=2"])
    assert keys["model.backbone"] == f"{cfg}:4: " and keys["model.bits"] == f"{cfg}:3: "
    assert keys["extract.pca"].startswith("override 'extract={pca: 8}'") and "extract.frame_size" not in keys
    assert keys["train.epochs"].startswith("override 'train.epochs=2'")
    assert user_keys(None, []) == {}  # the shipped default is nobody's explicit choice


def test_fitted_defaults_follow_bits_depth_and_model():
    over, notes = fitted_defaults(None, ["model.bits=16", "model.depth=2"])
    assert over == ["model.shared_bits=3", "model.shared_bits_middle=0", "loss.layer_weights=[0.1, 1.0]"]
    assert len(notes) == 3
    cfg = load_config(DEFAULT_CONFIG, ["model.bits=16", "model.depth=2", *over])
    assert cfg["model"]["shared_bits"] == 3 and cfg["loss"]["layer_weights"] == [0.1, 1.0]
    assert fitted_defaults(None, ["model.bits=128"])[0] == ["model.shared_bits=24", "model.shared_bits_middle=64"]
    assert fitted_defaults(None, ["model.depth=5"])[0] == ["loss.layer_weights=[0.1, 0.25, 0.4, 0.7, 1.0]"]
    assert fitted_defaults(None, ["model.name=stvh"])[0] == ["model.shared_bits=0", "model.shared_bits_middle=0",
                                                             "loss.visual=0.0", "loss.filter=0.0"]
    assert fitted_defaults(None, ["model.depth=1"])[0][0] == "model.shared_bits=0"
    # what the user sets is theirs, and a user's file is never fitted
    assert fitted_defaults(None, ["model.bits=16", "model.shared_bits=4", "model.shared_bits_middle=8"])[0] == []
    assert fitted_defaults(ROOT / "configs" / "footage.yaml", ["model.bits=16"]) == ([], [])
    assert fitted_defaults(None, []) == ([], []) and fitted_defaults(None, ["model.bits=ten"]) == ([], [])
    with pytest.raises(ConfigError, match="model.shared_bits"):  # an explicit impossible value is still refused
        resolve_config(None, ["model.bits=16", "model.shared_bits=24"])
    cfg, notes = resolve_config(None, ["model.name=stvh"])
    assert cfg["model"]["shared_bits"] == 0 and cfg["loss"]["filter"] == 0 and cfg["loss"]["visual"] == 0
    assert len(notes) == 4


def test_an_explicit_epoch_count_wins_over_the_shipped_step_count(tmp_path):
    from stvh.train import config as C

    shipped = tmp_path / "shipped.yaml"
    shipped.write_text("train: {epochs: 25, steps: 400}\n", encoding="utf-8")
    real = C.is_shipped
    C.is_shipped = lambda path: path == shipped or real(path)
    try:
        over, notes = fitted_defaults(shipped, ["train.epochs=2"])
        assert over == ["train.steps=null"] and "train.epochs was given" in notes[0]
        assert load_config(shipped, ["train.epochs=2", *over])["train"]["steps"] is None
        assert fitted_defaults(shipped, ["train.epochs=2", "train.steps=50"]) == ([], [])  # both set: the user's
        assert fitted_defaults(shipped, ["model.bits=64"]) == ([], [])
        shipped.write_text("train: {epochs: 25, steps: 400, steps_per_video: 20}\n", encoding="utf-8")
        over, notes = fitted_defaults(shipped, ["train.epochs=2"])
        assert over == ["train.steps=null", "train.steps_per_video=null"]
        assert load_config(shipped, ["train.epochs=2", *over])["train"]["steps_per_video"] is None
    finally:
        C.is_shipped = real


@pytest.mark.parametrize("meta, expected", [
    ({"backbone": "resnet18", "frame_size": [90, 160], "reduction": "pca12"},
     {"model.backbone": "resnet18", "extract.frame_size": [90, 160], "extract.pca": 12}),
    ({"backbone": "vgg16", "frame_size": "native", "reduction": "none"},
     {"model.backbone": "vgg16", "extract.frame_size": None, "extract.pca": None}),
])
def test_cache_settings_read_meta(meta, expected):
    assert cache_settings(meta) == expected


def test_adopt_takes_unset_keys_and_refuses_conflicts(tmp_path):
    base = load_config(DEFAULT_CONFIG)
    meta = {"backbone": "resnet18", "frame_size": [90, 160], "reduction": "pca12"}
    cfg, notes = adopt_cache_settings(base, meta, {}, "FEATS")
    assert (cfg["model"]["backbone"], cfg["extract"]["frame_size"], cfg["extract"]["pca"]) == \
        ("resnet18", [90, 160], 12)
    assert len(notes) == 3 and all("FEATS" in n for n in notes)
    assert base["model"]["backbone"] == "efficientnet_lite0"  # the input is not changed
    same, none = adopt_cache_settings(base, {"backbone": "efficientnet_lite0", "frame_size": [112, 200],
                                             "reduction": "pca64"}, {}, "FEATS")
    assert none == [] and same == base
    with pytest.raises(ConfigError, match=r"^c\.yaml:3: config key 'model\.backbone' is 'efficientnet_lite0' "
                                          r"but the feature cache FEATS was extracted with 'resnet18'"):
        adopt_cache_settings(base, meta, {"model.backbone": "c.yaml:3: "}, "FEATS")
    with pytest.raises(ConfigError, match=r"'extract.frame_size' is \[112, 200\] .* with null \(the frames' own size\)"):
        adopt_cache_settings(base, {**meta, "frame_size": "native"}, {"extract.frame_size": "c.yaml:9: "}, "FEATS")
    # an explicit key equal to the cache's is no conflict; the others are still taken over
    cfg, notes = adopt_cache_settings(base, {**meta, "backbone": "efficientnet_lite0"},
                                      {"model.backbone": "c.yaml:3: "}, "FEATS")
    assert cfg["model"]["backbone"] == "efficientnet_lite0" and len(notes) == 2


def test_resolve_config_reads_the_cache_meta(tmp_path):
    feats = tmp_path / "feats"
    feats.mkdir()
    (feats / "meta.json").write_text(json.dumps({"format_version": 1, "backbone": "resnet18", "frame_size": "native",
                                                 "reduction": "none", "channels": 512}))
    cfg, notes = resolve_config(None, ["model.bits=32"], feats)
    assert cfg["model"]["bits"] == 32 and cfg["model"]["backbone"] == "resnet18" and cfg["extract"]["pca"] is None
    assert len(notes) == 5 and sum(str(feats) in n for n in notes) == 3 and "model.shared_bits = 6" in notes[0]
    with pytest.raises(ConfigError, match="override 'extract.pca=64'"):
        resolve_config(None, ["extract.pca=64"], feats)
    assert resolve_config(None, [], None) == (load_config(DEFAULT_CONFIG), [])


def test_config_show_prints_the_resolved_config(tmp_path):
    out = invoke("config", "show", "model.bits=32")
    assert "(the shipped default)" in out.splitlines()[0] and "# override: model.bits=32" in out
    shown = yaml.safe_load(out)
    assert shown == resolve_config(None, ["model.bits=32"])[0] and shown["model"]["shared_bits"] == 6
    shown = json.loads(invoke("config", "show", "--json", "--config", ROOT / "configs" / "volleyball.yaml"))
    assert shown["model"]["backbone"] == "inception_v3" and shown["model"]["bits"] == 128
    bad = runner.invoke(app, ["config", "show", "--features", str(tmp_path)])
    assert bad.exit_code == 2 and "meta.json missing" in bad.output


def test_help_names_the_default_config():
    for command in ("extract", "train"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0
        assert "shipped default config is used (src/stvh/configs/default.yaml" in result.output, command


@pytest.mark.parametrize("as_mot", [False, True], ids=["volleyball", "mot"])
def test_bare_path_runs_without_a_config(tiny_synth, tmp_path, as_mot):
    """extract -> train -> encode -> eval with no --config and no override, on synthetic Volleyball and MOT data."""
    data = tiny_synth
    if as_mot:
        data = tmp_path / "mot"
        invoke("data", "export-mot", tiny_synth, "--out", data, "--media", "frames")
    feats, run = tmp_path / "feats", tmp_path / "run"
    invoke("extract", "--data", data, "--out", feats, "--no-progress")
    meta = json.loads((feats / "meta.json").read_text())
    assert meta["backbone"] == "efficientnet_lite0" and meta["reduction"] == "pca64"
    invoke("train", "--data", data, "--features", feats, "--out", run, "--no-progress")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["bits"] == 64 and saved["model"]["backbone"] == "efficientnet_lite0"
    invoke("encode", "--run", run, "--out", tmp_path / "codes.npz")
    out = invoke("eval", "--run", run)
    assert "activity mAP@10" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["map@10/activity/K64/depth3"] <= 1
