"""check_output and os_error_message (one line naming the path); atomic writes: stale temps, umask."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from stvh.data.atomic import atomic_path, remove_stale_temps, write_text_atomic
from stvh.outputs import OutputError, check_output, os_error_message, read_only


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


def test_fresh_file_is_allowed_and_resolved(tmp_path):
    out = tmp_path / "new" / "deeper" / "codes.npz"
    assert check_output(out) == out.resolve()


def test_fresh_and_empty_folder_are_allowed(tmp_path):
    assert check_output(tmp_path / "run", kind="dir") == (tmp_path / "run").resolve()
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", kind="dir") == (tmp_path / "empty").resolve()


def test_out_equal_to_an_input_is_refused_even_with_overwrite(tmp_path):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"x")
    with pytest.raises(OutputError) as e:
        check_output(ckpt, inputs=[(ckpt, "checkpoint")], overwrite=True, what="CODES file")
    assert _one_line(e.value) == (f"refusing to write CODES file {ckpt}: it is an input of this command "
                                  "(checkpoint); choose another --out")


def test_plain_path_inputs_and_none_entries(tmp_path):
    codes = tmp_path / "codes.npz"
    codes.write_bytes(b"x")
    with pytest.raises(OutputError, match="it is an input of this command; choose another --out"):
        check_output(str(codes), inputs=[None, (None, "cache"), codes], overwrite=True)


def test_same_file_through_a_symlink_is_refused(tmp_path):
    codes = tmp_path / "codes.npz"
    codes.write_bytes(b"x")
    link = tmp_path / "alias.npz"
    link.symlink_to(codes)
    with pytest.raises(OutputError, match="input of this command"):
        check_output(link, inputs=[codes], overwrite=True)


def test_folder_equal_inside_or_containing_an_input_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    with pytest.raises(OutputError, match="input of this command \\(dataset\\)"):
        check_output(data, inputs=[(data, "dataset")], kind="dir", overwrite=True)
    with pytest.raises(OutputError, match=f"lies inside input folder {data} \\(dataset\\)"):
        check_output(data / "run", inputs=[(data, "dataset")], kind="dir")
    with pytest.raises(OutputError, match=f"contains input {data}"):
        check_output(tmp_path, inputs=[data], kind="dir", overwrite=True)
    ckpt = tmp_path / "runs" / "best.pt"
    with pytest.raises(OutputError, match="contains input .*best.pt \\(checkpoint\\)"):
        check_output(tmp_path / "runs", inputs=[(ckpt, "checkpoint")], kind="dir")


def test_file_inside_an_input_folder_is_refused_unless_allowed(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(OutputError, match=f"lies inside input folder {cache} \\(cache\\); choose another --codes"):
        check_output(cache / "x.npz", inputs=[(cache, "cache")], flag="--codes")
    assert check_output(cache / "x.npz", inputs=[(cache, "cache")], allow_inside=[cache]) == (cache / "x.npz")
    # an input that is a file does not make its folder an input
    f = tmp_path / "codes.npz"
    f.write_bytes(b"x")
    assert check_output(tmp_path / "index.npz", inputs=[f]) == tmp_path / "index.npz"


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "index.npz"
    out.write_bytes(b"old")
    with pytest.raises(OutputError) as e:
        check_output(out)
    assert _one_line(e.value) == (f"refusing to write file {out}: it exists; pass --overwrite to replace it "
                                  "or choose another --out")
    assert check_output(out, overwrite=True) == out


def test_existing_non_empty_folder_needs_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(OutputError, match=f"refusing to write folder {run}: folder is not empty; pass --overwrite"):
        check_output(run, kind="dir")
    assert check_output(run, kind="dir", overwrite=True) == run


def test_directory_given_for_a_file_and_file_for_a_folder(tmp_path):
    with pytest.raises(OutputError) as e:
        check_output(tmp_path, overwrite=True)
    assert _one_line(e.value) == f"{tmp_path} is a directory; give a file name"
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match=f"^{f} is a file; give a folder name$"):
        check_output(f, kind="dir", overwrite=True)


def test_parent_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match=f"^cannot write to {f}: not a directory$"):
        check_output(f / "sub" / "codes.npz")
    with pytest.raises(OutputError, match=f"^cannot write to {f}: not a directory$"):
        check_output(f / "run", kind="dir")


def _unwritable_dir(tmp_path):
    """A folder this process may not write: a chmod 0o500 folder, or for root a read-only one."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        return d
    for cand in ("/proc/sys", "/proc/self"):  # root ignores mode bits; these refuse root too here
        if os.path.isdir(cand) and not os.access(cand, os.W_OK):
            return cand
    pytest.skip("running as root and no folder found that root cannot write")


