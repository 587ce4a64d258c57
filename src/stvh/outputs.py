"""The one place that checks where a command is about to write.

Every command that writes (``train``, ``encode``, ``extract``, ``index build``
...) calls :func:`check_output` before doing any work, so that it never
overwrites one of its own inputs (codes, checkpoint, cache, dataset), never
replaces an existing output without ``--overwrite``, and reports a directory
given for a file (or the reverse) and a folder it may not write to as one line
naming the path. :func:`os_error_message` turns an ``OSError`` raised later
(permission, full disk, read-only file system) into such a line too.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Iterable, Union

PathLike = Union[str, os.PathLike]
# an input is a path, or a ``(path, role)`` pair such as ``(ckpt, "checkpoint")``
InputSpec = Union[PathLike, tuple, None]

__all__ = ["OutputError", "check_output", "os_error_message", "read_only"]


class OutputError(ValueError):
    """An output path the command must not write; the message is one line naming it."""


def _resolve(p: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _split(spec: InputSpec) -> tuple[Path, str | None] | None:
    if spec is None:
        return None
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise TypeError(f"an input is a path or a (path, role) pair, got {spec!r}")
        path, role = spec
        return (None if path is None else (_resolve(path), role))
    return _resolve(spec), None


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and child.is_relative_to(parent)


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(out: PathLike, *, inputs: Iterable[InputSpec] = (), overwrite: bool = False,
                 kind: str = "file", allow_inside: Iterable[PathLike] = (),
                 what: str | None = None, flag: str = "--out") -> Path:
    """Check that ``out`` may be written; return its resolved path or raise :class:`OutputError`.

    ``out`` is a file the command will write (``kind="file"``) or a folder it
    will create and fill (``kind="dir"``). ``inputs`` are the paths it reads,
    each a path or a ``(path, role)`` pair; ``None`` entries are ignored.
    Refused: ``out`` is an input; a folder ``out`` that is, lies inside or
    contains an input; a file ``out`` inside an input folder (unless that folder
    is in ``allow_inside``); an existing ``out`` without ``overwrite`` (a folder
    only when non-empty); a directory given for a file and the reverse; a
    nearest existing parent that is not a directory or not writable.
    ``what`` names the output in the message (default "file"/"folder");
    ``flag`` is the option the user should change.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    shown = os.fspath(out)
    what = what or ("file" if kind == "file" else "folder")
    target = _resolve(out)
    allowed = {_resolve(a) for a in allow_inside if a is not None}

    def refuse(reason: str) -> OutputError:
        return OutputError(f"refusing to write {what} {shown}: {reason}")

    for spec in inputs:
        split = _split(spec)
        if split is None:
            continue
        src, role = split
        named = f" ({role})" if role else ""
        if target == src:
            raise refuse(f"it is an input of this command{named}; choose another {flag}")
        if kind == "dir" and _inside(target, src):
            raise refuse(f"it lies inside input folder {src}{named}; choose another {flag}")
        if kind == "dir" and _inside(src, target):
            raise refuse(f"it contains input {src}{named}; choose another {flag}")
        if kind == "file" and src.is_dir() and _inside(target, src) and src not in allowed:
            raise refuse(f"it lies inside input folder {src}{named}; choose another {flag}")

    if kind == "file" and target.is_dir():
        raise OutputError(f"{shown} is a directory; give a file name")
    if kind == "dir" and target.exists() and not target.is_dir():
        raise OutputError(f"{shown} is a file; give a folder name")
    if not overwrite:
        if kind == "file" and target.exists():
            raise refuse(f"it exists; pass --overwrite to replace it or choose another {flag}")
        if kind == "dir" and target.is_dir() and any(target.iterdir()):
            raise refuse(f"folder is not empty; pass --overwrite to replace it or choose another {flag}")

    parent = _nearest_existing(target if kind == "dir" else target.parent)
    if not parent.is_dir():
        raise OutputError(f"cannot write to {parent}: not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        reason = "read-only file system" if read_only(parent) else "permission denied"
        raise OutputError(f"cannot write to {parent}: {reason}")
    return target


def read_only(path: PathLike) -> bool:
    """True when ``path`` lies on a file system mounted read-only (not merely a folder without write permission)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs on this platform
        return False


# atomic writes go through ``.NAME.<random>.tmp`` (data/atomic.py); name NAME to the user
_TEMP = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")

_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory; give a file name",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
}


# errors of a write that ran out of room: said first, then the file being written
_WRITING = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
}


def _user_name(filename) -> str | None:
    if filename is None:
        return None
    p = Path(os.fsdecode(filename))
    m = _TEMP.match(p.name)
    return os.fspath(p.with_name(m["name"])) if m else os.fspath(p)


def os_error_message(exc: OSError) -> str:
    """One line for an ``OSError``: the file it names and the reason in plain words.

    A temporary file of an atomic write (``.NAME.xyz.tmp``) is reported under
    the name of the file being written. A full disk reads ``no space left on
    device writing PATH``; a read-only file system ``PATH: read-only file
    system`` (never "permission denied").
    """
    name = _user_name(exc.filename)
    if name is None:
        name = _user_name(exc.filename2)
    if exc.errno in _WRITING:  # "no space left on device writing PATH"
        return f"{_WRITING[exc.errno]} writing {name}" if name else _WRITING[exc.errno]
    reason = _REASONS.get(exc.errno) or (exc.strerror.lower() if exc.strerror else str(exc) or type(exc).__name__)
    return f"{name}: {reason}" if name else reason
