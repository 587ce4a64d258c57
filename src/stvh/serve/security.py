"""What makes ``stvh serve`` safe to expose on a LAN: ASGI middleware and small checks.

* :class:`SecurityHeaders` -- ``X-Content-Type-Options: nosniff``, a CSP of
  ``default-src 'self'`` with ``frame-ancestors 'none'``, ``Referrer-Policy:
  no-referrer`` on every response;
* :class:`JsonErrors` -- an exception no handler took becomes a JSON 400
  (``MemoryError`` a 413), logged with an incident id: never a 5xx;
* :class:`RequestGuard` -- the ``Host`` header must be an IP address or a name
  of this service (DNS rebinding), and a write (any method but GET/HEAD/OPTIONS, except the
  read-only ``POST /api/search``) must come from the page's own origin or carry
  the token printed at start-up;
* :func:`json_depth` -- the nesting depth of a JSON text without parsing it;
* :func:`scrub_paths` -- the server's absolute paths out of an error message.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import socket
from typing import Iterable
from urllib.parse import urlsplit

import numpy as np
from starlette.responses import JSONResponse

log = logging.getLogger("stvh.serve")

CSP = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
# the docs pages: Swagger UI and ReDoc set inline styles (style attributes, <style> elements)
DOCS_CSP = CSP.replace("img-src", "style-src 'self' 'unsafe-inline'; img-src") + "; worker-src 'self' blob:"
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY")]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
READ_ONLY_POSTS = frozenset({"/api/search"})
TOKEN_HEADER = "x-stvh-token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
KINDS = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict",
         413: "too_large", 422: "invalid"}

# an absolute POSIX path of two or more parts (not an API route), or a Windows one
_PATH_RE = re.compile(r"(?<![\w.~/-])(?!/api/|/static/|/docs)(?:/[^\s'\"`,;:()<>\[\]{}/]+){2,}/?"
                      r"|\b[A-Za-z]:\\[^\s'\"`,;()<>]+")


def error(status: int, detail: str) -> JSONResponse:
    """The JSON error body ``{status, error, detail}``, with server paths removed from ``detail``."""
    return JSONResponse({"status": status, "error": KINDS.get(status, "error"), "detail": scrub_paths(detail)},
                        status_code=status)


def scrub_paths(text: str) -> str:
    """``text`` with every absolute file path replaced by its last part (no temp folders or index paths)."""
    return _PATH_RE.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)


def json_depth(body: bytes) -> int:
    """Deepest nesting of ``[`` / ``{`` in a JSON text, strings skipped (no parsing, linear time)."""
    text = re.sub(rb'"(?:[^"\\]|\\.)*"?', b"", body)  # an unterminated string runs to the end
    marks = np.frombuffer(text, np.uint8)
    steps = (np.isin(marks, (0x5B, 0x7B)).astype(np.int64) - np.isin(marks, (0x5D, 0x7D)))
    return int(np.cumsum(steps).max(initial=0))


def new_token() -> str:
    return secrets.token_urlsafe(24)


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """Names the ``Host`` header may give beside IP addresses (always taken: DNS rebinding needs a name):
    ``host`` and ``localhost``, the machine's own names when ``host`` is a wildcard (0.0.0.0, ::), and
    ``extra`` (``--allowed-host``); ``None`` (any) when ``extra`` holds ``*``."""
    extra = [h.strip().lower().strip("[]") for h in extra if h.strip()]
    if "*" in extra:
        return None
    names = {*LOOPBACK_NAMES, host.lower().strip("[]"), *extra}
    if host in ("0.0.0.0", "::", ""):
        names.update(_own_names())
    return frozenset(names)


def _own_names() -> set[str]:
    """This machine's host name and its fully qualified name."""
    return {n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n}


def is_address(name: str) -> bool:
    """Whether ``name`` is an IP address (a page cannot rebind one to another server: it has no DNS name)."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name part of a ``Host`` header or an origin's netloc: ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class SecurityHeaders:
    """Adds nosniff, Referrer-Policy, X-Frame-Options and a CSP (a looser one for ``/docs``) to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        docs = scope.get("path", "") in ("/docs", "/redoc")
        csp = (DOCS_CSP if docs else CSP).encode()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in {h for h, _ in HEADERS} | {b"content-security-policy"}]
                message = {**message, "headers": headers + HEADERS + [(b"content-security-policy", csp)]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class JsonErrors:
    """Any exception that reaches here becomes a JSON error (400; 413 for ``MemoryError``), never a 500.

    The traceback is logged with an incident id that the answer names; the
    client sees no message of the exception (it may hold server paths).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watch(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: answer JSON, log the traceback
            incident = secrets.token_hex(4)
            log.error("incident %s: %s %s failed", incident, scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise
            if isinstance(exc, MemoryError):
                response = error(413, f"the request needs more memory than the server can give (incident "
                                      f"{incident})")
            else:
                response = error(400, f"the request could not be processed ({type(exc).__name__}; incident "
                                      f"{incident} in the server log)")
            await response(scope, receive, send)


class RequestGuard:
    """Refuses a ``Host`` this service does not answer to (400), and a write from another origin (403).

    A write is any request but GET/HEAD/OPTIONS and ``POST /api/search``. It is
    accepted with the token (``Authorization: Bearer T`` or ``X-Stvh-Token: T``),
    or when its ``Origin`` is this service's own (same host and port as the
    ``Host`` header), or when it has no ``Origin`` and no cross-site
    ``Sec-Fetch-Site`` (a command-line client such as curl). Browsers send
    ``Origin`` with every cross-origin POST and DELETE, multipart forms
    included, which CORS does not stop: this check does.
    """

    def __init__(self, app, hosts: frozenset[str] | None, token: str | None):
        self.app = app
        self.hosts = hosts
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = host_name(host)
        if self.hosts is not None and name not in self.hosts and not is_address(name):
            response = error(400, f"Host {name!r} is not a name of this service; start it with "
                                  f"--allowed-host {name or 'NAME'} to answer to it")
            return await response(scope, receive, send)
        write = scope["method"] not in SAFE_METHODS and not (scope["method"] == "POST"
                                                              and scope["path"] in READ_ONLY_POSTS)
        if write:
            refusal = self.refusal(headers, host)
            if refusal:
                return await error(403, refusal)(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, headers: dict[str, str], host: str) -> str | None:
        """Why a write is refused, or ``None`` when it may go on."""
        given = headers.get(TOKEN_HEADER) or ""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = given or auth[7:].strip()
        if self.token and given:
            if secrets.compare_digest(given.encode(), self.token.encode()):
                return None
            return "the write token is wrong (use the token printed when the service started)"
        origin = headers.get("origin")
        if origin is None:
            if headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none"):
                return None
            return "a cross-site write was refused (send the token printed at start-up)"
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
        if netloc and netloc == host.strip().lower():
            return None
        return (f"a write from another origin ({origin[:100]}) was refused: only the service's own page may "
                f"write, or a client with the token printed at start-up (Authorization: Bearer TOKEN)")
