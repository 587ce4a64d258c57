"""One writer per output: a second writer is told who holds it; a killed holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from stvh.locks import LockedError, holder, lock_path, output_lock

HOLD = textwrap.dedent("""
    import sys
    from stvh.locks import output_lock
    with output_lock(sys.argv[1], "stvh train"):
        print("ready", flush=True)
        sys.stdin.read()  # holds the lock until the test closes stdin (or kills it)
""")


@pytest.fixture
def other_writer(tmp_path):
    """A second process holding the lock of tmp_path/run; yields (process, path)."""
    procs = []

    def start(path):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_second_writer_is_told_the_holders_pid_and_command(tmp_path, other_writer):
    run = tmp_path / "run"
    p = other_writer(run)
    with pytest.raises(LockedError) as err:
        with output_lock(run, "stvh encode", flag="--out"):
            pass
    msg = str(err.value)
    assert msg.startswith(f"{run} is being written by pid {p.pid} (stvh train, started ")
    assert msg.endswith("); wait for it or choose another --out")
    assert holder(run)["pid"] == p.pid
    p.stdin.close()
    p.wait()
    assert holder(run) is None and not lock_path(run).exists()  # released and removed by its holder
    with output_lock(run, "stvh encode"):
        assert holder(run)["pid"] == os.getpid()


def test_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path, other_writer):
    run = tmp_path / "run"
    p = other_writer(run)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert json.loads(lock_path(run).read_text())["pid"] == p.pid  # left behind by the kill
    notes = []
    with output_lock(run, "stvh train", note=notes.append):
        pass
    assert len(notes) == 1 and f"pid {p.pid} (stvh train, started" in notes[0] and "no longer running" in notes[0]
    assert not lock_path(run).exists()


def test_lock_is_reentrant_in_one_process_and_creates_parents(tmp_path):
    out = tmp_path / "a" / "b" / "codes.npz"
    notes = []
    with output_lock(out, "stvh encode", note=notes.append):
        assert lock_path(out) == tmp_path / "a" / "b" / ".codes.npz.lock" and lock_path(out).exists()
        with output_lock(out, "stvh eval"):  # the same process: no conflict
            pass
        assert lock_path(out).exists()  # still held by the outer block
    assert not lock_path(out).exists() and notes == []
