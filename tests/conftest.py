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


def chromium_path() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or ``None`` when it is not installed."""
    import shutil

    found = shutil.which("chromium")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def launch_chromium(browser_type, executable: str, timeout_ms: float = 60_000):
    """Launch ``executable`` headless with Playwright's ``browser_type``; a failure fails the test (not a skip)."""
    try:
        return browser_type.launch(executable_path=executable, headless=True, args=["--no-sandbox"],
                                   timeout=timeout_ms)
    except Exception as exc:  # noqa: BLE001 - reported as a failure, with the browser's own first line
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        pytest.fail(f"chromium at {executable} is installed but cannot start: {lines[0]}", pytrace=False)


@pytest.fixture(scope="session")
def chromium_browser():
    """A headless Chromium driven by Playwright, launched once per session.

    Skips (saying why) only when no Chromium executable is installed; when one is
    present, any failure to launch it fails the test that asked for it: a broken
    browser install must not pass silently as a skip.
    """
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium not found: install Debian's package (`apt-get install chromium`; `make test` tries)")
    from playwright.sync_api import sync_playwright  # a dev dependency, like pytest itself

    pw = sync_playwright().start()
    try:
        browser = launch_chromium(pw.chromium, executable)
    except BaseException:
        pw.stop()
        raise
    yield browser
    browser.close()
    pw.stop()


@pytest.fixture(scope="session")
def serve_world(tmp_path_factory) -> dict:
    """The serve tests' tiny world (data, run, seeded index; tests/test_serve_api.py), made once per session."""
    from test_serve_api import make_world

    return make_world(tmp_path_factory.mktemp("serve-world"))
