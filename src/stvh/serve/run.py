"""Start the service: load the run and the index once, then serve with uvicorn."""

from __future__ import annotations

import ipaddress
from typing import Callable

from .settings import ServeSettings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: ServeSettings, echo: Callable[[str], None] = print) -> None:
    """Load everything, print where the page is, and serve until interrupted."""
    import uvicorn

    from .app import create_app
    from .service import Service

    service = Service(settings)
    app = create_app(service)
    if not is_loopback(settings.host):
        echo(f"warning: listening on {settings.host}: anyone who can reach it can search"
             + (" (changes to the index need the token below, or this service's own page)"
                if settings.allow_writes else ""))
    echo(f"stvh serve: {len(service.index)} clips, {service.index.bits} bits, depth {service.index.depth}; "
         f"page at http://{settings.host}:{settings.port}/ , API docs at /docs"
         + ("" if settings.allow_writes else " (read-only; --allow-writes to add/remove clips)"))
    if settings.watch is not None:
        echo(f"watching {settings.watch}: new footage is added to {settings.index} (docs/live.md)")
    if settings.allow_writes:
        echo(f"writes: from this page, or with the header 'Authorization: Bearer {service.token}'"
             + (" (from --token)" if settings.token else ""))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
