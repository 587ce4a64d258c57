"""Tracking for ``stvh track``: ByteTrack (the ``trackers`` package) behind one small class, plus the
post-processing the MOT dataset needs: a region mask, gap interpolation and short-track removal.

``Tracker(params).update(frame, boxes, scores)`` once per frame (frames in increasing order), then
``tracks()`` gives ``{track id: {frame: box x1y1x2y2}}`` with ids 1, 2, ... in order of first
appearance. ByteTrack gives a track its id only on its ``min_hits``-th hit; the boxes it saw before
(its first frames) are kept too, under that id. Boxes are the detector's (not the Kalman filter's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.errors import FormatError, MalformedLine

Tracks = dict[int, dict[int, np.ndarray]]  # track id -> frame -> box (4,) x1y1x2y2


@dataclass(frozen=True)
class TrackerParams:
    """ByteTrack's settings (names of the ``trackers`` package in the comments). Defaults tuned on the
    Volleyball sample (benchmarks/tracker_quality.py): ``min_hits`` 1 and ``lost_frames`` 10 gave the fewest
    id switches; ``min_hits`` 2 or 3 lets a new track die when its second box is missed."""

    lost_frames: int = 10       # frames a lost track is kept for re-association (lost_track_buffer at 30 fps)
    activation: float = 0.5     # a detection at or above this may start a track (track_activation_threshold)
    high: float = 0.5           # first-stage association threshold (high_conf_det_threshold)
    match_iou: float = 0.1      # smallest IoU of a match between a predicted track and a box (minimum_iou_threshold)
    min_hits: int = 1           # hits before a track counts (minimum_consecutive_frames)


class Tracker:
    """ByteTrack over one video's detections; one instance per video."""

    def __init__(self, params: TrackerParams = TrackerParams()):
        from trackers import ByteTrackTracker

        self.params = params
        self._bt = ByteTrackTracker(lost_track_buffer=params.lost_frames, frame_rate=30.0,
                                    track_activation_threshold=params.activation,
                                    minimum_consecutive_frames=params.min_hits,
                                    minimum_iou_threshold=params.match_iou,
                                    high_conf_det_threshold=params.high)
        self._born: dict[int, tuple[object, list[tuple[int, np.ndarray]]]] = {}  # id(obj) -> (obj, boxes before its id)
        self._ids: dict[int, int] = {}  # the package's tracker id -> ours
        self._tracks: Tracks = {}
        self._last = None

    def update(self, frame: int, boxes: np.ndarray, scores: np.ndarray) -> None:
        """Feed the detections ``(n, 4)`` x1y1x2y2 and ``(n,)`` scores of MOT frame ``frame``."""
        import supervision as sv

        if self._last is not None and frame <= self._last:
            raise ValueError(f"frames must increase: {frame} after {self._last}")
        self._last = frame
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        dets = sv.Detections(xyxy=boxes, confidence=np.asarray(scores, np.float32).reshape(-1),
                             class_id=np.zeros(len(boxes), int))
        before = {id(t) for t in self._bt.tracks}
        out = self._bt.update(dets)
        ids = np.asarray(out.tracker_id if out.tracker_id is not None else [], int).reshape(-1)
        for box, tid in zip(out.xyxy, ids):
            if tid >= 0:
                self._emit(int(tid), frame, box)
        for t in self._bt.tracks:  # tracks born this frame: keep their first box until they get an id
            if id(t) not in before and t.tracker_id == -1 and t.time_since_update == 0:
                self._born[id(t)] = (t, [(frame, np.asarray(t.state[:4, 0], np.float32).copy())])
        for key, (t, pending) in list(self._born.items()):
            if t.tracker_id != -1:
                for f, b in pending:
                    self._emit(int(t.tracker_id), f, b)
                del self._born[key]
            elif t not in self._bt.tracks:
                del self._born[key]  # died before it counted
            elif t.time_since_update == 0 and pending[-1][0] != frame:
                pending.append((frame, self._box_of(out, t)))

    @staticmethod
    def _box_of(out, t) -> np.ndarray:
        """The detection that updated an id-less track this frame (the nearest output box to its state)."""
        state = np.asarray(t.state[:4, 0], np.float32)
        d = np.abs(np.asarray(out.xyxy, np.float32) - state).sum(axis=1)
        return np.asarray(out.xyxy[int(d.argmin())], np.float32) if len(d) else state

    def _emit(self, tid: int, frame: int, box) -> None:
        ours = self._ids.setdefault(tid, len(self._ids) + 1)
        self._tracks.setdefault(ours, {})[frame] = np.asarray(box, np.float32).reshape(4)

    def tracks(self) -> Tracks:
        """``{id: {frame: box}}`` so far, ids 1.. in order of first appearance."""
        return {k: dict(sorted(v.items())) for k, v in self._tracks.items()}


