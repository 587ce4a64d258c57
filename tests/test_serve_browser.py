"""The search page in a real browser: headless Chromium (Debian's package) driven by Playwright.

The app runs under uvicorn on 127.0.0.1 (a free port) in a thread, one server
for the module. The tests pick a query clip, move the focus slider from visual
to activity (the results follow the API and the slider explains each depth),
open the attention maps, upload a clip, and check that a failed upload clears
the stale results; they walk the cards with the keyboard, watch a result's
preview play (its frames change over time), delete an added clip, and load
the page at a phone's 390 x 844 without horizontal scroll.

Browser: the session fixture ``chromium_browser`` (tests/conftest.py) skips
only when no Chromium is installed (``make test`` installs it when it can);
one that is installed but cannot start fails. Set ``STVH_SCREENSHOT=PATH`` and
``STVH_SCREENSHOT_PHONE=PATH`` to keep the screenshots (docs/serve.md's come
from them).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from test_serve_api import make_world, upload_parts  # the same tiny world as the API tests


@pytest.fixture(scope="module")
def server(chromium_browser, tmp_path_factory):
    """``(base url, world)`` of the app served by uvicorn in a thread, writes allowed on a copy of the index."""
    from stvh.serve import ServeSettings, create_app
    from stvh.serve.service import Service

    world = make_world(tmp_path_factory.mktemp("browser"))
    service = Service(ServeSettings(run=world["run"], index=world["index"], allow_writes=True))
    with serve_in_thread(create_app(service)) as url:
        yield url, world


@contextmanager
def serve_in_thread(asgi_app):
    """Serve ``asgi_app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(asgi_app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


class Watched:
    """A page in its own browser context, with the page errors, failed responses and foreign requests seen."""

    def __init__(self, browser, base: str, **context):
        self.context = browser.new_context(**{"viewport": {"width": 1400, "height": 1000}, **context})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.foreign: list[str] = []
        page = self.page
        page.on("pageerror", lambda e: self.problems.append(str(e)))
        page.on("console", lambda m: self.problems.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: self.foreign.append(r.url) if not r.url.startswith(base) else None)
        page.on("response", lambda r: self.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(base + "/")
        page.wait_for_selector("#clip-grid .card")

    def close(self, allowed: str = "") -> None:
        self.context.close()
        assert not self.foreign, f"the page requested other hosts: {self.foreign[:3]}"
        assert not [m for m in self.problems if not (allowed and allowed in m)], self.problems


@pytest.fixture
def watched(server, chromium_browser):
    """Opens watched pages on the module's server; closes them (and checks them) at the end of the test."""
    base, _ = server
    opened: list[tuple[Watched, str]] = []

    def open_page(allowed: str = "", **context) -> Watched:
        w = Watched(chromium_browser, base, **context)
        opened.append((w, allowed))
        return w

    yield open_page
    for w, allowed in opened:
        w.close(allowed)


# The page runs under the service's CSP (no 'unsafe-eval'): Playwright polls a wait_for_function predicate
# given as an expression string with eval, which the CSP blocks, so every predicate here is a function.


def hits(page) -> list[tuple[str, int]]:
    pairs = page.eval_on_selector_all("#results .hit", "els => els.map(e => [e.dataset.clip, +e.dataset.distance])")
    return [tuple(p) for p in pairs]


def sources(page) -> list[str]:
    """The ``src`` of every result's picture."""
    return page.eval_on_selector_all("#results .card img", "is => is.map(i => i.src)")


def active_clip(page) -> str | None:
    """The clip of the card that holds the keyboard focus."""
    return page.evaluate("(document.activeElement.closest('.card') || {dataset: {}}).dataset.clip || null")


def test_page_search_slider_attention_upload(server, watched, tmp_path):
    base, world = server
    import httpx

    query = world["clips"][0]
    clips = httpx.get(f"{base}/api/health").json()["clips"]
    api = {f: [(h["id"], h["distance"]) for h in httpx.post(f"{base}/api/search", json={
        "clip": query.id, "k": 10, "focus": f}).json()["results"]] for f in (1, 3)}
    assert api[1] != api[3]

    w = watched(allowed="422")  # the only error allowed is the bad upload's
    page = w.page
    assert page.locator("#clip-grid .card").count() == clips
    assert f"{clips} clips" in page.inner_text("#index-summary")

    # pick a query: results at the slider's start, visual focus; the query plays (its preview, not a still)
    page.click(f'#clip-grid .card[data-clip="{query.id}"]')
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '1'")
    assert hits(page) == api[1]
    assert "focus 1 of 3 (visual)" in page.inner_text("#focus-label")
    assert query.id in page.inner_text("#query-text")
    assert "/preview.webp" in page.get_attribute("#query-img", "src")
    help1 = page.inner_text("#focus-help")
    assert "Visual focus" in help1 and "same match" in help1 and "uniforms" in help1

    # slide to activity focus: the search re-runs, the results change, the explanation follows the slider
    page.focus("#focus")
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '3'")
    assert hits(page) == api[3] and hits(page) != api[1]
    assert "(activity)" in page.inner_text("#focus-label")
    assert "Activity focus" in page.inner_text("#focus-help") and "same group activity" in page.inner_text(
        "#focus-help")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '2'")
    help2 = page.inner_text("#focus-help")
    assert "Depth 2 of 3, between the two" in help2 and "50 %" in help2
    assert page.get_attribute("#focus", "aria-valuetext") == "focus 2 of 3, mixed"
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '3'")

    # the query's attention maps, on demand
    page.click("#show-attention")
    page.wait_for_selector("#attention:not([hidden])", timeout=30_000)
    assert page.eval_on_selector("#attention-img", "img => img.naturalWidth") > 600

    # a thumbnail really is an image
    page.wait_for_function("() => [...document.querySelectorAll('#results .hit img')].every(i => i.complete "
                           "&& i.naturalWidth > 0)")

    # upload a clip (a zip of frames + MOT tracks) and search with it
    parts = upload_parts(world["clips"][13], "zip")
    (tmp_path / "frames.zip").write_bytes(parts["frames"][1])
    (tmp_path / "tracks.txt").write_bytes(parts["tracks"][1])
    page.set_input_files("#u-media", str(tmp_path / "frames.zip"))
    page.set_input_files("#u-tracks", str(tmp_path / "tracks.txt"))
    before = hits(page)
    page.click("#u-search")
    page.wait_for_function("() => document.querySelector('#query-text').innerText.includes('uploaded clip')",
                           timeout=30_000)
    page.wait_for_function("() => document.querySelector('#query-img').complete && "
                           "document.querySelector('#query-img').naturalWidth > 0")
    assert "/api/queries/q" in page.get_attribute("#query-img", "src")  # the upload's own preview
    after = hits(page)
    assert len(after) == 10 and after != before
    assert "(predicted)" in page.inner_text("#query-text")
    # the slider re-runs the uploaded query too (by its token, without uploading again)
    page.focus("#focus")
    page.keyboard.press("Home")
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '1'")
    assert hits(page) != after or len(set(d for _, d in after)) == 1

    # writes are on: add the uploaded clip to the index; it joins the clip list (and the "upload" split)
    page.fill("#u-name", "from-browser")
    page.click("#u-add")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('added from-browser/')",
                           timeout=30_000)
    page.wait_for_function(f"() => document.querySelector('#page-info').innerText.includes('of {clips + 1}')")
    assert page.locator('#clip-grid .card[data-clip^="from-browser/"]').count() == 1
    assert "upload" in page.eval_on_selector_all("#f-split option", "os => os.map(o => o.value)")
    assert page.input_value("#focus") == "1"  # the slider stays where it was

    # a failed upload shows its error and clears the previous query's results (they are not this upload's)
    assert hits(page)
    page.set_input_files("#u-tracks", str(tmp_path / "frames.zip"))
    page.click("#u-search")
    page.wait_for_selector("#status.error")
    assert "422" in page.inner_text("#status") and "upload failed" in page.inner_text("#status")
    assert hits(page) == [] and page.get_attribute("#results", "data-focus") is None
    assert "empty" in page.get_attribute("#query-card", "class")
    page.focus("#focus")
    page.keyboard.press("End")  # no query: the slider searches nothing
    page.wait_for_timeout(150)
    assert hits(page) == []

    page.set_input_files("#u-tracks", str(tmp_path / "tracks.txt"))
    page.click("#u-search")
    page.wait_for_function("() => !document.querySelector('#status').classList.contains('error')")
    page.wait_for_function("() => document.querySelectorAll('#results .hit').length === 10")
    page.wait_for_function("() => [...document.querySelectorAll('#results .hit img')].every(i => i.complete "
                           "&& i.naturalWidth > 0)")
    page.evaluate("document.activeElement.blur()")
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("STVH_SCREENSHOT"):
        shutil.copy(shot, os.environ["STVH_SCREENSHOT"])


def test_cards_are_reached_and_picked_by_keyboard(server, watched):
    base, world = server
    page = watched().page
    ids = page.eval_on_selector_all("#clip-grid .card", "cs => cs.map(c => c.dataset.clip)")
    columns = page.evaluate("(() => { const cs = [...document.querySelectorAll('#clip-grid .card')];"
                            " return cs.filter(c => c.offsetTop === cs[0].offsetTop).length; })()")
    assert 1 < columns < len(ids)

    # Tab from the last filter lands on the first card; arrows move through the grid
    page.focus("#f-group")
    page.keyboard.press("Tab")
    assert active_clip(page) == ids[0]
    ring = page.eval_on_selector(f'#clip-grid .card[data-clip="{ids[0]}"]', "c => getComputedStyle(c).boxShadow")
    assert "191, 87, 0" in ring  # the visible focus ring (--focus)
    page.keyboard.press("ArrowRight")
    assert active_clip(page) == ids[1]
    page.keyboard.press("ArrowDown")
    assert active_clip(page) == ids[1 + columns]
    page.keyboard.press("ArrowLeft")
    assert active_clip(page) == ids[columns]

    # Enter picks the focused card
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '1'")
    assert ids[columns] in page.inner_text("#query-text")
    card = f'#clip-grid .card[data-clip="{ids[columns]}"] .pick'
    assert page.get_attribute(card, "aria-pressed") == "true"
    assert page.get_attribute(f'#clip-grid .card[data-clip="{ids[0]}"] .pick', "aria-pressed") == "false"
    assert ids[columns] in page.get_attribute(card, "aria-label")

    # a result is a button too: focusing it plays its preview, Space makes it the query
    first = hits(page)[0][0]
    page.focus("#results .card .pick")
    assert "/preview.webp" in page.get_attribute("#results .card img", "src")
    assert "result 1, distance" in page.get_attribute("#results .card .pick", "aria-label")
    page.keyboard.press(" ")
    page.wait_for_function(f"() => document.querySelector('#query-text').innerText.includes('clip {first}')")
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('top')")
    assert first not in [c for c, _ in hits(page)]  # a clip is left out of its own results


def test_a_result_plays_its_frames_on_hover(server, watched):
    base, world = server
    page = watched().page
    page.click(f'#clip-grid .card[data-clip="{world["clips"][2].id}"]')
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '1'")
    page.wait_for_function("() => [...document.querySelectorAll('#results .hit img')].every(i => i.complete "
                           "&& i.naturalWidth > 0)")
    page.wait_for_function("() => document.querySelector('#query-img').complete")
    img = page.locator("#results .card img").first
    assert "/keyframe.jpg" in img.get_attribute("src")  # still until hovered (play-all is off on a desktop)

    page.hover("#results .card .pick >> nth=0")
    assert "/preview.webp" in img.get_attribute("src")
    page.wait_for_function("() => (() => { const i = document.querySelector('#results .card img');"
                           " return i.src.includes('preview.webp') && i.complete && i.naturalWidth > 0; })()")
    shots = []
    for _ in range(4):  # the clip has 6 frames of 160 ms: shots 230 ms apart show different frames
        shots.append(img.screenshot())
        page.wait_for_timeout(230)
    assert len(set(shots)) >= 2, "the preview did not move"

    page.mouse.move(2, 2)  # leaving the card stops it
    assert "/keyframe.jpg" in img.get_attribute("src")
    page.check("#play-all")  # ... unless every result plays
    assert all("/preview.webp" in s for s in sources(page))


def test_an_added_clip_can_be_deleted(server, watched):
    base, world = server
    import httpx

    parts = upload_parts(world["clips"][5], "zip")
    added = httpx.post(f"{base}/api/clips", files=parts, data={"name": "to-delete"}, timeout=60)
    assert added.status_code == 201, added.text
    cid = added.json()["id"]
    clips = httpx.get(f"{base}/api/health").json()["clips"]

    page = watched().page
    page.select_option("#f-split", "upload")
    page.wait_for_selector(f'#clip-grid .card[data-clip="{cid}"]')
    # the unfiltered grid may still be shown (the new clip is on its first page too): wait for the filtered one
    page.wait_for_function("() => { const c = document.querySelectorAll('#clip-grid .card');"
                           " return c.length >= 1 && c.length === document.querySelectorAll('#clip-grid .card .delete').length; }")
    assert page.locator("#clip-grid .card").count() == page.locator("#clip-grid .card .delete").count() >= 1
    page.select_option("#f-split", "")
    page.wait_for_function(f"() => document.querySelector('#page-info').innerText.includes('of {clips}')")
    dataset_card = f'#clip-grid .card[data-clip="{world["clips"][0].id}"]'
    assert page.locator(f"{dataset_card} .delete").count() == 0  # dataset clips have no delete button

    # make the clip the query, then delete it: a dismissed confirmation keeps it, an accepted one removes it
    page.click(f'#clip-grid .card[data-clip="{cid}"] .pick')
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '1'")
    delete = f'#clip-grid .card[data-clip="{cid}"] .delete'
    page.once("dialog", lambda d: d.dismiss())
    page.click(delete)
    page.wait_for_timeout(300)
    assert httpx.get(f"{base}/api/clips/{cid}").status_code == 200
    assert page.locator(delete).count() == 1

    messages = []
    page.once("dialog", lambda d: (messages.append(d.message), d.accept()))
    page.click(delete)
    page.wait_for_function(f"() => document.querySelector('#status').innerText.includes('deleted {cid}')")
    assert cid in messages[0]
    page.wait_for_function(f"() => document.querySelector('#page-info').innerText.includes('of {clips - 1}')")
    assert page.locator(f'#clip-grid .card[data-clip="{cid}"]').count() == 0
    assert httpx.get(f"{base}/api/clips/{cid}").status_code == 404
    # it was the query: the results and the query card are cleared (waited for: the page redraws asynchronously)
    page.wait_for_function("() => !document.querySelector('#results .hit') && "
                           "document.querySelector('#query-card').classList.contains('empty')")
    assert hits(page) == [] and "empty" in page.get_attribute("#query-card", "class")


def test_page_fits_a_phone(server, watched, tmp_path):
    base, world = server
    page = watched(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True).page
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.eval_on_selector("#upload", "d => d.open") is False  # the form folds away on a narrow screen
    page.tap(f'#clip-grid .card[data-clip="{world["clips"][0].id}"] .pick')
    page.wait_for_function("() => document.querySelector('#results').dataset.focus === '1'")
    page.wait_for_function("() => [...document.querySelectorAll('#results .hit img')].every(i => i.complete "
                           "&& i.naturalWidth > 0)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    widest = page.evaluate("Math.max(...[...document.querySelectorAll('body *')].map(e => "
                           "e.getBoundingClientRect().right))")
    assert widest <= 390, f"an element reaches x = {widest}"
    columns = page.evaluate("(() => { const cs = [...document.querySelectorAll('#results .card')];"
                            " return cs.filter(c => c.offsetTop === cs[0].offsetTop).length; })()")
    assert columns == 2
    # nothing to hover on a touch screen: every result plays
    assert page.is_checked("#play-all")
    assert all("/preview.webp" in s for s in sources(page))
    shot = tmp_path / "phone.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("STVH_SCREENSHOT_PHONE"):
        shutil.copy(shot, os.environ["STVH_SCREENSHOT_PHONE"])


def test_a_chromium_that_cannot_start_fails_the_test(chromium_browser, tmp_path):
    from conftest import launch_chromium

    broken = tmp_path / "chromium"
    broken.write_text("#!/bin/sh\necho 'cannot open display' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(pytest.fail.Exception, match=f"chromium at {broken} is installed but cannot start"):
        launch_chromium(chromium_browser.browser_type, str(broken), timeout_ms=20_000)
