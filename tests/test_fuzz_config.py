"""Fuzzed overrides and mutated config files: the only outcomes are a valid config or one-line ConfigError.

A valid config never holds NaN or an infinity, dumps to plain YAML that loads back equal, and
re-validates to itself.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stvh.train.config import DEFAULTS, ConfigError, complete_config, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


KEYS = sorted(_flat(DEFAULTS))
OPTION_KEYS = ["data.reader.window", "data.reader.n_max", "data.reader.videos", "data.reader.merge_moving",
               "data.reader.frames_per_clip", "data.reader.activities", "synth.jitter", "synth.size",
               "synth.frames", "synth.matches", "synth.occlusion", "synth.test_fraction"]
NON_FINITE = [".nan", ".NaN", ".inf", "-.inf", "+.inf", "1e400", "-1e400", "1.0e999"]
# Keys holding numbers, and how to place a non-finite value so that it is the only problem.
NUMERIC = {k: "{}" for k, v in _flat(DEFAULTS).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
NUMERIC.update({k: "{}" for k in ("data.n_max", "loss.recon", "extract.pca", "data.reader.n_max",
                                  "data.reader.frames_per_clip", "synth.jitter", "synth.frames", "synth.matches",
                                  "synth.occlusion", "synth.test_fraction")})
NUMERIC.update({"data.window": "[{}, 4]", "loss.layer_weights": "[1, {}, 1]", "train.lr_steps": "[[5, {}]]",
                "extract.frame_size": "[{}, 100]", "synth.size": "[100, {}]", "data.reader.window": "[-5, {}]"})
WORDS = NON_FINITE + ["nan", "inf", "none", "None", "null", "~", "true", "no", "[]", "{}", "[1, 2]", "[[1, 1e-5]]",
                      "{a: 1}", "0", "-1", "1.5", "'16'", "16", "64", "0x10", "1_000", "&a [*a]", "2020-01-01",
                      "!!python/object:os.system", "!!binary aGVsbG8=", "[.nan, 1]", "- 1", "a: b", "'", "[", "\t",
                      "cuda", "cuda:0", "cpu", "mps", "auto", "mot", "cad", "val_mca", "layer", "code", "block"]


def values():
    scalar = st.one_of(
        st.sampled_from(WORDS),
        st.text(max_size=12),
        st.integers(-10**20, 10**20).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )
    return st.one_of(scalar, st.lists(scalar, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"))


def yaml_float(x: float) -> str:
    return ".nan" if math.isnan(x) else (".inf" if x > 0 else "-.inf") if math.isinf(x) else repr(x)


CHOICES = {"model.name": ["stvh", "mstvh", "mstvh_bd", "mstvh_ed", "x"], "model.bits": ["16", "32", "64", "128", "20"],
           "model.backbone": ["none", "resnet18", "vgg16", "resnet"], "model.hash_norm": ["layer", "none", "batch"],
           "model.recon_from": ["block", "code", "x"], "train.select": ["val_map@10", "val_mca", "x"],
           "train.device": ["auto", "cpu", "cuda", "cuda:1", "gpu"], "data.format": ["volleyball", "mot", "none", "x"],
           "data.window": ["[-5, 4]", "[4, -5]", "[0]"], "loss.layer_weights": ["[1, 1, 1]", "[1, 2]", "none"],
           "train.lr_steps": ["[[3, 1e-4]]", "[[0, 1e-4]]", "[]"], "extract.frame_size": ["[64, 96]", "[0, 9]"],
           "synth.size": ["[96, 128]", "[32, 32]"], "data.reader.videos": ["[1, 2]", "[a]", "3"]}


def plausible(key: str):
    """Values of the right kind for ``key`` (often valid, sometimes just out of range)."""
    if key in CHOICES:
        return st.sampled_from(CHOICES[key])
    default = _flat(DEFAULTS).get(key)
    if isinstance(default, bool) or key.endswith(("merge_moving", "use_tracks", "require_frames")):
        return st.sampled_from(["true", "false", "yes", "1"])
    if isinstance(default, float) or key.startswith("synth.") and key != "synth.frames":
        return st.one_of(st.floats(-1, 3), st.sampled_from([math.nan, math.inf, -math.inf])).map(yaml_float)
    return st.integers(-2, 130).map(str)


def keys():
    return st.one_of(st.sampled_from(KEYS + OPTION_KEYS), st.text(max_size=10),
                     st.sampled_from(KEYS).map(lambda k: k + ".x"), st.sampled_from(["model", "data", "train"]))


def assert_valid(cfg: dict) -> None:
    """No non-finite float anywhere; plain YAML that loads back equal; validation is idempotent."""
    def walk(v):
        if isinstance(v, float):
            assert math.isfinite(v), cfg
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
    walk(cfg)
    assert set(cfg) == set(DEFAULTS)
    assert yaml.safe_load(dump_config(cfg)) == cfg
    assert complete_config(cfg) == cfg


def outcome(fn):
    try:
        cfg = fn()
    except ConfigError as exc:
        text = str(exc)
        assert text and "\n" not in text and "\r" not in text, text
        return None
    assert_valid(cfg)
    return cfg


pairs = st.one_of(st.tuples(keys(), values()),
                  st.sampled_from(KEYS + OPTION_KEYS).flatmap(lambda k: st.tuples(st.just(k), plausible(k))))


@SETTINGS
@given(st.lists(pairs, max_size=4))
def test_random_overrides_give_a_config_or_config_error(pairs):
    outcome(lambda: load_config(None, [f"{k}={v}" for k, v in pairs]))


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=3))
def test_random_override_text_gives_a_config_or_config_error(texts):
    outcome(lambda: load_config(None, texts))


@SETTINGS
@given(st.sampled_from(sorted(NUMERIC)), st.sampled_from(NON_FINITE))
def test_no_nan_or_inf_passes_any_numeric_key(key, word):
    override = f"{key}={NUMERIC[key].format(word)}"
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_every_numeric_key_rejects_nan(key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, [f"{key}={NUMERIC[key].format('.nan')}"])


SOURCES = [p.read_bytes() for p in sorted((REPO / "configs").glob("*.yaml"))]
SOURCES.append(dump_config(DEFAULTS).encode())
SWAPS = [b"ten", b"-1", b".nan", b".inf", b"[1, 2]", b"{a: 1}", b"null", b"true", b"'x'", b"", b"[", b"&a [*a]"]

mutation = st.one_of(
    st.tuples(st.just("delete_line"), st.integers(0, 200)),
    st.tuples(st.just("duplicate_line"), st.integers(0, 200)),
    st.tuples(st.just("swap_value"), st.integers(0, 200), st.sampled_from(SWAPS)),
    st.tuples(st.just("truncate"), st.integers(0, 2000)),
    st.tuples(st.just("insert_bytes"), st.integers(0, 2000), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("utf16"),),
    st.tuples(st.just("utf8_bom"),),
)


def mutate(data: bytes, op: tuple) -> bytes:
    kind = op[0]
    lines = data.split(b"\n")
    if kind == "delete_line":
        del lines[op[1] % len(lines)]
    elif kind == "duplicate_line":
        i = op[1] % len(lines)
        lines.insert(i, lines[i])
    elif kind == "swap_value":
        i = op[1] % len(lines)
        head, sep, _ = lines[i].partition(b": ")
        lines[i] = head + b": " + op[2] if sep else op[2]
    elif kind == "truncate":
        return data[:op[1] % (len(data) + 1)]
    elif kind == "insert_bytes":
        i = op[1] % (len(data) + 1)
        return data[:i] + op[2] + data[i:]
    elif kind == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    elif kind == "utf8_bom":
        return b"\xef\xbb\xbf" + data
    return b"\n".join(lines)


@SETTINGS
@given(st.sampled_from(SOURCES), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_files_give_a_config_or_config_error(source, ops):
    data = source
    for op in ops:
        data = mutate(data, op)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(data)
        if outcome(lambda: load_config(path)) is None and data.startswith((b"\xff\xfe", b"\xfe\xff")):
            with pytest.raises(ConfigError, match="UTF-(16|32); save it as UTF-8"):  # ff fe 00 00: UTF-32 BOM
                load_config(path)