def interpolate(tracks: Tracks, max_gap: int) -> Tracks:
    """Fill each gap of at most ``max_gap`` missing frames inside a track linearly between its two ends;
    longer gaps stay empty (the person left, or the track is unsure)."""
    out: Tracks = {}
    for tid, boxes in tracks.items():
        frames = sorted(boxes)
        filled = dict(boxes)
        for a, b in zip(frames, frames[1:]):
            gap = b - a - 1
            if 0 < gap <= max_gap:
                for f in range(a + 1, b):
                    w = (f - a) / (b - a)
                    filled[f] = ((1 - w) * boxes[a] + w * boxes[b]).astype(np.float32)
        out[tid] = dict(sorted(filled.items()))
    return out


def drop_short(tracks: Tracks, min_len: int) -> Tracks:
    """Tracks with at least ``min_len`` boxes, renumbered 1.. in order of first frame (then old id)."""
    kept = [(min(b), tid) for tid, b in tracks.items() if len(b) >= min_len]
    return {i: tracks[tid] for i, (_, tid) in enumerate(sorted(kept), start=1)}


class RegionMask:
    """A polygon of the frame; a box is kept when its foot point (bottom centre) lies inside or on the edge.

    ``parse(spec)``: ``"x1,y1,x2,y2"`` (a rectangle), or a file holding a JSON list of ``[x, y]`` points
    (or ``{"polygon": [...]}``), or text with one ``x,y`` (or ``x y``) point per line.
    """

    def __init__(self, points: np.ndarray):
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        if len(pts) < 3:
            raise ValueError("a region needs at least 3 points")
        self.points = pts

    @classmethod
    def parse(cls, spec: str) -> "RegionMask":
        path = Path(spec)
        if not path.exists():
            try:
                x1, y1, x2, y2 = (float(v) for v in spec.split(","))
            except ValueError:
                raise ValueError(f"--region {spec!r} is neither a file nor x1,y1,x2,y2") from None
            if x2 <= x1 or y2 <= y1:
                raise ValueError(f"--region {spec!r}: x2 must exceed x1 and y2 y1")
            return cls(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
            data = data.get("polygon") if isinstance(data, dict) else data
            return cls(np.asarray(data, np.float64))
        except json.JSONDecodeError:
            pass
        except (TypeError, ValueError) as e:
            raise FormatError(f"a region is a list of [x, y] points ({e})", path=path) from None
        pts = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                x, y = (float(v) for v in line.replace(",", " ").split())
            except ValueError:
                raise MalformedLine(f"expected 'x,y', got {line.strip()[:60]!r}", path=path, line=n) from None
            pts.append((x, y))
        if len(pts) < 3:
            raise FormatError(f"a region needs at least 3 points, got {len(pts)}", path=path)
        return cls(np.array(pts))

    def keep(self, boxes: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: the boxes ``(n, 4)`` whose foot point is inside the polygon (or on its edge)."""
        import cv2

        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        contour = self.points.reshape(-1, 1, 2)
        return np.array([cv2.pointPolygonTest(contour, (float((x1 + x2) / 2), float(y2)), False) >= 0
                         for x1, _, x2, y2 in b], dtype=bool)
