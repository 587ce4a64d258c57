"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A kill at any moment leaves either the old file or the new one, never a
partial file. Every stvh file is written through :func:`atomic_path` (the
index package's ``atomic_write`` too), so the rules below hold everywhere:

* the temporary file is ``.NAME.<random>.tmp`` beside ``NAME``; temporaries
  that an earlier, killed write of the same target left behind are removed
  when the next write of that target starts. Two processes writing the same
  target at the same time are therefore not supported (the second would
  remove the first one's temporary);
* the file is created with mode ``0o666`` filtered by the process umask *at
  write time* (the kernel applies it), i.e. the same permissions as any file
  the user creates: 0644 under umask 022, 0600 under umask 077;
* the data and then the rename are fsync'ed;
* an ``OSError`` that names no file (a full disk met by a writer that was
  given an open handle) is given ``path`` as its file name, so the one-line
  message (``stvh.outputs.os_error_message``) names the file being written;
  the temporary file is removed whatever the error.
"""

from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_TOKEN_BYTES = 6  # 12 hex digits: no dots, so temp names of "a" and "a.b" never mix


def temp_pattern(path: str | Path) -> re.Pattern[str]:
    """Names of the temporary files of target ``path`` (``.NAME.<token>.tmp``, token without dots)."""
    return re.compile(rf"^\.{re.escape(Path(path).name)}\.[^.]+\.tmp$")


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files an earlier, killed write of ``path`` left beside it; return them."""
    path = Path(path)
    pattern = temp_pattern(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


def _create_temp(path: Path) -> Path:
    """Create an empty, new temporary file beside ``path`` with mode 0o666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))  # the kernel applies the current umask
            return tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    The caller writes the yielded file (opening it for writing keeps its mode);
    on an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp_path = _create_temp(path)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. a full disk met by a writer given a handle
            exc.filename = os.fspath(path)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))
