"""The search page in a real browser: headless Chromium (Debian's package) driven by Playwright.

The app runs under uvicorn on 127.0.0.1 (a free port) in a thread. The test
picks a query clip, moves the focus slider from visual to activity and checks
that the results change to what the API answers at each focus, opens the
attention maps, uploads a clip, and takes a screenshot. ``make test`` installs
Chromium when it is missing; where it cannot, this test skips with one line.
Set ``STVH_SCREENSHOT=PATH`` to keep the screenshot (docs/serve.md's comes from it).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from test_serve_api import make_world, upload_parts  # the same tiny world as the API tests

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                                                    "'stvh[dev]')")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(base url, world)`` of the app served by uvicorn in a thread, writes allowed on a copy of the index."""
    if CHROMIUM is None:
        pytest.skip("chromium not found: install Debian's package (`apt-get install chromium`; `make test` tries)")
    import uvicorn

    from stvh.serve import ServeSettings, create_app
    from stvh.serve.service import Service

    world = make_world(tmp_path_factory.mktemp("browser"))
    service = Service(ServeSettings(run=world["run"], index=world["index"], allow_writes=True))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", world
    srv.should_exit = True
    thread.join(10)
    sock.close()


def hits(page) -> list[tuple[str, int]]:
    pairs = page.eval_on_selector_all("#results .hit", "els => els.map(e => [e.dataset.clip, +e.dataset.distance])")
    return [tuple(p) for p in pairs]


def test_page_search_slider_attention_upload(server, tmp_path):
    base, world = server
    import httpx

    query = world["clips"][0]
    api = {f: [(h["id"], h["distance"]) for h in httpx.post(f"{base}/api/search", json={
        "clip": query.id, "k": 10, "focus": f}).json()["results"]] for f in (1, 3)}
    assert api[1] != api[3]

    with playwright_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except Exception as exc:  # noqa: BLE001 - an unusable browser is an environment problem, not a failure
            pytest.skip(f"chromium at {CHROMIUM} cannot start: {str(exc).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems, foreign = [], []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith((base, "data:")) else None)
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)

        page.goto(base + "/")
        page.wait_for_selector("#clip-grid .card")
        assert page.locator("#clip-grid .card").count() == 24
        assert "24 clips" in page.inner_text("#index-summary")

        # pick a query: results at the slider's start, visual focus
        page.click(f'#clip-grid .card[data-clip="{query.id}"]')
        page.wait_for_function("document.querySelector('#results').dataset.focus === '1'")
        assert hits(page) == api[1]
        assert "focus 1 of 3 (visual)" in page.inner_text("#focus-label")
        assert query.id in page.inner_text("#query-text")

        # slide to activity focus: the search re-runs and the results change
        page.focus("#focus")
        page.keyboard.press("End")
        page.wait_for_function("document.querySelector('#results').dataset.focus === '3'")
        assert hits(page) == api[3] and hits(page) != api[1]
        assert "(activity)" in page.inner_text("#focus-label")
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("document.querySelector('#results').dataset.focus === '2'")
        page.keyboard.press("End")
        page.wait_for_function("document.querySelector('#results').dataset.focus === '3'")

        # the query's attention maps, on demand
        page.click("#show-attention")
        page.wait_for_selector("#attention:not([hidden])", timeout=30_000)
        assert page.eval_on_selector("#attention-img", "img => img.naturalWidth") > 600

        # a thumbnail really is an image
        page.wait_for_function("[...document.querySelectorAll('#results .hit img')].every(i => i.complete "
                               "&& i.naturalWidth > 0)")

        # upload a clip (a zip of frames + MOT tracks) and search with it
        parts = upload_parts(world["clips"][13], "zip")
        (tmp_path / "frames.zip").write_bytes(parts["frames"][1])
        (tmp_path / "tracks.txt").write_bytes(parts["tracks"][1])
        page.set_input_files("#u-media", str(tmp_path / "frames.zip"))
        page.set_input_files("#u-tracks", str(tmp_path / "tracks.txt"))
        before = hits(page)
        page.click("#u-search")
        page.wait_for_function("document.querySelector('#query-text').innerText.includes('uploaded clip')",
                               timeout=30_000)
        page.wait_for_function("document.querySelector('#query-img').complete && "
                               "document.querySelector('#query-img').naturalWidth > 0")
        after = hits(page)
        assert len(after) == 10 and after != before
        assert "(predicted)" in page.inner_text("#query-text")
        # the slider re-runs the uploaded query too (by its token, without uploading again)
        page.focus("#focus")
        page.keyboard.press("Home")
        page.wait_for_function("document.querySelector('#results').dataset.focus === '1'")
        assert hits(page) != after or len(set(d for _, d in after)) == 1

        # writes are on: add the uploaded clip to the index; it joins the clip list (and the "upload" split)
        page.fill("#u-name", "from-browser")
        page.click("#u-add")
        page.wait_for_function("document.querySelector('#status').innerText.includes('added from-browser/')",
                               timeout=30_000)
        page.wait_for_function("document.querySelector('#page-info').innerText.includes('of 25')")
        assert page.locator('#clip-grid .card[data-clip^="from-browser/"]').count() == 1
        assert "upload" in page.eval_on_selector_all("#f-split option", "os => os.map(o => o.value)")
        assert page.input_value("#focus") == "1"  # the slider stays where it was

        # an error is shown, not thrown
        page.set_input_files("#u-tracks", str(tmp_path / "frames.zip"))
        page.click("#u-search")
        page.wait_for_selector("#status.error")
        assert "422" in page.inner_text("#status")

        page.set_input_files("#u-tracks", str(tmp_path / "tracks.txt"))
        page.click("#u-search")
        page.wait_for_function("!document.querySelector('#status').classList.contains('error')")
        page.wait_for_function("[...document.querySelectorAll('#results .hit img')].every(i => i.complete "
                               "&& i.naturalWidth > 0)")
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("STVH_SCREENSHOT"):
        shutil.copy(shot, os.environ["STVH_SCREENSHOT"])
    assert not foreign, f"the page requested other hosts: {foreign[:3]}"
    assert not [m for m in problems if "422" not in m], problems  # the only error is the bad upload