def test_unwritable_parent_is_refused(tmp_path):
    d = _unwritable_dir(tmp_path)
    try:
        with pytest.raises(OutputError) as e:
            check_output(os.path.join(d, "new", "codes.npz"))
        reason = "read-only file system" if read_only(d) else "permission denied"  # root: a read-only mount
        assert _one_line(e.value) == f"cannot write to {d}: {reason}"
        with pytest.raises(OutputError, match=reason):
            check_output(os.path.join(d, "run"), kind="dir")
    finally:
        if os.geteuid() != 0:
            os.chmod(d, 0o700)


def test_bad_kind_and_bad_input_spec():
    with pytest.raises(ValueError, match="kind"):
        check_output("x", kind="folder")
    with pytest.raises(TypeError, match="path, role"):
        check_output("x", inputs=[("a", "b", "c")])


@pytest.mark.parametrize("exc, expected", [
    (PermissionError(errno.EACCES, "Permission denied", "/r/x.npz"), "/r/x.npz: permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/r/d"), "/r/d: is a directory; give a file name"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/r/f/x"),
     "/r/f/x: a part of the path is not a directory"),
    (OSError(errno.ENOSPC, "No space left on device", "/r/x.npz"), "no space left on device writing /r/x.npz"),
    (OSError(errno.EROFS, "Read-only file system", "/r/x.npz"), "/r/x.npz: read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/r/x.npz"), "disk quota exceeded writing /r/x.npz"),
    (OSError("no errno at all"), "no errno at all"),
    (OSError(errno.ENOSPC, "No space", "/r/.codes.npz.ab12_x.tmp"), "no space left on device writing /r/codes.npz"),
    (OSError(errno.EIO, "Input/output error", "/r/x"), "/r/x: input/output error"),
])
def test_os_error_message(exc, expected):
    assert os_error_message(exc) == expected


def test_os_error_message_from_a_real_error(tmp_path):
    with pytest.raises(IsADirectoryError) as e:
        open(tmp_path, "wb")
    assert os_error_message(e.value) == f"{tmp_path}: is a directory; give a file name"


# --------------------------------------------------------------------------- atomic writes (data/atomic.py)

_KILL_MID_WRITE = """
import os, sys
from stvh.data.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a file")
    os.kill(os.getpid(), 9)
"""


def kill_mid_write(target) -> list:
    """Run a process that is SIGKILLed while writing ``target``; return the temp files it left."""
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE, str(target)], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    return sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_write_leaves_a_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "run.json"
    left = kill_mid_write(target)
    assert len(left) == 1 and left[0].startswith(".run.json.") and not target.exists()
    write_text_atomic(target, "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"] and target.read_text() == "{}"


def test_only_the_targets_own_temps_are_removed(tmp_path):
    own = [".codes.npz.k2j3_a8q.tmp", ".codes.npz.0123456789ab.tmp"]     # mkstemp-style and ours
    others = [".codes.npz.predictions.npz.0123456789ab.tmp",               # temp of another target
              ".xcodes.npz.abc.tmp", "codes.npz.abc.tmp", ".codes.npz.abc.tmp.keep"]
    for name in own + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".codes.npz.dir.tmp").mkdir()                              # not a file: kept
    removed = remove_stale_temps(tmp_path / "codes.npz")
    assert sorted(p.name for p in removed) == sorted(own)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".codes.npz.dir.tmp"])
    assert remove_stale_temps(tmp_path / "missing" / "x") == []


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umask_in_force_at_write_time(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            with open(tmp, "wb") as fh:                                    # how torch.save / np.savez write
                fh.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == mode


def test_atomic_write_names_the_target_of_a_full_disk(tmp_path):
    """A writer given a handle meets ENOSPC with no file name (here /dev/full): the error names the target."""
    from stvh.data.atomic import atomic_path

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    target = tmp_path / "codes.npz"
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
            with open("/dev/full", "wb") as fh:  # a real ENOSPC from the kernel, filename None
                fh.write(b"x" * 10)
    assert os_error_message(e.value) == f"no space left on device writing {target}"
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, nothing half-written


def test_read_only_file_system_is_not_called_permission_denied(tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    monkeypatch.setattr(os, "statvfs", lambda p: type("V", (), {"f_flag": os.ST_RDONLY})())
    with pytest.raises(OutputError, match=f"^cannot write to {d}: read-only file system$"):
        check_output(d / "x.npz")
    assert os_error_message(OSError(errno.EROFS, "Read-only file system", str(d / "x"))) == \
        f"{d / 'x'}: read-only file system"
