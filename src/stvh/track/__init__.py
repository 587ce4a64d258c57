"""``stvh track``: a person detector you bring (ONNX) or HOG, ByteTrack, scene cuts -> a MOT dataset.

See :func:`stvh.track.pipeline.track_video` for the entry point and docs/live.md for the user's view.
"""

from .detector import Detector, HogDetector, OnnxDetector, load_detector
from .pipeline import TrackOptions, track_video
from .tracker import RegionMask, Tracker, TrackerParams, drop_short, interpolate

__all__ = ["Detector", "HogDetector", "OnnxDetector", "load_detector", "TrackOptions", "track_video",
           "RegionMask", "Tracker", "TrackerParams", "drop_short", "interpolate"]
