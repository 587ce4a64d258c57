"""``stvh serve --watch DIR`` (stvh.watch): footage copied into DIR becomes searchable without a restart.

Through FastAPI's test client (the app's lifespan starts and stops the watcher thread), on the serve tests'
tiny world and its data exported in the MOT layout (tests/test_ingest.py's ``footage`` fixture).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stvh.index.base import load_index
from stvh.ingest import ledger_path
from stvh.serve import ServeSettings, create_app
from stvh.serve.service import Service
from test_ingest import V0, V1, Counting, copy, encoder, footage  # noqa: F401 - fixtures

BASE = "http://127.0.0.1"


def wait_for(check, timeout: float = 30.0):
    """Poll ``check()`` until it returns a truthy value (the watcher runs in its own thread)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def settings(world, tmp_path: Path, drop: Path) -> ServeSettings:
    return ServeSettings(run=world["run"], index=tmp_path / "watched.npz", watch=drop, watch_poll=0.05,
                         watch_settle=0.2)


def test_a_copied_video_becomes_searchable_without_a_restart(serve_world, footage, encoder, tmp_path):  # noqa: F811
    drop = tmp_path / "drop"
    drop.mkdir()
    counting = Counting(encoder)
    with TestClient(create_app(Service(settings(serve_world, tmp_path, drop), encoder=counting)),
                    base_url=BASE) as c:
        assert c.get("/api/health").json()["clips"] == 0  # a new, empty index
        assert c.get("/api/index").json()["watch"] is True
        assert c.post("/api/search", json={"clip": V0[0]}).status_code == 404
        copy(footage, drop, names=("v0",))
        wait_for(lambda: c.post("/api/search", json={"clip": V0[0]}).status_code == 200)
        hits = c.post("/api/search", json={"clip": V0[0], "k": 20}).json()["results"]
        assert sorted(h["id"] for h in hits) == V0[1:] and {h["split"] for h in hits} == {"watch"}
        page = c.get("/api/clips", params={"new": "true"}).json()
        assert page["total"] == 7 and [r["id"] for r in page["clips"]] == V0
        detail = c.get(f"/api/clips/{V0[2]}").json()
        assert detail["source"] == "watch" and detail["group"] == "v0" and detail["frame_ids"][0] == 21
        assert c.get(f"/api/clips/{V0[2]}/keyframe.jpg").status_code == 200
        # a bad file is listed with its reason and stops nothing: the next video still comes in
        (drop / "tracks" / "bad.txt").write_text("1,1,10\n")
        shutil.copytree(footage / "frames" / "v1", drop / "frames" / "bad")
        copy(footage, drop, names=("v1",))
        def busy():  # while the watcher works: every answer is a 2xx or 4xx, never a 5xx
            answers = [c.get("/api/clips", params={"new": "true"}), c.get("/api/index"), c.get("/api/health"),
                       c.post("/api/search", json={"clip": V1[0], "k": 3}), c.get(f"/api/clips/{V1[1]}"),
                       c.post("/api/search", json={"clip": V0[1], "k": 30, "focus": 1})]
            assert all(r.status_code < 500 for r in answers), [r.text for r in answers if r.status_code >= 500]
            w = c.get("/api/watch").json()
            return w if w["skipped"] and w["new_clips"] == 14 else None

        status = wait_for(busy)
        assert status["skipped"][0]["file"] == str(drop / "tracks" / "bad.txt")
        assert status["skipped"][0]["reason"].startswith("line 1: malformed line")
        assert status["folder"] == str(drop) and status["error"] is None
        assert c.get("/api/clips", params={"new": "true", "limit": 100}).json()["total"] == 14
        service = c.app.state.service  # the catalogue grown row by row equals one rebuilt from the index
        grown = service.catalogue
        service.rebuild_catalogue()
        for key in ("ids", "activity", "group", "split"):
            assert getattr(grown, key).tolist() == getattr(service.catalogue, key).tolist(), key
        assert (grown.splits, grown.groups) == (service.catalogue.splits, service.catalogue.groups) == (
            ["watch"], ["v0", "v1"])
        assert c.get("/api/health").status_code == 200
    assert counting.clips[0] == "warm-up/000001" and sorted(counting.clips[1:]) == sorted(V0 + V1)  # warmed first
    assert sorted(load_index(tmp_path / "watched.npz").ids) == sorted(V0 + V1)  # saved
    ledger = json.loads(ledger_path(tmp_path / "watched.npz").read_text())
    assert {n: e["state"] for n, e in ledger["videos"].items()} == {"v0": "done", "v1": "done"}
    assert list(ledger["bad"]) == ["bad"]

    # a restart: the clips are there, nothing is encoded again, and none of them is "new"
    counting.clips = []
    with TestClient(create_app(Service(settings(serve_world, tmp_path, drop), encoder=counting)),
                    base_url=BASE) as c:
        assert c.get("/api/health").json()["clips"] == 14
        time.sleep(0.5)  # several scans
        assert counting.clips == ["warm-up/000001"]
        assert c.get("/api/clips", params={"new": "true"}).json()["total"] == 0
        assert c.get(f"/api/clips/{V1[0]}").json()["source"] == "watch"
        wait_for(lambda: c.get(f"/api/clips/{V1[0]}/keyframe.jpg").status_code == 200)  # records restored
        assert [s["video"] for s in c.get("/api/watch").json()["skipped"]] == ["bad"]


