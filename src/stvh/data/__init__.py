"""Data layer: clip record, readers of every supported format, synthetic generator.

No module here imports torch: readers produce numpy-backed :class:`Clip` records.
"""

from .clip import UNKNOWN, Clip, ClipDataset, ImageFrames, VideoFrames
from .errors import (BadBox, DataError, FormatError, MalformedLine, MissingFrame, Problems, UnknownLabel,
                     UnreadableVideo)
from .formats import FORMATS, detect_format, read_dataset

__all__ = [
    "UNKNOWN", "Clip", "ClipDataset", "ImageFrames", "VideoFrames",
    "DataError", "FormatError", "MalformedLine", "UnknownLabel", "BadBox", "MissingFrame", "UnreadableVideo",
    "Problems", "FORMATS", "detect_format", "read_dataset",
]
