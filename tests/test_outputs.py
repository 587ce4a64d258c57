"""check_output and os_error_message: every refusal is one line naming the path."""

from __future__ import annotations

import errno
import os

import pytest

from stvh.outputs import OutputError, check_output, os_error_message


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
        assert _one_line(e.value) == f"cannot write to {d}: permission denied"
        with pytest.raises(OutputError, match="permission denied"):
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
    (OSError(errno.ENOSPC, "No space left on device", "/r/x.npz"), "/r/x.npz: disk full (no space left on device)"),
    (OSError(errno.EROFS, "Read-only file system", "/r/x.npz"), "/r/x.npz: read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device"), "cannot write: disk full (no space left on device)"),
    (OSError(errno.ENOSPC, "No space", "/r/.codes.npz.ab12_x.tmp"), "/r/codes.npz: disk full (no space left on device)"),
    (OSError(errno.EIO, "Input/output error", "/r/x"), "/r/x: input/output error"),
])
def test_os_error_message(exc, expected):
    assert os_error_message(exc) == expected


def test_os_error_message_from_a_real_error(tmp_path):
    with pytest.raises(IsADirectoryError) as e:
        open(tmp_path, "wb")
    assert os_error_message(e.value) == f"{tmp_path}: is a directory; give a file name"
