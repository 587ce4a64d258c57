"""Reader for the Collective Activity dataset (CAD, Choi et al. 2009) and its
extension (CAED, Choi et al. 2011).

Layout::

    <root>/seqNN/annotations.txt     frame x y w h action pose   (whitespace separated ints)
    <root>/seqNN/frameNNNN.jpg       optional frames, 1-based frame numbers
    <root>/splits.json               optional {"train": [...], "test": [...]}

One clip per key frame (``frame % 10 == 1``); its persons are the lines of the
key frame. The format has no person ids, so the key-frame boxes are repeated
over the T window (``Clip.tracked = False``). See ``docs/data-cad.md`` for the
choices made (vote, tie-break, clamping, truncation, splits).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from .clip import UNKNOWN, Clip, ClipDataset, ImageFrames, pad_persons
from .errors import (BadBox, DataError, DuplicateKey, EmptyFile, FormatError, MalformedLine, MissingFrame,
                     Problems, UnknownLabel, parse_int, text_lines)
from .frames import image_header_size
from .geometry import clip_box_to_image
from .labels import (CAD_ACTIONS, CAD_ACTIVITIES_4, CAD_ACTIVITIES_5, CAED_ACTIONS,
                     CAED_ACTIVITIES)
from .splits import assign_splits, read_splits, split_of

__all__ = ["read_cad", "read_caed", "looks_like_cad", "split_of", "xywh_to_box", "image_header_size"]

# Official CAD test sequences (the split of Zhu et al. 2022 and earlier work); the rest train.
CAD_TEST_SEQUENCES = frozenset({5, 6, 7, 8, 9, 10, 11, 15, 16, 25, 28, 29})

# Frame size (height, width) per sequence number, used only when a sequence has
# no frame images (the JPEG header wins when frames exist). CAD 1..44 are
# 480x720 except 15 and 20..24 (450x800). The CAED entries (45..74) are the
# sizes used by public re-implementations and are not verified here.
DEFAULT_FRAME_SIZE = (480, 720)
CAD_FRAME_SIZES: dict[int, tuple[int, int]] = {
    15: (450, 800), 20: (450, 800), 21: (450, 800), 22: (450, 800), 23: (450, 800), 24: (450, 800),
}
CAED_FRAME_SIZES: dict[int, tuple[int, int]] = {
    **CAD_FRAME_SIZES,
    **{n: (480, 640) for n in range(45, 60)},
    **{n: (720, 1280) for n in range(60, 75)},
}

KEY_PERIOD = 10          # a key frame every 10th frame: frame % 10 == 1
_SEQ_RE = re.compile(r"^seq(\d+)$")
_FRAME_RE = re.compile(r"^frame(\d{1,9})\.jpg$", re.IGNORECASE)  # longer numbers are no frame numbers


# --------------------------------------------------------------------------- shared helpers

def xywh_to_box(x: float, y: float, w: float, h: float, size: tuple[int, int]) -> np.ndarray | str:
    """``x, y, w, h`` -> clipped ``x1, y1, x2, y2`` float32, or an error message.

    ``size`` is ``(height, width)``. A box with ``w <= 0`` or ``h <= 0`` or
    entirely outside the image is bad; a box partly outside is clipped.
    """
    if w <= 0 or h <= 0:
        return f"non-positive size w={w:g} h={h:g}"
    box = clip_box_to_image((x, y, x + w, y + h), size)
    if box is None:
        return f"box ({x:g}, {y:g}, {x + w:g}, {y + h:g}) entirely outside the {size[1]}x{size[0]} image"
    return box


# --------------------------------------------------------------------------- detection

def _sequence_dirs(root: Path) -> list[tuple[int, Path]]:
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        m = _SEQ_RE.match(d.name)
        if m and d.is_dir() and (d / "annotations.txt").is_file():
            out.append((int(m.group(1)), d))
    return sorted(out)


def looks_like_cad(root: str | Path) -> bool:
    """True when ``root`` holds ``seqNN/annotations.txt`` folders (CAD or CAED)."""
    return bool(_sequence_dirs(Path(root)))


# --------------------------------------------------------------------------- vocabularies

class _Vocab:
    """Maps file action ids (1-based, 1 = NA) to person actions and activities."""

    def __init__(self, variant: str, merge_moving: bool):
        if variant == "cad":
            self.file_actions = CAD_ACTIONS
            if merge_moving:
                self.actions, self.activities = CAD_ACTIVITIES_4, CAD_ACTIVITIES_4
            else:
                self.actions, self.activities = CAD_ACTIVITIES_5, CAD_ACTIVITIES_5
            self.excluded = {"NA"}
        elif variant == "caed":
            if merge_moving:
                raise ValueError("merge_moving applies to variant='cad' only")
            self.file_actions = CAED_ACTIONS
            self.actions, self.activities = CAED_ACTIONS[1:], CAED_ACTIVITIES
            self.excluded = {"NA", "walking"}
        else:
            raise ValueError(f"variant must be 'cad' or 'caed', not {variant!r}")
        self.merge = merge_moving

    def _name(self, file_id: int) -> str:
        name = self.file_actions[file_id - 1]
        if self.merge and name in ("crossing", "walking"):
            return "moving"
        return name

    def valid(self, file_id: int) -> bool:
        return 1 <= file_id <= len(self.file_actions)

    def person_action(self, file_id: int) -> int:
        name = self._name(file_id)
        return self.actions.index(name) if name in self.actions else UNKNOWN

    def activity(self, file_ids: list[int]) -> int:
        """Majority action of the key frame (NA/excluded ignored; ties -> smallest file id)."""
        votes = Counter(a for a in file_ids if self.file_actions[a - 1] not in self.excluded)
        if not votes:
            return UNKNOWN
        best = max(votes.values())
        winner = min(a for a, n in votes.items() if n == best)
        name = self._name(winner)
        return self.activities.index(name) if name in self.activities else UNKNOWN


# --------------------------------------------------------------------------- parsing

def _parse_annotations(path: Path, vocab: _Vocab, size: tuple[int, int],
                       problems: Problems) -> dict[int, list[tuple[np.ndarray, int]]]:
    """``{frame: [(box x1y1x2y2, file action id), ...]}`` in file order.

    An empty file is an :class:`EmptyFile`; a second line with the same frame
    and box (the same person twice, skewing the activity vote) a
    :class:`DuplicateKey` naming both lines.
    """
    per_frame: dict[int, list[tuple[np.ndarray, int]]] = {}
    first_line: dict[tuple[int, int, int, int, int], int] = {}
    reported = len(problems)
    lines = text_lines(path, problems)
    if not lines and len(problems) == reported:  # (an unreadable file was reported by text_lines)
        problems.report(EmptyFile("no annotation lines ('frame x y w h action pose' expected)", path=path))
    for lineno, raw in lines:
        fields = raw.split()
        if len(fields) != 7:
            problems.report(MalformedLine(
                f"expected 7 fields 'frame x y w h action pose', got {len(fields)}", path=path, line=lineno))
            continue
        try:
            frame, x, y, w, h, action, _pose = (parse_int(f) for f in fields)
        except ValueError as exc:
            problems.report(MalformedLine(f"non-integer field in {raw.strip()[:80]!r} ({exc})",
                                          path=path, line=lineno))
            continue
        if frame < 1:
            problems.report(MalformedLine(f"frame {frame} < 1", path=path, line=lineno))
            continue
        if not vocab.valid(action):
            problems.report(UnknownLabel(
                f"action id {action} not in 1..{len(vocab.file_actions)} "
                f"({', '.join(vocab.file_actions)})", path=path, line=lineno))
            continue
        box = xywh_to_box(x, y, w, h, size)
        if isinstance(box, str):
            problems.report(BadBox(box, path=path, line=lineno))
            continue
        if (frame, x, y, w, h) in first_line:
            problems.report(DuplicateKey(
                f"frame {frame} box {x},{y},{w},{h} is already on line {first_line[(frame, x, y, w, h)]} "
                f"(the same person twice)", path=path, line=lineno))
            continue
        first_line[(frame, x, y, w, h)] = lineno
        per_frame.setdefault(frame, []).append((box, action))
    return per_frame


def _frame_files(seq_dir: Path, problems: Problems) -> dict[int, Path]:
    """``{frame number: image}``; two images of one number (``frame01.jpg``, ``frame0001.jpg``) are a
    :class:`FormatError` (the first in name order is kept under ``skip_bad``)."""
    out: dict[int, Path] = {}
    for p in sorted(seq_dir.iterdir()):
        m = _FRAME_RE.match(p.name)
        if m and p.is_file():
            n = int(m.group(1))
            if n in out:
                problems.report(FormatError(f"two images for frame {n}: {out[n].name} and {p.name}", path=seq_dir))
                continue
            out[n] = p
    return out


def _default_split(variant: str, number: int) -> str:
    if variant == "cad":
        return "test" if number in CAD_TEST_SEQUENCES else "train"
    return "test" if number % 3 == 0 else "train"


def _keep_largest(persons: list[tuple[np.ndarray, int]], n_max: int) -> list[tuple[np.ndarray, int]]:
    """The ``n_max`` largest boxes (ties: earlier line), in file order."""
    if len(persons) <= n_max:
        return persons
    area = [float((b[2] - b[0]) * (b[3] - b[1])) for b, _ in persons]
    keep = sorted(sorted(range(len(persons)), key=lambda i: (-area[i], i))[:n_max])
    return [persons[i] for i in keep]


# --------------------------------------------------------------------------- reader

def read_cad(root: str | Path, *, variant: str = "cad", merge_moving: bool = False,
             window: tuple[int, int] = (-5, 4), n_max: int = 13,
             skip_bad: bool = False) -> ClipDataset:
    """Read CAD (``variant="cad"``) or CAED (``variant="caed"``) into a ClipDataset.

    ``window=(a, b)`` are the frame offsets around the key frame (inclusive,
    ``a <= 0 <= b``; default T=10), clamped into ``[1, last frame]``.
    ``merge_moving`` merges crossing+walking into "moving" (4 CAD classes,
    person actions included). Persons beyond ``n_max`` keep the largest boxes.
    """
    root = Path(root)
    lo, hi = window
    if not lo <= 0 <= hi:
        raise ValueError(f"window {window} must satisfy start <= 0 <= end")
    if n_max < 1:
        raise ValueError("n_max must be >= 1")
    vocab = _Vocab(variant, merge_moving)
    problems = Problems(skip_bad=skip_bad)
    seqs = _sequence_dirs(root)
    if not seqs:
        raise FormatError("no seqNN/annotations.txt folders found", path=root)
    splits = read_splits(root)
    numbers = {seq_dir.name: number for number, seq_dir in seqs}
    sizes = CAD_FRAME_SIZES if variant == "cad" else CAED_FRAME_SIZES
    offsets = np.arange(lo, hi + 1, dtype=np.int64)
    clips: list[Clip] = []

    for number, seq_dir in seqs:
        video = seq_dir.name
        frame_files = _frame_files(seq_dir, problems)
        size = sizes.get(number, DEFAULT_FRAME_SIZE)
        if frame_files:
            try:
                size = image_header_size(frame_files[min(frame_files)])
            except DataError as err:  # never fall back to a guessed size: skip the sequence
                problems.report(err)
                continue
        ann_path = seq_dir / "annotations.txt"
        per_frame = _parse_annotations(ann_path, vocab, size, problems)
        if not per_frame:
            continue  # (reported: empty file, or every line bad under skip_bad)
        if not any(f % KEY_PERIOD == 1 for f in per_frame):
            problems.report(EmptyFile(f"no key frame (frame % {KEY_PERIOD} == 1) is annotated, so the sequence "
                                      f"gives no clip", path=ann_path))
            continue
        last = max(frame_files) if frame_files else max(per_frame)
        for key in sorted(f for f in per_frame if f % KEY_PERIOD == 1):
            clip_name = str(key)
            clip_id = f"{video}/{clip_name}"
            frame_ids = np.clip(key + offsets, 1, max(last, key))
            frames = None
            if frame_files:
                paths = []
                for f in frame_ids.tolist():
                    p = frame_files.get(f)
                    if p is None:
                        problems.report(MissingFrame(
                            f"frame {f} needed by the clip is missing",
                            path=seq_dir / f"frame{f:04d}.jpg", clip=clip_id))
                        paths = None
                        break
                    paths.append(p)
                if paths is None:
                    continue
                frames = ImageFrames(tuple(paths), size=size)  # read_frames refuses a frame of another size
            persons = _keep_largest(per_frame[key], n_max)
            file_ids = [a for _, a in per_frame[key]]
            boxes = np.stack([b for b, _ in persons])[None].repeat(len(frame_ids), axis=0)
            actions = np.array([vocab.person_action(a) for _, a in persons], dtype=np.int64)
            boxes, mask, actions = pad_persons(boxes, actions, n_max)
            clip = Clip(video=video, clip=clip_name, frame_ids=frame_ids.astype(np.int64),
                        boxes=boxes, mask=mask, actions=actions,
                        activity=vocab.activity(file_ids), group=video, image_size=size,
                        frames=frames, tracked=False, key_index=-lo)
            clip.validate()
            clips.append(clip)

    assign_splits(clips, splits, lambda c: _default_split(variant, numbers[c.video]), problems,
                  videos=numbers)
    return ClipDataset(format=variant, root=root, clips=clips, activities=tuple(vocab.activities),
                       actions=tuple(vocab.actions), skipped=list(problems.errors))


def read_caed(root: str | Path, **kw) -> ClipDataset:
    """``read_cad(root, variant="caed", ...)``."""
    return read_cad(root, variant="caed", **kw)
