"""The clip record shared by every reader, and the dataset that holds clips.

Coordinates are pixels, boxes are ``x1, y1, x2, y2`` (paper Sec. 3:
``boxes_i in R^{T x N x 4}``). Persons are padded to a fixed ``N`` with a
boolean mask; a padded slot has a zero box, action ``-1`` and ``mask=False``
(padding never duplicates a real person).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DuplicateKey

UNKNOWN = -1  # action or activity id of an unlabeled person or clip


@dataclass(frozen=True)
class ImageFrames:
    """Frames stored as one image file per frame, in window order.

    ``size`` is the ``(height, width)`` the reader took for the video (its boxes'
    frame); :func:`~stvh.data.frames.read_frames` refuses a frame of another size.
    """

    paths: tuple[Path, ...]
    size: tuple[int, int] | None = field(default=None, compare=False)

    def exists(self) -> bool:
        return all(p.is_file() for p in self.paths)


@dataclass(frozen=True)
class VideoFrames:
    """Frames decoded from a video file; ``indices`` are 0-based frame numbers; ``size`` as for
    :class:`ImageFrames`."""

    path: Path
    indices: tuple[int, ...]
    size: tuple[int, int] | None = field(default=None, compare=False)

    def exists(self) -> bool:
        return self.path.is_file()


FrameSource = ImageFrames | VideoFrames


@dataclass
class Clip:
    """One group-activity clip: T frames, up to N tracked persons.

    Shapes: ``frame_ids (T,)``, ``boxes (T, N, 4)`` float32 pixels x1,y1,x2,y2,
    ``mask (N,)`` bool, ``actions (N,)`` int64 (``-1`` unknown).
    ``activity`` is an int (``-1`` unlabeled); ``group`` is the visual-group id
    (the match or video the clip comes from, used for visual-focus retrieval).
    ``image_size`` is ``(height, width)``. ``tracked`` is False when the boxes
    of the key frame were repeated over T because no per-frame tracks exist.
    ``key_index`` is the position of the annotated key frame in the window.
    """

    video: str
    clip: str
    frame_ids: np.ndarray      # (T,) int64
    boxes: np.ndarray          # (T, N, 4) float32
    mask: np.ndarray           # (N,) bool
    actions: np.ndarray        # (N,) int64
    activity: int
    group: str
    image_size: tuple[int, int]
    frames: FrameSource | None = None
    tracked: bool = False
    key_index: int = 0
    split: str = ""

    @property
    def id(self) -> str:
        return f"{self.video}/{self.clip}"

    @property
    def num_frames(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_persons(self) -> int:
        """Number of real (unmasked) persons."""
        return int(self.mask.sum())

    def validate(self) -> None:
        """Check shapes and invariants; raise ``ValueError`` naming the clip."""
        T = len(self.frame_ids)
        if self.boxes.ndim != 3 or self.boxes.shape[0] != T or self.boxes.shape[2] != 4:
            raise ValueError(f"clip {self.id}: boxes shape {self.boxes.shape}, expected ({T}, N, 4)")
        N = self.boxes.shape[1]
        if self.mask.shape != (N,) or self.mask.dtype != np.bool_:
            raise ValueError(f"clip {self.id}: mask must be bool of shape ({N},)")
        if self.actions.shape != (N,):
            raise ValueError(f"clip {self.id}: actions must have shape ({N},)")
        if np.any(self.boxes[:, ~self.mask] != 0) or np.any(self.actions[~self.mask] != UNKNOWN):
            raise ValueError(f"clip {self.id}: padded persons must have zero boxes and action -1")
        if not 0 <= self.key_index < T:
            raise ValueError(f"clip {self.id}: key_index {self.key_index} outside [0, {T})")


def pad_persons(boxes: np.ndarray, actions: np.ndarray, n_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad ``boxes (T, n, 4)`` and ``actions (n,)`` to ``n_max`` persons.

    Returns ``boxes (T, n_max, 4)``, ``mask (n_max,)``, ``actions (n_max,)``.
    Raises ``ValueError`` when ``n > n_max`` (callers decide what to drop).
    """
    T, n = boxes.shape[0], boxes.shape[1]
    if n > n_max:
        raise ValueError(f"{n} persons exceed n_max={n_max}")
    out_boxes = np.zeros((T, n_max, 4), dtype=np.float32)
    out_boxes[:, :n] = boxes
    mask = np.zeros(n_max, dtype=bool)
    mask[:n] = True
    out_actions = np.full(n_max, UNKNOWN, dtype=np.int64)
    out_actions[:n] = actions
    return out_boxes, mask, out_actions


