"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "volleyball-sample"


@pytest.fixture
def volleyball_sample() -> Path:
    """The real Volleyball sample beside the repo; skip when it is absent."""
    if not (SAMPLE / "videos").is_dir():
        pytest.skip(f"real Volleyball sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (2 matches x 8 clips, T = 4, 90x160), made once per session."""
    from stvh.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, matches=2, clips_per_match=8, frames=4, size=(90, 160), progress=False, seed=3)
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny tensors run fastest (and most repeatably) on one thread."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
