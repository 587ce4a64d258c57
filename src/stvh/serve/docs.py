"""The API docs served by the service itself: Swagger UI at ``/docs``, ReDoc at ``/redoc``, no CDN.

The assets come from the ``fastapi-offline`` package, which ships Swagger UI 5
and ReDoc 2 builds (``swagger-ui-bundle.js``, ``swagger-ui.css``,
``redoc.standalone.js``); they are mounted at ``/docs-assets``. Swagger UI's
start-up is a separate script (``/docs-assets/init.js``, not inline), so the
pages work under the CSP ``default-src 'self'``; both read ``/openapi.json``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"

_SWAGGER_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stvh API - Swagger UI</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/static/favicon.svg">
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="{ASSETS}/init.js"></script></body></html>
"""

_REDOC_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stvh API - ReDoc</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/static/favicon.svg"></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="{ASSETS}/redoc.standalone.js"></script></body></html>
"""

_INIT_JS = """window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout"});
"""


def assets_dir() -> Path:
    """The folder of Swagger UI and ReDoc files that ``fastapi-offline`` ships."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs_routes(app: FastAPI) -> None:
    """``/docs`` (Swagger UI), ``/redoc`` and their assets; create the app with ``docs_url=None, redoc_url=None``."""
    @app.get(f"{ASSETS}/init.js", include_in_schema=False)  # before the mount, which would take its path
    async def swagger_init():
        return Response(_INIT_JS, media_type="text/javascript")

    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger():
        return HTMLResponse(_SWAGGER_PAGE)

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return HTMLResponse(_REDOC_PAGE)