@dataclass
class ClipDataset:
    """Clips of one dataset plus its label vocabularies and skipped problems."""

    format: str
    root: Path
    clips: list[Clip]
    activities: tuple[str, ...]
    actions: tuple[str, ...]
    skipped: list = field(default_factory=list)  # DataError instances (skip_bad)

    def __post_init__(self) -> None:
        """Safety net behind every reader's own checks: clip ids are unique (codes and splits key on them)."""
        counts = Counter(c.id for c in self.clips)
        twice = sorted(cid for cid, n in counts.items() if n > 1)
        if twice:
            shown = ", ".join(f"{cid} ({counts[cid]}x)" for cid in twice[:5])
            more = f" and {len(twice) - 5} more" if len(twice) > 5 else ""
            raise DuplicateKey(f"{len(twice)} clip id(s) occur more than once: {shown}{more}", path=self.root)

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter(self.clips)

    def mirrored(self, which: str = "activities") -> np.ndarray:
        """Label ids after a left-right flip of the picture (``which``: activities or actions), see :func:`mirror_ids`."""
        return mirror_ids(self.activities if which == "activities" else self.actions)

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]

    def splits(self) -> dict[str, int]:
        return dict(sorted(Counter(c.split for c in self.clips).items()))

    def summary(self) -> dict:
        """A JSON-ready summary: clip counts per split/video, label histograms."""
        def activity_name(i: int) -> str:
            return self.activities[i] if i >= 0 else "unlabeled"

        per_split: dict[str, dict[str, int]] = {}
        for c in self.clips:
            h = per_split.setdefault(c.split or "no split", {})
            name = activity_name(c.activity)
            h[name] = h.get(name, 0) + 1
        action_counts: Counter = Counter()
        persons = 0
        for c in self.clips:
            real = c.actions[c.mask]
            persons += int(c.mask.sum())
            action_counts.update(self.actions[a] if a >= 0 else "unknown" for a in real.tolist())
        return {
            "format": self.format,
            "root": str(self.root),
            "clips": len(self.clips),
            "clips_per_split": self.splits(),
            "clips_per_video": dict(sorted(Counter(c.video for c in self.clips).items(),
                                           key=lambda kv: _natural_key(kv[0]))),
            "groups": len({c.group for c in self.clips}),
            "activities": list(self.activities),
            "activity_counts": {activity_name(i): n for i, n in sorted(
                Counter(c.activity for c in self.clips).items())},
            "activity_counts_per_split": per_split,
            "action_counts": dict(sorted(action_counts.items())),
            "persons": persons,
            "frames_per_clip": sorted({c.num_frames for c in self.clips}),
            "tracked_clips": sum(c.tracked for c in self.clips),
            "clips_with_frames": sum(c.frames is not None for c in self.clips),
            "skipped": len(self.skipped),
        }


_SIDES = {"l": "r", "r": "l", "left": "right", "right": "left"}


def _label_words(name) -> list[str]:
    """A label's words: lower case, split at ``_``, ``-`` and spaces (``Left pass`` -> ``left``, ``pass``)."""
    import re

    return re.split(r"[_\-\s]+", str(name).lower())


def mirror_ids(names) -> np.ndarray:
    """``(len(names),)`` ids: the label a left-right flip turns each label into, by its side word.

    A name's side words (``l``/``r``, ``left``/``right``, any case, words split at ``_``, ``-`` and
    spaces: ``l_set``, ``Left pass``) are swapped; when the swapped words name a label of ``names``
    that is the mirror, else the label is its own mirror (``queueing``, ``spiking``).
    """
    lookup = {tuple(_label_words(n)): i for i, n in enumerate(names)}
    out = np.arange(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        swapped = tuple(_SIDES.get(w, w) for w in _label_words(name))
        if swapped != tuple(_label_words(name)) and swapped in lookup:
            out[i] = lookup[swapped]
    return out


def side_ids(names) -> np.ndarray:
    """``(len(names),)``: 0 for a label with a left side word (``l_set``, ``Left pass``), 1 with a right
    one, -1 without (``queueing``); the words as :func:`mirror_ids` reads them."""
    out = np.full(len(names), -1, dtype=np.int64)
    for i, name in enumerate(names):
        words = set(_label_words(name))
        left, right = bool(words & {"l", "left"}), bool(words & {"r", "right"})
        if left != right:
            out[i] = 0 if left else 1
    return out


def _natural_key(s: str):
    return (0, int(s), "") if s.isdigit() else (1, 0, s)
