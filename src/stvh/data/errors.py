"""Typed data errors that name the file and line (or clip) at fault.

Every reader reports bad input through a :class:`Problems` collector: by
default the first problem raises; with ``skip_bad=True`` the offending line or
clip is skipped and counted instead, so a user can see how much was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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


def text_lines(path, problems: Problems) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file as ``(1-based line number, stripped line)``.

    An unreadable file is reported as a :class:`FormatError` (raised, or skipped
    and counted with ``skip_bad``), giving no lines.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        problems.report(FormatError(f"cannot read: {exc}", path=path))
        return []
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
