"""Typed configuration: every validation rule names the key, the value and what is allowed, on one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from stvh.cli import app
from stvh.data.formats import FORMATS
from stvh.models import list_models
from stvh.models.heads import HashHead
from stvh.models.visual import backbone_names
from stvh.train import config as C
from stvh.train.config import DEFAULTS, ConfigError, complete_config, dump_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "configs" / f"{n}.yaml" for n in ("volleyball", "cad", "caed", "synthetic")]
SHIPPED.append(REPO / "src" / "stvh" / "configs" / "synthetic.yaml")

# The defaults as they were before the pydantic models (must not change).
OLD_DEFAULTS = {
    "seed": 0,
    "data": {"format": None, "n_max": None, "window": None, "val_fraction": 0.15, "reader": {},
             "require_features": False},
    "model": {"name": "mstvh", "bits": 128, "depth": 3, "d": 1024, "d_v": 512, "heads": 8, "dropout": 0.1,
              "backbone": "none", "weights": None, "train_backbone": False, "geometry": False,
              "hash_norm": "layer", "recon_from": "block"},
    "loss": {"acty": 1.0, "action": 0.5, "quant": 0.1, "contrast": 0.5, "recon": None, "layer_weights": None},
    "train": {"epochs": 60, "batch_size": 8, "lr": 1.0e-5, "weight_decay": 0.0, "lr_steps": [], "grad_clip": 5.0,
              "select": "val_map@10", "device": "auto", "log_every": 0},
    "filter": {"steps": 400, "lr": 0.01},
    "extract": {"frame_size": None, "pca": None},
    "synth": {},
}


def error_of(overrides, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# ---- defaults, shipped configs, API ----

def paper_part(cfg: dict) -> dict:
    """The keys of OLD_DEFAULTS, in their order (options added later are extensions, checked elsewhere)."""
    return {k: {kk: cfg[k][kk] for kk in v} if isinstance(v, dict) else cfg[k] for k, v in OLD_DEFAULTS.items()}


def test_defaults_are_unchanged_and_round_trip(tmp_path):
    assert list(DEFAULTS) == list(OLD_DEFAULTS)
    for section, keys in OLD_DEFAULTS.items():  # the old keys keep their place; extensions come after them
        if isinstance(keys, dict) and section not in ("synth",):
            assert list(DEFAULTS[section])[:len(keys)] == list(keys), section
    assert paper_part(DEFAULTS) == OLD_DEFAULTS
    assert json.dumps(paper_part(DEFAULTS)) == json.dumps(OLD_DEFAULTS)  # same types (1.0 stays a float)
    assert load_config() == DEFAULTS and load_config() is not load_config()
    (tmp_path / "c.yaml").write_text(dump_config(load_config()), encoding="utf-8")
    assert load_config(tmp_path / "c.yaml") == DEFAULTS


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    cfg = load_config(path)
    assert set(cfg) == set(OLD_DEFAULTS)
    (tmp_path / "c.yaml").write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_are_yaml_scalars():
    assert parse_override("train.lr=1e-5") == {"train": {"lr": 1e-5}}
    assert parse_override("data.window=[11, 21]") == {"data": {"window": [11, 21]}}
    assert parse_override("loss.recon=none") == {"loss": {"recon": None}}
    assert parse_override("loss.recon=") == {"loss": {"recon": None}}
    cfg = load_config(None, ["train.lr=1", "train.lr_steps=[[11, 5e-6]]", "data.window=[-5, 4]"])
    assert cfg["train"]["lr"] == 1.0 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["lr_steps"] == [[11, 5e-6]] and cfg["data"]["window"] == [-5, 4]  # lists, not tuples
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match=r"override 'train.lr=\[1,': invalid YAML value"):
        parse_override("train.lr=[1,")
    with pytest.raises(ConfigError, match="empty key part"):
        parse_override("train..lr=1")
    with pytest.raises(ConfigError, match="key nested more than 32 levels deep"):
        parse_override("a." * 5000 + "b=1")
    with pytest.raises(ConfigError, match=r"invalid YAML value \(values nested more than 32 levels deep\)"):
        parse_override("synth.size=" + "[" * 400 + "]" * 400)
    with pytest.raises(ConfigError, match="invalid YAML value"):
        parse_override("synth.size=" + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match=r"an alias refers to its own anchor"):
        parse_override("synth.size=&a [*a]")


def test_json_schema_lists_types_and_choices():
    schema = C.json_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == set(OLD_DEFAULTS)
    model = schema["$defs"]["ModelConfig"]["properties"]
    assert model["bits"]["enum"] == [16, 32, 64, 128]
    assert set(model["name"]["enum"]) == set(list_models())


# ---- one rule, one message: key, value, what is allowed ----

BAD = [
    ("model.bits=20", "config key 'model.bits': got 20; expected one of 16, 32, 64, 128"),
    ("model.bits=abc", "config key 'model.bits': got 'abc'; expected one of 16, 32, 64, 128"),
    ("model.bits=true", "config key 'model.bits': got True; expected one of 16"),
    ("model.name=foo", "config key 'model.name': got 'foo'; expected one of " + ", ".join(list_models())),
    ("model.depth=0", "config key 'model.depth': got 0; expected an integer >= 1"),
    ("model.d=0", "config key 'model.d': got 0; expected an integer >= 1"),
    ("model.d_v=-3", "config key 'model.d_v': got -3; expected an integer >= 1"),
    ("model.heads=two", "config key 'model.heads': got 'two'; expected an integer >= 1"),
    ("model.d=100", "config key 'model.d': got 100; expected a multiple of model.heads = 8"),
    ("model.dropout=1", "config key 'model.dropout': got 1; expected a number in [0, 1)"),
    ("model.dropout=-0.1", "config key 'model.dropout': got -0.1; expected a number in [0, 1)"),
    ("model.backbone=resnet99", "config key 'model.backbone': got 'resnet99'; expected one of none, inception_v3"),
    ("model.hash_norm=batch", "config key 'model.hash_norm': got 'batch'; expected one of layer, none"),
    ("model.recon_from=middle", "config key 'model.recon_from': got 'middle'; expected one of block, code"),
    ("model.train_backbone=maybe", "config key 'model.train_backbone': got 'maybe'; expected true or false"),
    ("model.weights=[1]", "config key 'model.weights': got [1]; expected a file path or null"),
    ("train.epochs=ten", "config key 'train.epochs': got 'ten'; expected an integer >= 1"),
    ("train.epochs=-1", "config key 'train.epochs': got -1; expected an integer >= 1"),
    ("train.epochs=2.5", "config key 'train.epochs': got 2.5; expected an integer >= 1"),
    ("train.epochs=true", "config key 'train.epochs': got True; expected an integer >= 1"),
    ("train.batch_size=0", "config key 'train.batch_size': got 0; expected an integer >= 1"),
    ("train.lr=fast", "config key 'train.lr': got 'fast'; expected a number > 0"),
    ("train.lr=0", "config key 'train.lr': got 0; expected a number > 0"),
    ("train.lr=.nan", "config key 'train.lr': got nan; expected a number > 0"),
    ("train.lr=-.inf", "config key 'train.lr': got -inf; expected a number > 0"),
    ("train.lr=1e400", "config key 'train.lr': got inf; expected a number > 0"),
    ("train.weight_decay=-1", "config key 'train.weight_decay': got -1; expected a number >= 0"),
    ("train.grad_clip=-0.5", "config key 'train.grad_clip': got -0.5; expected a number >= 0"),
    ("train.log_every=-1", "config key 'train.log_every': got -1; expected an integer >= 0"),
    ("train.lr_steps=[[0, 1e-5]]", "config key 'train.lr_steps': got [[0, 1e-05]]; expected a list of [epoch >= 1"),
    ("train.lr_steps=[[3, 0]]", "config key 'train.lr_steps': got [[3, 0]]; expected a list of [epoch >= 1, lr > 0]"),
    ("train.lr_steps=[[3, 1e-5, 2]]", "config key 'train.lr_steps': got [[3, 1e-05, 2]]; expected a list of"),
    ("train.lr_steps=5", "config key 'train.lr_steps': got 5; expected a list of [epoch >= 1, lr > 0] pairs"),
    ("train.select=best", "config key 'train.select': got 'best'; expected one of val_map@10, val_mca"),
    ("train.device=gpu", "config key 'train.device': got 'gpu'; expected auto, cpu, cuda, cuda:N or mps"),
    ("loss.acty=-1", "config key 'loss.acty': got -1; expected a number >= 0"),
    ("loss.contrast=.inf", "config key 'loss.contrast': got inf; expected a number >= 0"),
    ("loss.recon=-0.5", "config key 'loss.recon': got -0.5; expected a number >= 0 or null"),
    ("loss.layer_weights=[1, -1, 1]", "config key 'loss.layer_weights': got [1, -1, 1]; expected a list of numbers"),
    ("loss.layer_weights=[1, 2]", "config key 'loss.layer_weights': got [1.0, 2.0]; expected 3 weights, one per "
                                  "depth (model.depth = 3)"),
    ("data.format=ava", "config key 'data.format': got 'ava'; expected one of volleyball, cad, caed, mot or null"),
    ("data.val_fraction=1", "config key 'data.val_fraction': got 1; expected a number in [0, 1)"),
    ("data.n_max=0", "config key 'data.n_max': got 0; expected an integer >= 1 or null"),
    ("data.window=[3, 1]", "config key 'data.window': got [3, 1]; expected [first, last] frame offsets"),
    ("data.window=[1]", "config key 'data.window': got [1]; expected [first, last]"),
    ("data.window=[a, b]", "config key 'data.window': got ['a', 'b']; expected [first, last]"),
    ("data.reader=3", "config key 'data.reader': got 3; expected a mapping of reader options"),
    ("extract.frame_size=[0, 10]", "config key 'extract.frame_size': got [0, 10]; expected [H, W] integers >= 1"),
    ("extract.frame_size=[10]", "config key 'extract.frame_size': got [10]; expected [H, W]"),
    ("extract.pca=0", "config key 'extract.pca': got 0; expected an integer >= 1 or null"),
    ("filter.steps=0", "config key 'filter.steps': got 0; expected an integer >= 1"),
    ("filter.lr=0", "config key 'filter.lr': got 0; expected a number > 0"),
    ("seed=-1", "config key 'seed': got -1; expected an integer >= 0"),
    ("seed=1.5", "config key 'seed': got 1.5; expected an integer >= 0"),
    ("model=3", "config key 'model': got 3; expected a mapping of name, bits"),
    ("synth=[1]", "config key 'synth': got [1]; expected a mapping of generator options"),
    ("synth.matches=two", "config key 'synth.matches': got 'two'; expected int (generate's 'matches')"),
    ("synth.jitter=.nan", "config key 'synth.jitter': got nan; expected finite float (generate's 'jitter')"),
    ("synth.size=[64]", "config key 'synth.size': got [64]; expected tuple[int, int]"),
    ("synth.frames=1", "config key 'synth.frames': frames must be in [2, 100], got 1"),
    ("synth.occlusion=2", "config key 'synth.occlusion': occlusion is a probability and must be in [0, 1], got 2"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_value_names_key_value_and_allowed(override, expected):
    assert error_of([override]).startswith(expected)


def test_unknown_keys_list_the_known_ones():
    line = error_of(["model.bitz=3"])
    assert line.startswith("unknown config key 'model.bitz'; known: backbone, bits, d, d_v, depth, ")
    known = line.split("known: ")[1].split(", ")
    assert known == sorted(DEFAULTS["model"]) and set(OLD_DEFAULTS["model"]) <= set(known)
    assert error_of(["foo=1"]) == ("unknown config key 'foo'; known: data, extract, filter, loss, model, seed, "
                                   "synth, train")
    assert error_of(["train.lr.x=1"]).startswith("config key 'train.lr': got {'x': 1}; expected a number > 0")
    assert error_of(["synth.foo=1"]) == ("config key 'synth.foo': unknown option of the synthetic generator; known: "
                                         "clips_per_match, frames, jitter, label_noise, matches, missing, occlusion, "
                                         "pan, players_per_side, size, test_fraction")


def test_several_bad_keys_one_line_counts_the_rest():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.bits=20", "train.lr=0", "seed=x"])
    assert str(info.value) == ("config key 'seed': got 'x'; expected an integer >= 0 "
                               "(and 2 more: 'model.bits', 'train.lr')")
    assert len(info.value.errors) == 3 and info.value.errors[2].startswith("config key 'train.lr': got 0")


def test_accepted_values():
    for bits in (16, 32, 64, 128):
        assert load_config(None, [f"model.bits={bits}"])["model"]["bits"] == bits
    cfg = load_config(None, ["model.dropout=0", "model.depth=2", "loss.layer_weights=[0.5, 1]", "loss.recon=0",
                             "train.grad_clip=0", "data.val_fraction=0", "data.window=[-5, 4]", "model.d=96",
                             "model.heads=12", "extract.frame_size=[112, 200]", "extract.pca=64", "seed=7"])
    assert cfg["loss"]["layer_weights"] == [0.5, 1.0] and cfg["data"]["window"] == [-5, 4]
    assert cfg["extract"]["frame_size"] == [112, 200] and cfg["seed"] == 7
    assert set(list_models()) == {"stvh", "mstvh", "mstvh_bd", "mstvh_ed"}
    for name in list_models():
        assert load_config(None, [f"model.name={name}"])["model"]["name"] == name
    for backbone in ("none", *backbone_names()):
        assert load_config(None, [f"model.backbone={backbone}"])["model"]["backbone"] == backbone


def test_model_choices_agree_with_the_models():
    for norm in C.HASH_NORMS:
        HashHead(4, 16, norm)
    with pytest.raises(ValueError):
        HashHead(4, 16, "batch")
    from stvh.models import build
    for source in C.RECON_FROM:
        build("mstvh", bits=16, depth=1, d=8, d_v=4, heads=2, recon_from=source)
    with pytest.raises(ValueError):
        build("mstvh", bits=16, depth=1, d=8, d_v=4, heads=2, recon_from="middle")


# ---- data.reader: checked against the reader of data.format ----

READER_OPTIONS = {
    "volleyball": "n_max, require_frames, use_tracks, videos, window",
    "cad": "merge_moving, n_max, window",
    "caed": "merge_moving, n_max, window",
    "mot": "activities, frames_per_clip, n_max",
}


def test_every_format_has_a_reader():
    assert set(READER_OPTIONS) == set(FORMATS) == set(C._readers())


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_reader_option_per_format(fmt):
    message = error_of([f"data.format={fmt}", "data.reader.foo=1"])
    assert message == f"config key 'data.reader.foo': unknown option of the {fmt} reader; known: {READER_OPTIONS[fmt]}"


def test_reader_options_without_format_take_any_reader_and_check_types():
    assert error_of(["data.reader.foo=1"]) == (
        "config key 'data.reader.foo': unknown option of any reader; known: activities, frames_per_clip, "
        "merge_moving, n_max, require_frames, use_tracks, videos, window")
    assert error_of(["data.format=mot", "data.reader.merge_moving=true"]).startswith(
        "config key 'data.reader.merge_moving': unknown option of the mot reader")
    assert error_of(["data.format=cad", "data.reader.merge_moving=maybe"]) == (
        "config key 'data.reader.merge_moving': got 'maybe'; expected bool (read_cad's 'merge_moving')")
    assert error_of(["data.format=mot", "data.reader.frames_per_clip=2.5"]).startswith(
        "config key 'data.reader.frames_per_clip': got 2.5; expected int")
    assert error_of(["data.format=volleyball", "data.reader.window=[1, 2, 3]"]).startswith(
        "config key 'data.reader.window': got [1, 2, 3]; expected tuple[int, int] | None")
    assert error_of(["data.reader.videos=3"]).startswith("config key 'data.reader.videos': got 3; expected")
    cfg = load_config(None, ["data.format=volleyball", "data.reader.videos=[4, 7]", "data.reader.use_tracks=false"])
    assert cfg["data"]["reader"] == {"videos": [4, 7], "use_tracks": False}  # values kept as written
    cfg = load_config(None, ["data.format=mot", "data.reader.activities=[walk, run]", "data.reader.frames_per_clip=8"])
    assert cfg["data"]["reader"] == {"activities": ["walk", "run"], "frames_per_clip": 8}
    assert load_config(None, ["synth.size=[96, 128]", "synth.jitter=0"])["synth"] == {"size": [96, 128], "jitter": 0}


# ---- train.device: present on this machine ----

def test_device_cuda_without_gpu(no_gpu):
    assert error_of(["train.device=cuda"]) == ("config key 'train.device': got 'cuda'; that device is not present "
                                               "on this machine (devices here: auto, cpu)")
    assert error_of(["train.device=cuda:0"]).startswith("config key 'train.device': got 'cuda:0'; that device")
    assert error_of(["train.device=mps"]).startswith("config key 'train.device': got 'mps'; that device")
    for name in ("auto", "cpu"):
        assert load_config(None, [f"train.device={name}"])["train"]["device"] == name


def test_device_cuda_with_two_gpus(two_gpus, monkeypatch):
    for name in ("cuda", "cuda:0", "cuda:1"):
        assert load_config(None, [f"train.device={name}"])["train"]["device"] == name
    assert error_of(["train.device=cuda:2"]).startswith(
        "config key 'train.device': got 'cuda:2'; that device is not present on this machine "
        "(devices here: auto, cpu, cuda, cuda:0, cuda:1")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert load_config(None, ["train.device=mps"])["train"]["device"] == "mps"


# ---- files ----

def test_file_errors_name_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 0\nmodel:\n  bits: 20\ntrain: {epochs: 5}\n", encoding="utf-8")
    assert error_of([], f) == f"{f}:3: config key 'model.bits': got 20; expected one of 16, 32, 64, 128"
    assert load_config(f, ["model.bits=64"])["model"]["bits"] == 64  # an override fixes the file
    assert error_of(["model.bits=64", "train.epochs=ten"], f) == (  # an override's error: no file name
        "config key 'train.epochs': got 'ten'; expected an integer >= 1")
    f.write_text("model: {bits: 64}\ntrain:\n  epochs: ten\n", encoding="utf-8")
    assert error_of([], f) == f"{f}:3: config key 'train.epochs': got 'ten'; expected an integer >= 1"
    f.write_text("model: {bits: 64}\ndata:\n  format: mot\n  reader: {foo: 1}\n", encoding="utf-8")
    assert error_of([], f).startswith(f"{f}:4: config key 'data.reader.foo': unknown option of the mot reader")
    f.write_text("model: {bitz: 64}\n", encoding="utf-8")
    assert error_of([], f).startswith(f"{f}:1: unknown config key 'model.bitz'; known: backbone")


def test_unreadable_or_malformed_files(tmp_path):
    f = tmp_path / "c.yaml"
    assert error_of([], f) == f"config file {f} does not exist"
    assert error_of([], tmp_path).startswith(f"config file {tmp_path}: cannot read it")
    f.write_text("model: [1, 2\n", encoding="utf-8")
    assert error_of([], f).startswith(f"{f}:2: invalid YAML: ")
    f.write_text("- 1\n- 2\n", encoding="utf-8")
    assert error_of([], f) == f"{f}: expected a mapping at the top level, got list"
    f.write_text("model: {bits: 64}\nseed: 1\nmodel: {depth: 2}\n", encoding="utf-8")
    assert error_of([], f) == f"{f}:3: duplicate config key 'model' (first on line 1)"
    f.write_text("synth: " + "[" * 400 + "]" * 400 + "\n", encoding="utf-8")
    assert error_of([], f) == f"{f}: invalid YAML: values nested more than 32 levels deep"
    f.write_text("synth: &a {x: *a}\n", encoding="utf-8")
    assert error_of([], f).startswith(f"{f}: invalid YAML: an alias refers to its own anchor")
    f.write_text("model: {1: 2}\n", encoding="utf-8")
    assert error_of([], f) == f"{f}:1: config key 'model.1': keys must be text, got int 1"
    f.write_text("model: {bits: 64}\n", encoding="utf-16")
    assert error_of([], f) == f"config file {f}: file is UTF-16; save it as UTF-8"
    f.write_bytes(b"seed: 1\n# caf\xe9\n")
    assert error_of([], f) == f"{f}:2: config file is not UTF-8 (byte 0xe9); save it as UTF-8"
    f.write_bytes(b"seed: \x00\n")
    assert error_of([], f).startswith(f"{f}: invalid YAML: unacceptable character")
    f.write_bytes(b"\xef\xbb\xbfmodel: {bits: 64}\n")  # a UTF-8 BOM is fine
    assert load_config(f)["model"]["bits"] == 64
    f.write_text("", encoding="utf-8")
    assert load_config(f) == DEFAULTS


# ---- old runs ----

def test_complete_config_fills_old_runs_and_still_validates(no_gpu):
    old = json.loads(json.dumps(OLD_DEFAULTS))
    del old["model"]["recon_from"], old["train"]["log_every"], old["extract"]
    old["train"]["device"] = "cuda"  # trained on a GPU machine, loaded here: the device is not checked
    cfg = complete_config(old)
    assert cfg["model"]["recon_from"] == "block" and cfg["extract"] == OLD_DEFAULTS["extract"]
    assert cfg["train"]["device"] == "cuda"
    old["model"]["bits"] = 20
    with pytest.raises(ConfigError, match=r"^saved config: config key 'model.bits': got 20"):
        complete_config(old)
    with pytest.raises(ConfigError, match="saved config: expected a mapping"):
        complete_config([1])


# ---- the CLI ----

def test_cli_bad_override_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "X"), "--out", str(tmp_path / "Y"),
                                      "train.epochs=ten"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: config key 'train.epochs': got 'ten'; expected an integer >= 1"]
    assert not (tmp_path / "Y").exists()


def test_dumped_config_is_plain_yaml():
    cfg = load_config(SHIPPED[0], ["data.window=[-5, 4]"])
    assert yaml.safe_load(dump_config(cfg)) == cfg
