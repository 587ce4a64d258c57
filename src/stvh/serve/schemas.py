"""The API's JSON shapes (pydantic), for the OpenAPI schema at ``/docs`` and request validation."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, StrictInt

MAX_K = 10_000  # results of one search


class ErrorBody(BaseModel):
    """Every error: its HTTP ``status``, a short ``error`` kind and a one-line ``detail``."""

    status: int
    error: str = Field(description="bad_request | forbidden | not_found | method_not_allowed | conflict | "
                                   "too_large | invalid")
    detail: str


class Health(BaseModel):
    status: str
    clips: int
    model: str
    writes: bool
    uptime_s: float


class IndexInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    clips: int
    bits: int
    depth: int
    mode: str
    backend: str
    engine: Optional[str] = None
    storage: dict
    activities: list[str]
    splits: list[str]
    groups: list[str]
    focus_names: list[str]
    allow_writes: bool
    limits: dict
    clip_frames: int
    clip_persons: int


class ClipRow(BaseModel):
    id: str
    activity: int = Field(description="activity id; -1 unlabeled")
    activity_name: Optional[str] = None
    group: str = Field(description="visual group (match / video)")
    split: str


class ClipPage(BaseModel):
    total: int
    offset: int
    limit: int
    clips: list[ClipRow]


class ClipDetail(ClipRow):
    model_config = ConfigDict(extra="allow")
    source: str = Field(description="dataset | upload")
    frames: Optional[int] = None
    persons: Optional[int] = None
    image_size: Optional[list[int]] = Field(None, description="(height, width)")
    key_index: Optional[int] = None
    frame_ids: Optional[list[int]] = None
    has_frames: Optional[bool] = None
    boxes: Optional[list] = Field(None, description="(T, persons, 4) pixels x1, y1, x2, y2")


class SearchRequest(BaseModel):
    """Exactly one of ``clip``, ``query`` or ``codes``; as JSON, or as form fields next to an upload."""

    model_config = ConfigDict(extra="forbid")
    clip: Optional[str] = Field(None, description="an indexed clip id VIDEO/CLIP (left out of its own results)")
    query: Optional[str] = Field(None, description="token of an uploaded query (from an earlier upload search)")
    codes: Optional[list[str]] = Field(None, description="one hex string of K/8 packed bytes per depth")
    # strict: a JSON integer, never true or "5" (>= 1 and focus <= depth are checked by the service, in its words)
    k: StrictInt = Field(10, le=MAX_K, description=f"results (1..{MAX_K})", json_schema_extra={"minimum": 1})
    focus: Optional[StrictInt] = Field(None, description="1 = visual ... depth = activity; default the deepest",
                                       json_schema_extra={"minimum": 1})


class SearchHit(ClipRow):
    rank: int
    distance: int = Field(description="Hamming distance at the chosen focus")


class SearchResponse(BaseModel):
    query: dict = Field(description="the query: kind clip | upload | codes, its labels (an upload: predicted "
                                    "activity, token and codes)")
    focus: int
    focus_name: str
    depth: int
    k: int
    search_ms: float = Field(description="time of the index search alone")
    results: list[SearchHit]


SEARCH_FORM_SCHEMA = {
    "type": "object",
    "properties": {
        "tracks": {"type": "string", "format": "binary", "description": "MOT tracks: frame,id,x,y,w,h[,conf]"},
        "video": {"type": "string", "format": "binary", "description": "a short video (.mp4/.avi/.mkv/.mov)"},
        "frames": {"type": "string", "format": "binary", "description": "or a zip of frames 000001.jpg, ..."},
        "clip": {"type": "string"}, "query": {"type": "string"},
        "codes": {"type": "string", "description": "hex codes, one per depth, comma-separated"},
        "k": {"type": "integer", "default": 10, "minimum": 1, "maximum": MAX_K},
        "focus": {"type": "integer", "minimum": 1},
    },
}
