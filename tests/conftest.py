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
