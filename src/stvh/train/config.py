"""Run configuration: a YAML file, defaults for every key, dotted overrides.

``load_config("configs/volleyball.yaml", ["model.bits=64", "train.epochs=5"])``
returns a plain nested dict. Override values are parsed as YAML scalars
(``1e-5`` → float, ``[11, 21]`` → list, ``none`` → None). Unknown keys are an
error, so a typo never silently does nothing.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)

DEFAULTS: dict = {
    "seed": 0,
    "data": {
        "format": None,          # detected when None
        "n_max": None,           # reader default (12 Volleyball, 13 CAD) when None
        "window": None,          # (first, last) frame offsets; reader default when None
        "val_fraction": 0.15,    # carved out of the train split, per visual group
        "reader": {},            # extra reader options, e.g. {merge_moving: true} for CAD
    },
    "model": {
        "name": "mstvh",
        "bits": 128,
        "depth": 3,
        "d": 1024,
        "d_v": 512,
        "heads": 8,
        "dropout": 0.1,
        "backbone": "none",
        "weights": None,
        "train_backbone": False,
        "geometry": False,       # extension: add box-geometry features to CNN RoI features
        "hash_norm": "layer",
        "recon_from": "block",   # M-STVH: L_recon decodes f_roi from the first block ("block") or code ("code")
    },
    "loss": {
        "acty": 1.0,
        "action": 0.5,
        "quant": 0.1,    # lambda1 / mu1 (Eq. 9 / 15)
        "contrast": 0.5, # lambda2 / mu2
        "recon": None,   # mu3: None = 0.01 for M-STVH models, 0 for STVH
        "layer_weights": None,
    },
    "train": {
        "epochs": 60,
        "batch_size": 8,
        "lr": 1.0e-5,
        "weight_decay": 0.0,
        "lr_steps": [],          # [[epoch, lr], ...]: from that (1-based) epoch on, use lr

        "grad_clip": 5.0,
        "select": "val_map@10",  # val_map@10 | val_mca
        "device": "auto",
        "log_every": 0,
    },
    "filter": {"steps": 400, "lr": 0.01},
    "extract": {"frame_size": None, "pca": None},  # used by `stvh demo` to build the cache
    "synth": {},                                    # generator options of `stvh demo`
}


FREE_SECTIONS = ("data.reader", "synth")  # options passed through to a reader / the generator


class ConfigError(ValueError):
    pass


def _merge(base: dict, update: dict, where: str = "", free: bool = False) -> dict:
    """Merge ``update`` into ``base``; keys must exist unless the section is free-form.

    The free-form sections (:data:`FREE_SECTIONS`) take any keys.
    """
    for key, value in update.items():
        if free and key not in base:
            base[key] = copy.deepcopy(value)
            continue
        if key not in base:
            raise ConfigError(f"unknown config key {where + key!r}; known: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {where + key!r} must be a mapping")
            _merge(base[key], value, f"{where}{key}.", free=free or where + key in FREE_SECTIONS)
        else:
            base[key] = value
    return base


def parse_override(text: str) -> dict:
    """``"a.b=3"`` → ``{"a": {"b": 3}}``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    value = _yaml(raw) if raw.strip() else None
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults ← YAML file ← overrides; returns a new nested dict."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        try:
            data = _yaml(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        _merge(cfg, data)
    for text in overrides:
        _merge(cfg, parse_override(text))
    return cfg


def complete_config(cfg: dict) -> dict:
    """Fill keys added since a run was saved with their defaults (old runs stay loadable)."""
    return _merge(copy.deepcopy(DEFAULTS), cfg)


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
