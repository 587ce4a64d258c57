"""Typed data errors that name the file and line (or clip) at fault.

Every reader reports bad input through a :class:`Problems` collector: by
default the first problem raises; with ``skip_bad=True`` the offending line or
clip is skipped and counted instead, so a user can see how much was dropped.
"""

from __future__ import annotations

import codecs
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

# Frame numbers and integer coordinates beyond this are typos, not data (and would overflow int64/float32 later).
MAX_INT = 10**9


class DataError(Exception):
    """Bad input data. ``path``/``line`` (1-based) or ``clip`` locate it."""

    kind = "data error"

    def __init__(self, message: str, *, path: str | Path | None = None,
                 line: int | None = None, clip: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.clip = clip
        super().__init__(self._render())

    def __str__(self) -> str:  # rendered on demand: a reader may add the clip after raising
        return self._render()

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.clip is not None:
            where.append(f"clip {self.clip}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.kind}: {self.message}" if prefix else f"{self.kind}: {self.message}"


class MalformedLine(DataError):
    kind = "malformed line"


class UnknownLabel(DataError):
    kind = "unknown label"


class BadBox(DataError):
    kind = "bad box"


class MissingFrame(DataError):
    kind = "missing frame"


class UnreadableVideo(DataError):
    kind = "unreadable video"


class FormatError(DataError):
    kind = "format error"


class UnreadableFrame(DataError):
    """An image that exists but cannot be decoded (corrupt, truncated, not an image)."""

    kind = "unreadable frame"


class EmptyFile(DataError):
    """A file that holds nothing usable (no lines, or every row ignored)."""

    kind = "empty file"


class DuplicateKey(MalformedLine):
    """A second line for a key (clip, frame, person) that an earlier line already defined."""

    kind = "duplicate key"


class AmbiguousLabel(DataError):
    """Two spellings of one label (e.g. differing only in case)."""

    kind = "ambiguous label"


class UnmatchedSplit(DataError):
    """A ``splits.json`` entry that names no clip and no video of the dataset."""

    kind = "unmatched split entry"


@dataclass
class Problems:
    """Collects data problems: raise at once, or skip and count (``skip_bad``)."""

    skip_bad: bool = False
    errors: list[DataError] = field(default_factory=list)

    def report(self, error: DataError) -> None:
        if not self.skip_bad:
            raise error
        self.errors.append(error)

    def __len__(self) -> int:
        return len(self.errors)

    def counts(self) -> dict[str, int]:
        return count_kinds(self.errors)


def count_kinds(errors) -> dict[str, int]:
    """``{kind: number}`` of a list of :class:`DataError`."""
    out: dict[str, int] = {}
    for e in errors:
        out[e.kind] = out.get(e.kind, 0) + 1
    return out


_BOMS = (  # UTF-32 first: its little-endian BOM starts with the UTF-16 one
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _line_of(data: bytes, offset: int) -> int:
    """1-based line number of byte ``offset`` (``\\n``, ``\\r\\n`` and ``\\r`` end lines)."""
    return len(re.findall(rb"\r\n|\r|\n", data[:offset])) + 1


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file, for every reader and every text file it reads.

    A UTF-8 BOM is accepted and stripped. A UTF-16/UTF-32 file (BOM, or NUL
    bytes of BOM-less UTF-16), bytes that are not UTF-8 and unreadable files
    raise :class:`FormatError` naming the file (and the line of the bad byte):
    text is never silently mangled.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror or exc}", path=path) from None
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise FormatError(f"file is {name}; save it as UTF-8", path=path)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    nul = data.find(b"\x00")
    if nul >= 0:
        hint = "; UTF-16 without a BOM? save it as UTF-8" if data.count(b"\x00") * 4 >= len(data) else ""
        line = _line_of(data, nul)
        raise FormatError(f"file is not UTF-8 text (NUL byte at line {line}{hint})", path=path, line=line)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = _line_of(data, exc.start)
        raise FormatError(f"file is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at line {line}); "
                          f"save it as UTF-8", path=path, line=line) from None


def split_lines(text: str) -> list[str]:
    """Lines of ``text`` split at ``\\n``, ``\\r\\n`` or ``\\r`` only (so numbers match any editor)."""
    return _LINE_BREAK.split(text)


def text_lines(path, problems: Problems) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file as ``(1-based line number, stripped line)``.

    Read with :func:`read_text`; an unreadable or non-UTF-8 file is reported as
    a :class:`FormatError` (raised, or skipped and counted with ``skip_bad``),
    giving no lines.
    """
    try:
        text = read_text(path)
    except FormatError as err:
        problems.report(err)
        return []
    return [(n, line.strip()) for n, line in enumerate(split_lines(text), start=1) if line.strip()]


def parse_float(token: str, limit: float | None = None) -> float:
    """A finite number (of magnitude at most ``limit`` when given); ``ValueError`` for text, ``nan``, ``inf``,
    overflowing values and numbers beyond ``limit``."""
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {token!r}")
    if limit is not None and abs(value) > limit:
        raise ValueError(f"{token} is larger than {limit:.0f} in magnitude")
    return value


def parse_int(token: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
    """An integer in ``[lo, hi]``; ``ValueError`` otherwise (``3.0`` is accepted as 3)."""
    try:
        value = int(token)
    except ValueError:
        number = parse_float(token)
        if number != int(number):
            raise ValueError(f"not an integer: {token!r}") from None
        value = int(number)
    if not lo <= value <= hi:
        raise ValueError(f"{value} outside {lo}..{hi}")
    return value
