"""Scene cuts (PySceneDetect's ContentDetector, fed the frames we decode anyway) and the clip windows
that never cross one.

Frames are MOT frame numbers (1-based; a frame folder's may start anywhere, e.g. 38005). A cut at frame
``c`` means frame ``c`` starts a new scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CutDetector:
    """Feed RGB frames in order with :meth:`add`; :meth:`cuts` gives the 1-based first frames of new scenes.

    ``threshold`` is ContentDetector's (mean HSV change, 0-255; 27 by default), ``min_scene_len`` the
    fewest frames of a scene. ``threshold <= 0`` turns detection off (no cuts).
    """

    threshold: float = 27.0
    min_scene_len: int = 15
    _cuts: list[int] = field(default_factory=list)     # positions (0-based) of the frames that start a scene
    _numbers: list[int] = field(default_factory=list)  # position -> frame number
    _n: int = 0

    def __post_init__(self) -> None:
        self._det = None
        if self.threshold > 0:
            from scenedetect.detectors import ContentDetector

            self._det = ContentDetector(threshold=float(self.threshold), min_scene_len=int(self.min_scene_len))

    def add(self, frame_rgb: np.ndarray, number: int | None = None) -> None:
        """The next frame (H, W, 3) uint8 RGB and its MOT frame number (default: its position, 1-based)."""
        self._numbers.append(self._n + 1 if number is None else int(number))
        if self._det is not None:
            bgr = np.ascontiguousarray(frame_rgb[..., ::-1])
            self._cuts.extend(self._det.process_frame(self._n, bgr))
        self._n += 1

    def cuts(self) -> list[int]:
        """Frame numbers that start a new scene (after the last frame was added)."""
        cuts = list(self._cuts)
        if self._det is not None and self._n:
            cuts.extend(self._det.post_process(self._n - 1))
        return sorted({self._numbers[int(c)] for c in cuts if 0 < int(c) < self._n})


def windows(first: int, last: int, cuts: list[int], length: int) -> list[tuple[int, int]]:
    """Non-overlapping windows ``(start, end)`` (inclusive) of ``length`` frames within ``first..last``,
    restarting at every cut so that none crosses one; a scene's partial tail is dropped."""
    bounds = [first] + [c for c in sorted(cuts) if first < c <= last] + [last + 1]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        out.extend((s, s + length - 1) for s in range(a, b - length + 1, length))
    return out
