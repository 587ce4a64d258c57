"""The FastAPI app of ``stvh serve``: JSON API under ``/api``, the search page at ``/``, OpenAPI at ``/docs``.

=======  =====================================  ====================================================
method   path                                   what
=======  =====================================  ====================================================
GET      /api/health                            liveness, clip count
GET      /api/index                             size, bits, depth, mode, engine, storage (Eq. 18)
GET      /api/clips                             indexed clips, paged; filters split, activity, group, new
GET      /api/watch                             --watch DIR: new clips, queued, waiting and skipped files
GET      /api/clips/{id}                        labels, boxes (T, persons, 4), split
GET      /api/clips/{id}/keyframe.jpg           key frame with boxes (cached)
GET      /api/clips/{id}/attention.png          O-MFAT / G-MFAT maps (Fig. 11)
GET      /api/clips/{id}/preview.webp           the clip's frames with boxes, animated (previews.py)
POST     /api/search                            by clip id, upload token, hex codes, or an upload
GET      /api/queries/{token}/keyframe.jpg      key frame of an uploaded query
GET      /api/queries/{token}/attention.png     its attention maps
GET      /api/queries/{token}/preview.webp      its frames with boxes, animated
POST     /api/clips                             add an uploaded clip (--allow-writes)
DELETE   /api/clips/{id}                        remove a clip (--allow-writes)
=======  =====================================  ====================================================

Errors are JSON ``{"status", "error", "detail"}``: 404 unknown id, 409 taken
name, 403 writes disabled or from another origin, 413 over an upload limit,
422 bad parameter or malformed upload (the message names the uploaded file and
line), 400 anything else; never a 5xx (``security.py``). ``/docs`` and
``/redoc`` are served from the package's own assets (``docs.py``).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from .docs import add_docs_routes
from .previews import add_preview_routes
from .schemas import (SEARCH_FORM_SCHEMA, ClipDetail, ClipPage, ErrorBody, Health, IndexInfo, SearchRequest,
                      SearchResponse)
from .security import JsonErrors, RequestGuard, SecurityHeaders, allowed_hosts, error, json_depth
from .service import Service, ServiceError
from .uploads import UploadedFile, UploadError, check_name, remove_tree

STATIC = Path(__file__).resolve().parent / "static"
ERRORS = {s: {"model": ErrorBody} for s in (400, 403, 404, 409, 413, 422)}
JSON_MAX_BYTES = 1 << 20    # a JSON search body (a clip id, a token or hex codes) is far smaller
JSON_MAX_DEPTH = 32         # nesting refused before parsing: deep nesting would exhaust the parser's recursion
_INT_RE = re.compile(r"-?[0-9]{1,18}")
IMAGE_CACHE = {"Cache-Control": "public, max-age=3600"}
log = logging.getLogger("stvh.serve")


def _validation_detail(errors: list[dict]) -> str:
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else e.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"


def _file(part) -> UploadedFile | None:
    if part is None or isinstance(part, str):
        return None
    return UploadedFile(part.filename or "", part.file)


class DeclaredSizeLimit:
    """A request that declares a body over ``max_bytes`` (``Content-Length``) gets the typed JSON 413 at once,
    before a byte of it is read; bodies without the header are cut by the routes' ``max_body_size``."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_bytes:
                response = error(413, f"the request body ({int(length)} bytes) is larger than the upload limit of "
                                      f"{self.max_bytes} bytes")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(service: Service) -> FastAPI:
    """The app around a loaded :class:`Service`."""
    limits = service.settings.limits
    started = time.time()

    @asynccontextmanager
    async def lifespan(_):
        import asyncio

        if service.watcher is not None:  # --watch DIR: ingests in a thread, adds on this loop (stvh.watch)
            service.watcher.start(asyncio.get_running_loop())
        yield
        if service.watcher is not None:
            await asyncio.to_thread(service.watcher.stop)  # off the loop: the thread may wait on it
        service.close()  # uploaded queries' temporary folders

    app = FastAPI(title="stvh", version="1", summary="Search group-activity footage by example, at a focus from "
                  "visual (depth 1) to activity (deepest).", responses=ERRORS, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    settings = service.settings
    app.add_middleware(DeclaredSizeLimit, max_bytes=limits.max_bytes)   # innermost of the four
    app.add_middleware(RequestGuard, hosts=allowed_hosts(settings.host, settings.allowed_hosts),
                       token=service.token)
    app.add_middleware(JsonErrors)
    app.add_middleware(SecurityHeaders)                                 # outermost: every answer gets the headers

    @app.exception_handler(ServiceError)
    async def _service_error(_, exc: ServiceError):
        return error(exc.status, exc.message)

    @app.exception_handler(UploadError)
    async def _upload_error(_, exc: UploadError):
        return error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def _http_error(_, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Image.DecompressionBombError)
    async def _bomb(_, exc):
        return error(413, f"an image is too large to decode ({exc}); see --max-frame-mp")

    @app.exception_handler(RecursionError)
    async def _deep(_, exc):
        return error(422, "the request is nested too deeply")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, exc: RequestValidationError):
        body = {"status": 422, "error": "invalid", "detail": _validation_detail(exc.errors()),
                "errors": jsonable_encoder(exc.errors(), exclude={"input", "ctx"})}
        return JSONResponse(body, status_code=422)

    # ------------------------------------------------------------------ page
    add_docs_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    # ------------------------------------------------------------------ reading
    @app.get("/api/health", response_model=Health, tags=["service"])
    async def health():
        return {"status": "ok", "clips": len(service.index), "model": str(service.encoder.cfg["model"]["name"]),
                "writes": service.settings.allow_writes, "uptime_s": round(time.time() - started, 1)}

    @app.get("/api/index", response_model=IndexInfo, tags=["service"])
    async def index_info():
        idx = service.index
        engine = idx.engine(detail=True) if hasattr(idx, "engine") else None
        return {**idx.describe(), "engine": engine, "storage": idx.storage(), **service.facets(),
                "focus_names": [service.focus_name(f) for f in range(1, idx.depth + 1)],
                "allow_writes": service.settings.allow_writes, "watch": service.watcher is not None,
                "limits": vars(limits),
                "clip_frames": service.frames_per_clip, "clip_persons": service.n_max}

    @app.get("/api/clips", response_model=ClipPage, tags=["clips"])
    async def list_clips(offset: int = Query(0, ge=0), limit: int = Query(48, ge=1, le=1000),
                         split: Optional[str] = None, activity: Optional[str] = Query(None, description="name or id"),
                         group: Optional[str] = None,
                         new: bool = Query(False, description="only clips ingested from --watch DIR since start")):
        return JSONResponse(service.list_clips(offset=offset, limit=limit, split=split, activity=activity,
                                               group=group, new=new))

    @app.get("/api/watch", tags=["service"])
    async def watch():
        """``--watch DIR``: the folder, clips ingested since start, queued and waiting videos, skipped files
        (``{"watching": false}`` without ``--watch``)."""
        return JSONResponse(service.watch_status())

    @app.get("/api/clips/{clip_id:path}/keyframe.jpg", tags=["clips"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def keyframe(clip_id: str, width: int = Query(320, ge=32, le=1280)):
        return Response(service.keyframe(clip_id, width), media_type="image/jpeg", headers=IMAGE_CACHE)

    @app.get("/api/clips/{clip_id:path}/attention.png", tags=["clips"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def attention(clip_id: str):
        return Response(service.attention(clip_id), media_type="image/png", headers=IMAGE_CACHE)

    @app.get("/api/queries/{token}/keyframe.jpg", tags=["search"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def query_keyframe(token: str, width: int = Query(320, ge=32, le=1280)):
        return Response(service.query_keyframe(token, width), media_type="image/jpeg", headers=IMAGE_CACHE)

    @app.get("/api/queries/{token}/attention.png", tags=["search"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def query_attention(token: str):
        return Response(service.query_attention(token), media_type="image/png", headers=IMAGE_CACHE)

    add_preview_routes(app, service)  # .../preview.webp (animated frames): before the catch-all {clip_id:path}

    @app.get("/api/clips/{clip_id:path}", response_model=ClipDetail, tags=["clips"])
    async def clip_detail(clip_id: str):
        return JSONResponse(service.clip_detail(clip_id))

    # ------------------------------------------------------------------ search
    @app.post("/api/search", response_model=SearchResponse, tags=["search"], max_body_size=limits.max_bytes,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": SearchRequest.model_json_schema()},
                  "multipart/form-data": {"schema": SEARCH_FORM_SCHEMA}}}})
    async def search(request: Request):
        """Top-k clips by Hamming distance at ``focus``.

        JSON ``{clip | query | codes, k, focus}``, or a multipart form with the
        same fields, or with an upload (``tracks`` + ``video`` or ``frames``)
        that is encoded on the fly; an upload's answer carries a ``query.token``
        for searching it again (other focus or k) without uploading it again.
        """
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            form = await request.form(max_files=3, max_fields=12)
            fields = {key: form.get(key) for key in ("clip", "query", "codes", "k", "focus")
                      if isinstance(form.get(key), str) and form.get(key) != ""}
            for key in ("k", "focus"):  # form fields are text: a decimal integer, anything else stays text
                if key in fields and _INT_RE.fullmatch(fields[key].strip()):
                    fields[key] = int(fields[key])
            if "codes" in fields:
                fields["codes"] = [c.strip() for c in fields["codes"].split(",")]
            params = _search_params(fields)
            tracks, video, frames = (_file(form.get(key)) for key in ("tracks", "video", "frames"))
            if tracks or video or frames:
                if tracks is None:
                    raise ServiceError(422, "an upload needs a 'tracks' file (MOT lines frame,id,x,y,w,h[,conf])")
                if params.clip or params.query or params.codes:
                    raise ServiceError(422, "give either an upload or clip/query/codes, not both")
                root = service.new_query_root()
                try:
                    clip, codes, act, _ = await run_in_threadpool(service.encode_upload, root, "query", tracks=tracks,
                                                                  video=video, frames=frames)
                except BaseException:
                    remove_tree(root)
                    raise
                params.query = service.add_query(clip, codes, act, root)
        elif ctype.startswith("application/json") or not ctype:
            params = _search_params(await _json_body(request))
        else:
            raise ServiceError(422, f"unsupported content type {ctype!r}: send JSON or a multipart form")
        return JSONResponse(service.search(clip=params.clip, query=params.query, codes=params.codes, k=params.k,
                                           focus=params.focus))

    # ------------------------------------------------------------------ writes
    @app.post("/api/clips", response_model=ClipDetail, status_code=201, tags=["clips"],
              max_body_size=limits.max_bytes)
    async def add_clip(tracks: UploadFile = File(..., description="MOT tracks: frame,id,x,y,w,h[,conf]"),
                       video: Optional[UploadFile] = File(None, description="a short video (.mp4/.avi/.mkv/.mov)"),
                       frames: Optional[UploadFile] = File(None, description="or a zip of frames 000001.jpg, ..."),
                       name: Optional[str] = Form(None, description="video name of the new clip (letters, digits, "
                                                                    "_ and -); default upload-<random>"),
                       group: Optional[str] = Form(None, description="visual group (default: the name)")):
        """Encode an uploaded clip and add it to the index (saved atomically); its activity is the model's
        prediction. Needs ``--allow-writes``."""
        service.check_writable()
        name = check_name(name) if name else f"upload-{secrets.token_hex(4)}"
        group = (group or name).strip()
        if not group or len(group) > 64 or not group.isprintable() or "," in group:
            raise ServiceError(422, f"group {group!r} must be 1-64 printable characters without ','")
        service.check_new_name(name)
        staging = service.staging_root()
        try:
            clip, codes, act, _ = await run_in_threadpool(service.encode_upload, staging, name, tracks=_file(tracks),
                                                          video=_file(video), frames=_file(frames))
            async with service.write_lock:
                stored = service.commit_upload(staging, name, clip, codes, act, group)
                try:
                    await run_in_threadpool(service.save_index)
                except BaseException:
                    remove_tree(service.remove_clip(stored.id) or staging)
                    raise
        except BaseException:
            remove_tree(staging)
            raise
        return JSONResponse({**service.clip_detail(stored.id), "codes": [bytes(c).hex() for c in codes]},
                            status_code=201)

    @app.delete("/api/clips/{clip_id:path}", tags=["clips"], responses={200: {"content": {"application/json": {}}}})
    async def delete_clip(clip_id: str):
        """Remove a clip from the index (saved atomically); an uploaded clip's files go too. Needs
        ``--allow-writes``; dataset files are never touched."""
        service.check_writable()
        async with service.write_lock:
            folder = service.remove_clip(clip_id)
            await run_in_threadpool(service.save_index)
        if folder is not None:
            remove_tree(folder)
        return {"removed": clip_id, "clips": len(service.index)}

    return app


async def _json_body(request: Request):
    """The request's JSON, refused (413/422) when over ``JSON_MAX_BYTES`` or nested deeper than ``JSON_MAX_DEPTH``."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > JSON_MAX_BYTES:
            raise ServiceError(413, f"a JSON search body is at most {JSON_MAX_BYTES} bytes")
    if json_depth(bytes(raw)) > JSON_MAX_DEPTH:
        raise ServiceError(422, f"the JSON body is nested more than {JSON_MAX_DEPTH} levels deep")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ServiceError(422, "the body is not valid JSON") from None


def _search_params(body) -> SearchRequest:
    if not isinstance(body, dict):
        raise ServiceError(422, "the search body must be a JSON object")
    try:
        return SearchRequest.model_validate(body)
    except ValidationError as exc:
        raise ServiceError(422, _validation_detail(exc.errors())) from None
