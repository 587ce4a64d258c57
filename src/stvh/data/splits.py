"""``splits.json`` support: a user- or generator-given split overrides the official one.

Format: ``{"train": ["video/clip", "video", ...], "test": [...], "val": [...]}``.
Split names are ``train``, ``val`` (or ``validation``) and ``test``, in any case;
they are stored as ``train`` / ``val`` / ``test`` (:func:`canonical_split`) and any
other name is refused naming the file. An entry is a clip id ``video/clip`` or a
whole video; a clip id wins over its video. Clips not listed get the split ``""``
(:data:`NO_SPLIT`: kept, counted, never trained on unless ``data.unlisted=train``).
One helper, :func:`assign_splits`, applies the file for every reader (Volleyball,
CAD/CAED, MOT) and reports entries that match no clip and no video.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable, Iterable

from .errors import FormatError, Problems, UnmatchedSplit, read_text, split_lines

SPLITS = ("train", "val", "test")
NO_SPLIT = ""  # the split of a clip that splits.json does not list
_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
ACCEPTED = "train, val (or validation), test; any case"


def canonical_split(name: str) -> str | None:
    """``train`` / ``val`` / ``test`` for a split name written in any case (``Validation`` -> ``val``); ``None``
    for any other name."""
    return _ALIASES.get(str(name).strip().lower())


class Splits(dict):
    """``{entry (clip id or video name): split name}`` plus where it came from.

    ``path`` is the ``splits.json`` file and ``text`` its content, kept to name
    the line of an entry in error messages.
    """

    def __init__(self, mapping: dict[str, str], path: Path, text: str):
        super().__init__(mapping)
        self.path = path
        self.text = text

    def line_of(self, entry: str) -> int | None:
        """1-based line where ``entry`` first appears in the file (``None`` if not found)."""
        for needle in (json.dumps(entry), json.dumps(entry, ensure_ascii=False)):
            at = self.text.find(needle)
            if at >= 0:
                return len(split_lines(self.text[:at]))
        m = re.search(rf"(?<![\w.\"]){re.escape(entry)}(?![\w.\"])", self.text)  # numeric entries
        return len(split_lines(self.text[:m.start()])) if m else None


def _no_duplicate_keys(path: Path):
    def hook(pairs):
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise FormatError(f"split {key!r} appears twice; merge the two lists", path=path)
            seen[key] = value
        return seen
    return hook


def read_splits(root: str | Path) -> Splits | None:
    """Map entry (clip id or video name) → split (``train``/``val``/``test``) from ``root/splits.json``;
    ``None`` when absent.

    A structurally bad file (not JSON, not ``{"split": [ids]}``, an entry under
    two splits, a split name that is not train/val/test in some case, two
    spellings of one split) raises :class:`FormatError` naming the file and,
    where known, the line.
    """
    path = Path(root) / "splits.json"
    if not path.is_file():
        return None
    text = read_text(path)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as exc:
        raise FormatError(f"cannot parse JSON ({exc.msg}, column {exc.colno})", path=path,
                          line=exc.lineno) from None
    except RecursionError:
        raise FormatError("cannot parse JSON (nested too deeply)", path=path) from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise FormatError('expected {"split": ["video/clip", "video", ...], ...}', path=path)
    out: dict[str, str] = {}
    folded: dict[str, str] = {}
    splits = Splits({}, path, text)
    unknown = [name for name in data if canonical_split(name) is None]
    if unknown:
        found = ", ".join(repr(n) for n in data)
        raise FormatError(f"unknown split name {unknown[0]!r} (splits found: {found}); split names are {ACCEPTED}",
                          path=path, line=splits.line_of(unknown[0]))
    for name, ids in data.items():
        split = canonical_split(name)
        if split in folded:
            how = "differ only in case" if folded[split].lower() == name.lower() else f"both name the {split} split"
            raise FormatError(f"split names {folded[split]!r} and {name!r} {how}; use one spelling", path=path,
                              line=splits.line_of(name))
        folded[split] = name
        for cid in ids:
            if isinstance(cid, bool) or not isinstance(cid, (str, int)):
                raise FormatError(f"split {name!r}: entry {json.dumps(cid)[:40]} is not a clip id or "
                                  f"video name (a string)", path=path)
            cid = str(cid)
            if cid in out:
                raise FormatError(f"clip {cid} is listed in both {folded[out[cid]]!r} and {name!r}", path=path,
                                  line=splits.line_of(cid))
            out[cid] = split
    splits.update(out)
    return splits


def split_of(video: str, clip: str, splits: dict[str, str]) -> str:
    """Split of a clip under a ``splits.json`` mapping: the clip id ``video/clip``
    first, then a whole-video entry ``video``; ``""`` when neither is listed."""
    return splits.get(f"{video}/{clip}", splits.get(video, NO_SPLIT))


def assign_splits(clips: list, splits: Splits | None, default: Callable[[object], str], problems: Problems,
                  *, videos: Iterable[str], read: Iterable[str] | None = None) -> None:
    """Set ``clip.split`` for every clip, the same way for every reader.

    With ``splits.json``: :func:`split_of`; without: ``default(clip)`` (the
    format's official split). ``videos`` are all video names the dataset folder
    holds and ``read`` those actually read (``None``: all). An entry that is no
    clip id and no video name is an :class:`UnmatchedSplit` naming
    ``splits.json`` and its line (raised, or counted under ``skip_bad``); entries
    of videos that were not read, or of clips skipped as bad, are not reported.
    """
    for clip in clips:
        clip.split = split_of(clip.video, clip.clip, splits) if splits is not None else default(clip)
    if splits is None:
        return
    videos = set(videos)
    read = videos if read is None else set(read)
    clip_ids = {c.id for c in clips}
    skipped = {e.clip for e in problems.errors if e.clip}
    with_clips = {c.video for c in clips}
    for entry in splits:
        if entry in clip_ids or entry in videos or entry in skipped:
            continue
        video, sep, _ = entry.rpartition("/")
        if sep and video in videos and (video not in read or (video not in with_clips and problems.errors)):
            continue  # a video not read, or one whose clips were all skipped as bad (already counted)
        what = (f"no clip of video {video!r} has id {entry!r}" if sep and video in videos
                else f"{entry!r} matches no clip id (video/clip) and no video name")
        problems.report(UnmatchedSplit(f"{what} (listed under {splits[entry]!r})", path=splits.path,
                                       line=splits.line_of(entry)))


def unit_hash(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``(seed, text)``: seeded, order-independent clip partitions."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
