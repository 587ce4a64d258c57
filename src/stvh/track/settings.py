"""How footage is tracked, as one validated record: ``stvh track``'s flags, ``OUT/track.yaml``, ``--track-config``.

``stvh track`` writes the settings it ran with to ``OUT/track.yaml`` (region polygons written out as points, so the
file stands alone). ``stvh ingest`` and ``stvh serve --watch`` take that file (``--track-config FILE``), so footage
that arrives without tracks is tracked exactly as the user tuned it with ``stvh track``; ``--detector`` /
``--region`` given beside it win over the file's values. A relative ``detector`` or region path in the file is
taken relative to the file's folder. Unknown keys and wrong types are errors naming the file and the key
(pydantic does the validation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..data.atomic import write_text_atomic
from ..data.errors import FormatError
from .detector import LAYOUTS, Detector, load_detector
from .pipeline import TrackOptions
from .tracker import RegionMask, TrackerParams

__all__ = ["TrackSettings", "load_track_settings", "tracking_from"]

Triple = tuple[float, float, float]


class TrackSettings(BaseModel):
    """The detector and the tracker's settings (the names and defaults of ``stvh track``'s flags)."""

    model_config = ConfigDict(extra="forbid")

    detector: str = Field(description="FILE.onnx or hog")
    layout: Literal[LAYOUTS] = "auto"  # type: ignore[valid-type]
    person_class: Optional[int] = Field(None, ge=0)
    score: Optional[float] = None
    iou: float = Field(0.45, gt=0, le=1)
    imgsz: Optional[tuple[int, int]] = None
    channels: Optional[Literal["rgb", "bgr"]] = None
    mean: Optional[Triple] = None
    std: Optional[Triple] = None
    letterbox: bool = True
    threads: int = Field(0, ge=0)
    region: Union[str, list[tuple[float, float]], None] = None  # x1,y1,x2,y2, a polygon file, or the points
    max_gap: int = Field(10, ge=0)
    min_track_len: int = Field(5, ge=1)
    frames_per_clip: int = Field(10, ge=1)
    scene_threshold: float = 27.0
    min_scene_len: int = Field(15, ge=1)
    lost_frames: int = Field(10, ge=0)
    activation: float = Field(0.5, ge=0, le=1)
    match_iou: float = Field(0.1, ge=0, le=1)
    min_hits: int = Field(1, ge=1)

    @field_validator("imgsz")
    @classmethod
    def _positive_size(cls, v):
        if v is not None and min(v) < 1:
            raise ValueError(f"imgsz must be two positive integers (h, w), got {list(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, v):
        if v is not None and any(s == 0 for s in v):
            raise ValueError("std must not contain 0 (the input is divided by it)")
        return v

    # ------------------------------------------------------------------ use
    def region_mask(self) -> RegionMask | None:
        if self.region is None:
            return None
        if isinstance(self.region, str):
            return RegionMask.parse(self.region)
        return RegionMask(self.region)

    def build(self, progress: bool = False) -> tuple[Detector, TrackOptions]:
        """The detector (loaded now: a missing or corrupt file fails here) and the tracking options."""
        det = load_detector(self.detector, layout=self.layout, person_class=self.person_class, score=self.score,
                            iou=self.iou, imgsz=self.imgsz, channels=self.channels, mean=self.mean, std=self.std,
                            pad=self.letterbox, threads=self.threads)
        opts = TrackOptions(frames_per_clip=self.frames_per_clip, max_gap=self.max_gap,
                            min_track_len=self.min_track_len, region=self.region_mask(),
                            scene_threshold=self.scene_threshold, min_scene_len=self.min_scene_len,
                            tracker=TrackerParams(lost_frames=self.lost_frames, activation=self.activation,
                                                  high=self.activation, match_iou=self.match_iou,
                                                  min_hits=self.min_hits),
                            progress=progress)
        return det, opts

    def save(self, path: str | Path) -> None:
        """Write as YAML (atomically); a region is written as its polygon's points, the detector as an absolute
        path, so the file can be used from anywhere."""
        data = self.model_dump()
        mask = self.region_mask()
        if mask is not None:
            data["region"] = [[float(x), float(y)] for x, y in mask.points]
        if str(self.detector).lower() != "hog":
            data["detector"] = str(Path(self.detector).resolve())
        for key in ("imgsz", "mean", "std"):
            if data[key] is not None:
                data[key] = list(data[key])
        header = "# how stvh track tracked this footage; stvh ingest / serve --watch take it as --track-config\n"
        write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def load_track_settings(path: str | Path) -> TrackSettings:
    """Read and validate a ``track.yaml`` (errors name the file and the key)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("track settings file not found (--track-config)", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise FormatError(f"not YAML: {str(e).splitlines()[0]}", path=path,
                          line=None if line is None else line + 1) from None
    if not isinstance(data, dict):
        raise FormatError("expected a mapping of stvh track settings (detector: ..., score: ...)", path=path)
    base = path.resolve().parent
    for key in ("detector", "region"):  # relative paths are the file's neighbours
        value = data.get(key)
        if isinstance(value, str) and value.lower() != "hog" and not Path(value).is_absolute() \
                and (base / value).exists():
            data[key] = str(base / value)
    try:
        return TrackSettings(**data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "?"
        raise FormatError(f"key {where!r}: {err['msg']}", path=path, line=_key_line(path, err["loc"])) from None


def _key_line(path: Path, loc) -> int | None:
    """1-based line of the top-level key ``loc[0]`` in the YAML file (None when not found)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    for key, _ in getattr(node, "value", []) if isinstance(node, yaml.MappingNode) else []:
        if loc and key.value == str(loc[0]):
            return key.start_mark.line + 1
    return None


def tracking_from(detector: str | None, region: str | None,
                  config: str | Path | None) -> tuple[Detector | None, TrackOptions | None]:
    """``--detector`` / ``--region`` / ``--track-config`` of ingest and serve --watch -> (detector, options), or
    ``(None, None)`` when footage is not to be tracked. Flags win over the file."""
    if config is None and detector is None:
        if region is not None:
            raise ValueError("--region needs --detector or --track-config (it masks the detector's boxes)")
        return None, None
    settings = load_track_settings(config) if config is not None else TrackSettings(detector=detector)
    changes = {k: v for k, v in (("detector", detector), ("region", region)) if v is not None}
    if changes:
        settings = settings.model_copy(update=changes)
    return settings.build()
