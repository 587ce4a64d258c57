"""One writer per output: a run folder, a feature cache, a CODES file, an index file.

``with output_lock(path, "stvh train", flag="--out"):`` holds an exclusive
lock on ``path`` for as long as the command writes it. The lock is a kernel
``flock`` on a small file beside the output, ``.NAME.lock`` (beside, not
inside: ``train --overwrite`` empties the run folder and the folder may not
exist yet), which holds the holder's pid, command and start time as JSON:

* a second writer gets :class:`LockedError`, one line naming the holder:
  ``RUN is being written by pid 1234 (stvh train, started 10:21:03); wait for
  it or choose another --out``;
* the kernel drops a ``flock`` when its process dies, so a lock left by a
  killed process is free: it is taken over and :func:`output_lock` reports it
  once through ``note`` ("took over the lock of pid 1234 (stvh train, started
  ...), which is no longer running");
* the lock file is removed on release; a writer that locked a file someone
  removed and re-created in between tries again (the inode check below).

Locks are re-entrant within a process (``stvh demo`` locks nothing twice:
``fit`` locks the run folder that ``stvh train`` already holds).

Why not the ``filelock`` package: its ``flock`` lock does not say who holds it,
and its soft (pid-file) lock records no command or start time and breaks stale
locks silently; a pid file without ``flock`` would also have to guess whether
a recorded pid still belongs to the writer (pids are reused).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["LockedError", "check_free", "holder", "lock_path", "output_lock"]

_HELD: dict[Path, int] = {}  # resolved output path -> re-entrant depth in this process


class LockedError(ValueError):
    """Another process is writing the output; the message is one line naming it and its pid."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside it."""
    p = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return p.with_name(f".{p.name}.lock")


def _describe(info: dict) -> str:
    started = info.get("started")
    when = time.strftime("%H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {info.get('pid', '?')}{where} ({info.get('command', 'stvh')}, started {when})"


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def holder(path: str | os.PathLike) -> dict | None:
    """Who holds the lock of output ``path`` now (``{"pid", "command", "started", "host"}``), else ``None``."""
    lp = lock_path(path)
    try:
        fd = os.open(lp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_free(path: str | os.PathLike, *, flag: str | None = "--out") -> None:
    """Raise :class:`LockedError` when another process holds the lock of ``path`` (creates nothing)."""
    info = holder(path)
    key = Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))
    if info is not None and not _HELD.get(key):
        raise LockedError(_locked_message(os.fspath(path), info, flag))


def _locked_message(shown: str, info: dict, flag: str | None) -> str:
    advice = f"wait for it or choose another {flag}" if flag else "wait for it"
    return f"{shown} is being written by {_describe(info)}; {advice}"


def _acquire(lp: Path, shown: str, flag: str | None) -> tuple[int, dict]:
    """An fd holding ``flock(LOCK_EX)`` on ``lp`` and what the file said before (a stale holder)."""
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(fd)
            os.close(fd)
            raise LockedError(_locked_message(shown, info, flag)) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder we waited on may have removed the file: lock the one that is there now
            same = os.fstat(fd).st_ino == os.stat(lp).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, _read(fd)
        os.close(fd)


@contextmanager
def output_lock(path: str | os.PathLike, command: str, *, flag: str | None = "--out",
                note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the write lock of output ``path`` (a file or a folder) while the block runs.

    Raises :class:`LockedError` when another process holds it. ``command``
    (e.g. ``"stvh train"``) is what a second writer is told; ``flag`` the
    option it should change (``None``: only "wait for it"); ``note`` receives one line when a lock left by a
    killed process is taken over. Missing parent folders are created.
    """
    shown = os.fspath(path)
    key = Path(os.path.realpath(os.path.abspath(os.path.expanduser(shown))))
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield key
        finally:
            _HELD[key] -= 1
        return
    lp = lock_path(key)
    try:
        lp.parent.mkdir(parents=True, exist_ok=True)
        fd, before = _acquire(lp, shown, flag)
    except OSError as exc:  # e.g. a folder one may not write to: name the output, not the lock file
        raise OSError(exc.errno, exc.strerror, shown) from None
    try:
        if before.get("pid") not in (None, os.getpid()) and note is not None:
            note(f"took over the lock of {_describe(before)}, which is no longer running")
        mine = json.dumps({"pid": os.getpid(), "command": command, "started": time.time(),
                           "host": socket.gethostname()}).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine, 0)
    except BaseException as exc:  # e.g. a full disk: leave no lock file behind, name the output
        os.unlink(lp)
        os.close(fd)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, shown) from None
        raise
    _HELD[key] = 1
    try:
        yield key
    finally:
        _HELD.pop(key, None)
        try:
            os.unlink(lp)  # still locked: a waiting writer re-checks the inode and re-creates the file
        except OSError as exc:  # pragma: no cover - e.g. a read-only file system now
            if exc.errno not in (errno.ENOENT, errno.EROFS, errno.EACCES):
                raise
        finally:
            os.close(fd)
