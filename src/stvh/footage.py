"""A watched folder's videos: which are complete, their fingerprints, and their clips (stvh.ingest's input).

A video ``NAME`` is ``tracks/NAME.txt`` with ``videos/NAME.<ext>`` or ``frames/NAME/`` (docs/data-user.md's
layout), plus its rows of ``clips.csv`` when that file has some. :func:`read_footage` reads one video alone
with the MOT reader, on a temporary view holding only that video, so a broken neighbour never stops it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .data.clip import Clip, ImageFrames, VideoFrames
from .data.errors import DataError
from .data.mot import IMAGE_EXTS, VIDEO_EXTS


@dataclass(frozen=True)
class Footage:
    """One video of the folder: its tracks file (``None``: none yet, for a detector to make), its frames (a video
    file or a frame folder) and its rows of ``clips.csv`` (header included; ``None``: cut into windows)."""

    name: str
    tracks: Path | None
    source: Path
    clip_rows: str | None = None
    clip_lines: tuple[int, ...] = ()   # the line numbers of those rows in clips.csv

    def files(self) -> list[Path]:
        """Every file the video is read from (tracks first)."""
        tracks = [self.tracks] if self.tracks is not None else []
        if self.source.is_dir():
            return [*tracks, *sorted(p for p in self.source.iterdir() if p.suffix.lower() in IMAGE_EXTS)]
        return [*tracks, self.source]

    def state(self) -> str | None:
        """Fingerprint of the files (names, sizes, mtimes) and clip rows (16 hex digits), ``None`` when a file
        vanished meanwhile."""
        h = hashlib.sha256()
        h.update((self.clip_rows or "").encode("utf-8", "surrogateescape"))
        try:
            for p in self.files():
                st = p.stat()
                h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
        except OSError:
            return None
        return h.hexdigest()[:16]


def scan(root: Path) -> tuple[list[Footage], dict[str, tuple[str, str]], list[Footage]]:
    """Complete videos of ``root``, the incomplete ones (``{name: (file, what is missing)}``) and the videos
    without tracks (as :class:`Footage` with ``tracks=None``, also listed as incomplete).

    Names starting with '.' are ignored (copy tools write such temporaries).
    """
    def listing(folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError:
            return []

    tracks = {p.stem: p for p in listing(root / "tracks") if p.suffix == ".txt" and p.is_file()}
    sources: dict[str, Path] = {}
    for p in listing(root / "videos"):
        if p.suffix.lower() in VIDEO_EXTS and p.is_file():
            sources.setdefault(p.stem, p)
    for p in listing(root / "frames"):
        if p.is_dir():
            sources[p.name] = p  # a frame folder wins over a video, as in the reader
    rows = _clip_rows(root / "clips.csv")
    complete = [Footage(n, tracks[n], sources[n], *rows.get(n, (None, ()))) for n in sorted(tracks) if n in sources]
    missing = {n: (str(p), f"no frames/{n}/ or videos/{n}.<mp4|avi|mkv|mov> (yet)") for n, p in tracks.items()
               if n not in sources}
    untracked = [Footage(n, None, p) for n, p in sorted(sources.items()) if n not in tracks]
    missing.update({f.name: (str(f.source), f"no tracks/{f.name}.txt (yet)") for f in untracked})
    return complete, missing, untracked


def _clip_rows(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{video: (its rows of clips.csv with the header, their line numbers)}``; ``{}`` without a readable file
    with a video column (the reader then cuts windows; a malformed row is reported when that video is read)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        lines = text.splitlines()
        header = next(csv.reader([lines[0]]))
    except (OSError, ValueError, IndexError, StopIteration, csv.Error):
        return {}
    names = [h.strip().lower() for h in header]
    if "video" not in names:
        return {}
    col = names.index("video")
    out: dict[str, list[tuple[int, str]]] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            fields = next(csv.reader([line]))
        except (csv.Error, StopIteration):
            continue
        if len(fields) > col and fields[col].strip():
            out.setdefault(fields[col].strip(), []).append((number, line))
    return {v: ("\n".join([lines[0], *(t for _, t in rows)]) + "\n", tuple(n for n, _ in rows))
            for v, rows in out.items()}


def reader_options(encoder) -> dict:
    """The MOT reader's options for a run, as ``stvh encode --data OTHER`` takes them (the run's own only when the
    run was trained on MOT data)."""
    from .train.extract import reader_kwargs

    cfg = encoder.cfg
    same = (cfg["data"].get("format") or encoder.info.get("format")) == "mot"
    d = cfg["data"] if same else {**cfg["data"], "reader": {}, "window": None, "n_max": None}
    return reader_kwargs({**cfg, "data": d})


def read_footage(footage: Footage, root: Path, options: dict) -> list[Clip]:
    """The clips of one video, read by the MOT reader from a temporary view holding only that video.

    Raises :class:`DataError` (its file named in ``root``, not in the view) on the first problem.
    """
    from .data.formats import read_dataset

    with tempfile.TemporaryDirectory(prefix="stvh-ingest-") as tmp:
        view = Path(tmp)
        (view / "tracks").mkdir()
        os.symlink(footage.tracks.resolve(), view / "tracks" / footage.tracks.name)
        if footage.clip_rows is not None:  # its rows only: another video's bad row is that video's problem
            (view / "clips.csv").write_text(footage.clip_rows, encoding="utf-8")
        kind = "frames" if footage.source.is_dir() else "videos"
        (view / kind).mkdir()
        os.symlink(footage.source.resolve(), view / kind / footage.source.name)
        try:
            ds = read_dataset(view, "mot", flag=None, skip_bad=False, **options)
        except DataError as exc:
            if exc.path is not None:
                exc.path = exc.path.replace(str(view), str(root), 1)
                if exc.path == str(root / "clips.csv") and exc.line is not None and exc.line >= 2:
                    exc.line = footage.clip_lines[exc.line - 2]  # the view holds this video's rows only
            exc.message = exc.message.replace(str(view), str(root))
            raise
    return [_relocate(c, footage) for c in ds.clips]


def _relocate(clip: Clip, footage: Footage) -> Clip:
    """The clip with its frame paths in the watched folder (the reader saw them in the view)."""
    f = clip.frames
    if isinstance(f, ImageFrames):
        f = dataclasses.replace(f, paths=tuple(footage.source / p.name for p in f.paths))
    elif isinstance(f, VideoFrames):
        f = dataclasses.replace(f, path=footage.source)
    return dataclasses.replace(clip, frames=f)