def test_without_watch_the_status_says_so(serve_world):
    with TestClient(create_app(Service(ServeSettings(run=serve_world["run"], index=serve_world["index"]))),
                    base_url=BASE) as c:
        assert c.get("/api/watch").json() == {"watching": False}
        assert c.get("/api/index").json()["watch"] is False
        assert c.get("/api/clips", params={"new": "true"}).json()["total"] == 0


@pytest.mark.parametrize("extra, words", [
    (["--watch", "MISSING"], "--watch"),
    (["--watch", "DROP", "--poll", "0"], "--poll"),
    (["--watch", "DROP", "--settle", "-1"], "--settle"),
    (["--detector", "hog"], "--detector, --region and --track-config go with --watch DIR"),
    (["--track-config", "MISSING"], "--detector, --region and --track-config go with --watch DIR"),
    (["--watch", "DROP", "--track-config", "MISSING"], "track settings file not found"),
    (["--watch", "DROP", "--detector", "MISSING"], "missing"),
])
def test_serve_watch_errors_are_one_line(serve_world, tmp_path, extra, words):
    from typer.testing import CliRunner

    from stvh.cli import app

    (tmp_path / "drop").mkdir()
    names = {"MISSING": str(tmp_path / "missing"), "DROP": str(tmp_path / "drop")}
    r = CliRunner().invoke(app, ["serve", "--run", str(serve_world["run"]), "--index", str(tmp_path / "i.npz"),
                                 *[names.get(a, a) for a in extra]])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: "), r.output
    assert words in r.output, r.output
    assert not (tmp_path / "i.npz").exists()  # a start that fails leaves no empty index behind


def test_the_page_shows_new_clips_and_skipped_files(serve_world, footage, encoder, chromium_browser,  # noqa: F811
                                                    tmp_path):
    """The page (headless Chromium): the "new" filter lists the clips that arrived; skipped files are listed."""
    from stvh.ingest import ingest_folder
    from test_serve_browser import Watched, serve_in_thread

    drop = tmp_path / "drop"
    copy(footage, drop, names=("v0",))
    ingest_folder(drop, serve_world["run"], tmp_path / "watched.npz", settle=0, encoder=encoder)  # there before
    service = Service(settings(serve_world, tmp_path, drop), encoder=encoder)
    with serve_in_thread(create_app(service)) as base:
        w = Watched(chromium_browser, base)
        page = w.page
        assert page.is_visible("#f-new") and page.locator("#clip-grid .card").count() == 7
        copy(footage, drop, names=("v1",))
        (drop / "tracks" / "bad.txt").write_text("1,1,10\n")
        shutil.copytree(footage / "frames" / "v1", drop / "frames" / "bad")
        page.wait_for_function("() => /7 new clips since start, 0 queued, 1 skipped/"
                               ".test(document.querySelector('#watch-summary').textContent)", timeout=60_000)
        page.check("#f-new")
        page.wait_for_function("() => document.querySelectorAll('#clip-grid .card').length === 7 && "
                               "document.querySelector('#clip-grid .card').dataset.clip === 'v1/000001'")
        assert page.eval_on_selector_all("#clip-grid .card", "cs => cs.map(c => c.dataset.clip)") == V1
        page.click("#watch summary")
        skipped = page.inner_text("#watch-skipped")
        assert f"{drop / 'tracks' / 'bad.txt'}: line 1: malformed line" in skipped
        page.uncheck("#f-new")
        page.wait_for_function("() => document.querySelectorAll('#clip-grid .card').length === 14")
        w.close()


def test_sigterm_stops_serve_watch_and_releases_the_index_lock(serve_world, tmp_path):
    """SIGTERM (a service manager's stop): uvicorn shuts down, then the lock beside the index is removed."""
    import signal
    import subprocess
    import sys

    from stvh.locks import holder, lock_path

    (tmp_path / "drop").mkdir()
    index = tmp_path / "i.npz"
    proc = subprocess.Popen([sys.executable, "-m", "stvh.cli", "serve", "--run", str(serve_world["run"]), "--index",
                             str(index), "--watch", str(tmp_path / "drop"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()  # "stvh serve: 0 clips, ..." once loaded, just before it listens
        assert first.startswith("stvh serve: 0 clips"), first
        assert holder(index)["command"] == "stvh serve --watch"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out = first + proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert not lock_path(index).exists() and index.exists() and "Traceback" not in out
