"""``skipped.csv``: what ``--skip-bad`` left out, one row per problem (file, line, kind, message).

Every command that reads data with ``--skip-bad`` writes this file beside its
outputs, so a user can see exactly which file and line was dropped and why.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .atomic import write_text_atomic
from .errors import DataError

COLUMNS = ("file", "line", "clip", "kind", "message")


def skipped_rows(errors: list[DataError]) -> list[dict[str, str]]:
    """One dict per problem with the :data:`COLUMNS` keys (empty strings where unknown)."""
    return [{"file": e.path or "", "line": "" if e.line is None else str(e.line), "clip": e.clip or "",
             "kind": e.kind, "message": e.message} for e in errors]


def write_skipped(path: str | Path, errors: list[DataError]) -> Path:
    """Write ``skipped.csv`` atomically (a header only when nothing was skipped)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(skipped_rows(errors))
    write_text_atomic(path, buf.getvalue())
    return Path(path)
