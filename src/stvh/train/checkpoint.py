"""Checkpoints and run files: written atomically, read with a one-line error naming the file.

* :func:`save_checkpoint` serialises in memory, then writes the bytes through
  :func:`stvh.data.atomic.atomic_path`: a full disk is an ``OSError`` naming
  the checkpoint (torch's own file writer would raise a ``RuntimeError``
  naming nothing) and no half-written file is left.
* :func:`read_run_info` reads ``RUN/run.json`` (corrupt, not an object, keys
  missing: one line naming the file and the keys).
* :func:`check_resume_config` refuses an override on ``--resume`` that would
  change the model's parameters, before anything is built.
* :func:`check_same_model` refuses a checkpoint whose model differs from the
  run's (a ``best.pt`` copied from another run), naming the file and the keys.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ..data.atomic import atomic_path


class CheckpointError(RuntimeError):
    pass


# run.json keys every reader of a run relies on
RUN_KEYS = ("data", "activities", "actions")
# config keys outside ``model`` that change the model's parameters (F trained with the model)
_SHAPE_KEYS = (("loss", "filter"),)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` into memory, then write the bytes atomically (temporary file + rename)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a stvh checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:120]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not a stvh checkpoint (no model/config entries)")
    return state


def read_run_info(run: str | Path, required=RUN_KEYS) -> dict:
    """``RUN/run.json`` as a dict; :class:`CheckpointError` naming the file when missing, corrupt or incomplete."""
    path = Path(run) / "run.json"
    if not path.is_file():
        raise CheckpointError(f"{run} is not a run folder (run.json missing); train one with `stvh train`")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is corrupt (not UTF-8 text); it is written by `stvh train`") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}:{getattr(exc, 'lineno', '?')}: corrupt run file, not valid JSON "
                              f"({getattr(exc, 'msg', exc)})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} is corrupt (a JSON object is expected, got {type(info).__name__})")
    missing = [k for k in required if k not in info]
    if missing:
        raise CheckpointError(f"{path} lacks key(s) {', '.join(missing)} (written by `stvh train`; the run "
                              "folder is damaged or from another program)")
    return info


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _model_keys(cfg: dict) -> dict:
    keys = _flat(cfg.get("model") or {}, "model.")
    for section, key in _SHAPE_KEYS:
        keys[f"{section}.{key}"] = (cfg.get(section) or {}).get(key)
    return keys


def model_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """``[(key, value in a, value in b)]`` of the keys that define the model (``model.*``, ``loss.filter``)."""
    ka, kb = _model_keys(a), _model_keys(b)
    return [(k, ka.get(k), kb.get(k)) for k in sorted(set(ka) | set(kb)) if ka.get(k) != kb.get(k)]


def check_resume_config(saved: dict, resumed: dict) -> None:
    """Refuse ``--resume RUN key=value`` overrides that change the model (its parameters' shapes)."""
    diff = model_differences(resumed, saved)
    if diff:
        shown = "; ".join(f"{k}={_show(new)} differs from the run's {_show(old)}" for k, new, old in diff)
        raise CheckpointError(f"--resume keeps the run's model; {shown} (start a new --out instead)")


def check_same_model(path: str | Path, state_cfg: dict, run_cfg: dict) -> None:
    """Refuse checkpoint ``path`` whose model config differs from the run's ``config.yaml``."""
    diff = model_differences(state_cfg, run_cfg)
    if diff:
        shown = ", ".join(f"{k} is {_show(mine)} (the run's config.yaml: {_show(theirs)})"
                          for k, mine, theirs in diff[:3])
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise CheckpointError(f"checkpoint {path} holds another model than its run: {shown}{more}; it was copied "
                              "from another run? train again or restore the run's own checkpoint")


def _show(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
