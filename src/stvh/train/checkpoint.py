"""Checkpoints: written atomically, read with a clear error when corrupt."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.atomic import atomic_path


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
