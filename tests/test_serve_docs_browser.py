"""The service in a real browser: ``/docs`` and ``/redoc`` offline, and a page of another origin that writes.

The app runs under uvicorn on 127.0.0.1 (a free port) in a thread; headless
Chromium (the ``chromium_browser`` session fixture of tests/conftest.py, which
skips only when no Chromium is installed) aborts every request that is not to
that address, so a page that needed a CDN would stay blank. The pages must
render the API's operations under the service's CSP, with no console error
(a CSP violation is one; the only one let through is ReDoc's hard-coded
logo, which the CSP blocks) and no request to another host.

A page of another origin (``http://localhost:9``, served by Playwright's router)
posts a valid upload to ``POST /api/clips`` as a multipart form, the request
CORS lets through: the service answers 403 and the index keeps its size.
"""

from __future__ import annotations

import base64
import shutil

import pytest

from test_serve_browser import serve_in_thread  # uvicorn on 127.0.0.1 in a thread

ATTACKER = "http://localhost:9"  # another origin than the service's http://127.0.0.1:PORT


@pytest.fixture(scope="module")
def served(chromium_browser, serve_world, tmp_path_factory):
    """``(base URL, service)`` of the app served by uvicorn in a thread, writes allowed on a copy of the index."""
    from stvh.serve import ServeSettings, create_app
    from stvh.serve.service import Service

    tmp = tmp_path_factory.mktemp("docs-browser")
    shutil.copy(serve_world["index"], tmp / "index.npz")
    service = Service(ServeSettings(run=serve_world["run"], index=tmp / "index.npz", allow_writes=True,
                                    uploads=tmp / "uploads"))
    with serve_in_thread(create_app(service)) as url:
        yield url, service


def _offline_page(browser, base: str):
    """A page whose requests to anything but ``base`` are aborted; returns (context, page, blocked, problems)."""
    context = browser.new_context()
    page = context.new_page()
    blocked: list[str] = []
    problems: list[str] = []

    def route(r):
        if r.request.url.startswith(base + "/") or r.request.url == base:
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return context, page, blocked, problems


@pytest.mark.parametrize("path, ready", [
    ("/docs", ".swagger-ui .opblock-summary-path[data-path='/api/search']"),
    ("/redoc", "[data-section-id$='operation/search_api_search_post'] h2"),
])
def test_docs_render_offline(chromium_browser, served, path, ready):
    base = served[0]
    context, page, blocked, problems = _offline_page(chromium_browser, base)
    try:
        response = page.goto(base + path)
        assert response.status == 200
        assert "default-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_selector(ready, timeout=30_000)
        text = page.content()
        for operation in ("/api/health", "/api/clips", "/api/search"):
            assert operation in text, f"{path} does not show {operation}"
    finally:
        context.close()
    assert not blocked, f"{path} asked for other hosts: {blocked[:3]}"
    # ReDoc's sidebar hard-codes its maker's logo from a CDN: the CSP blocks it (no request leaves), and says so
    problems = [m for m in problems if not ("logo-mini.svg" in m and "Content Security Policy" in m)]
    assert not problems, f"{path} logged errors: {problems[:3]}"


def test_a_page_of_another_origin_cannot_write(chromium_browser, served, serve_world):
    from test_serve_api import upload_parts

    base, service = served
    parts = upload_parts(serve_world["clips"][2], "zip")  # a valid clip: a server without the check adds it
    context = chromium_browser.new_context()
    # Chromium's own Local Network Access check would stop the request before the service sees it; other
    # browsers have none, so the page is let through to show what the service does
    context.grant_permissions(["local-network-access"], origin=ATTACKER)
    page = context.new_page()
    page.route(ATTACKER + "/**", lambda r: r.fulfill(status=200, content_type="text/html",
                                                          body="<!doctype html><title>another site</title>"))
    page.goto(ATTACKER + "/")
    seen: list[tuple[str, str, int]] = []
    page.on("response", lambda r: seen.append((r.request.method, r.url, r.status)) if r.url.startswith(base) else None)
    before = len(service.index)
    try:
        page.evaluate("""async ([url, tracks, frames]) => {
            const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const form = new FormData();
            form.append("tracks", new Blob([bytes(tracks)]), "tracks.txt");
            form.append("frames", new Blob([bytes(frames)]), "frames.zip");
            form.append("name", "evil");
            await fetch(url, {method: "POST", body: form, mode: "no-cors"});  // a 'simple' request: sent as is
        }""", [base + "/api/clips", base64.b64encode(parts["tracks"][1]).decode(),
               base64.b64encode(parts["frames"][1]).decode()])
        page.wait_for_timeout(200)  # the response event
    finally:
        context.close()
    assert ("POST", base + "/api/clips", 403) in seen, seen  # the browser sent it; the service refused it
    assert len(service.index) == before and "evil/" not in " ".join(service.index.ids)
