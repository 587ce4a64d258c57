"""``/docs`` (Swagger UI) and ``/redoc`` render in a real browser with the network blocked.

The app runs under uvicorn on 127.0.0.1 (a free port) in a thread; headless
Chromium (the ``chromium_browser`` session fixture of tests/conftest.py, which
skips only when no Chromium is installed) aborts every request that is not to
that address, so a page that needed a CDN would stay blank. The pages must
render the API's operations under the service's CSP, with no console error
(a CSP violation is one; the only one let through is ReDoc's hard-coded
logo, which the CSP blocks) and no request to another host.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest


@pytest.fixture(scope="module")
def docs_server(chromium_browser, serve_world):
    """Base URL of the app served by uvicorn in a thread."""
    import uvicorn

    from stvh.serve import ServeSettings, create_app
    from stvh.serve.service import Service

    service = Service(ServeSettings(run=serve_world["run"], index=serve_world["index"]))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


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
def test_docs_render_offline(chromium_browser, docs_server, path, ready):
    context, page, blocked, problems = _offline_page(chromium_browser, docs_server)
    try:
        response = page.goto(docs_server + path)
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
