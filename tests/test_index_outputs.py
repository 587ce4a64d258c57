"""`stvh index build` / `stvh search`: safe outputs, file modes, argument errors (API and CLI)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from stvh.cli import app
from stvh.index import CodeSet, load_index
from stvh.index.commands import build_index, search_index
from stvh.outputs import OutputError, read_only

runner = CliRunner()


def codes_file(tmp_path, *, bits=32, depth=3, m=12, name="codes.npz"):
    rng = np.random.default_rng(0)
    signs = rng.choice(np.array([-1, 1], np.int8), (m, depth, bits))
    cs = CodeSet.from_signs([f"v{i // 4}/{i}" for i in range(m)], signs, activity=np.arange(m) % 3,
                            split=["train"] * m, meta={"activities": ["a", "b", "c"]})
    p = tmp_path / name
    cs.save(p)
    return p


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The CLI's one error line (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --------------------------------------------------------------------------- index build: outputs

def test_build_refuses_to_overwrite_its_codes(tmp_path):
    cpath = codes_file(tmp_path)
    before = cpath.read_bytes()
    with pytest.raises(OutputError, match="it is an input of this command \\(CODES file\\)"):
        build_index(cpath, cpath, overwrite=True)
    line = error_line(cli("index", "build", "--codes", cpath, "--out", cpath, "--overwrite"))
    assert line == (f"error: refusing to write index file {cpath}: it is an input of this command (CODES file); "
                    "choose another --out")
    assert cpath.read_bytes() == before


def test_build_refuses_an_existing_index_unless_overwrite(tmp_path):
    cpath = codes_file(tmp_path)
    out = tmp_path / "x.idx"
    assert cli("index", "build", "--codes", cpath, "--out", out).exit_code == 0
    before = out.read_bytes()
    line = error_line(cli("index", "build", "--codes", cpath, "--out", out))
    assert str(out) in line and "pass --overwrite" in line
    with pytest.raises(OutputError, match="it exists"):
        build_index(cpath, out)
    assert out.read_bytes() == before
    result = cli("index", "build", "--codes", cpath, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(load_index(out)) == 12


def test_build_out_is_a_directory_or_under_a_file(tmp_path):
    cpath = codes_file(tmp_path)
    assert error_line(cli("index", "build", "--codes", cpath, "--out", tmp_path)) == \
        f"error: {tmp_path} is a directory; give a file name"
    assert error_line(cli("index", "build", "--codes", cpath, "--out", cpath / "x.idx")) == \
        f"error: cannot write to {cpath}: not a directory"


def test_build_into_a_folder_it_may_not_write(tmp_path):
    cpath = codes_file(tmp_path)
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    else:  # root ignores mode bits; a read-only folder refuses root too
        folder = next((p for p in ("/proc/sys", "/proc/self") if not os.access(p, os.W_OK)), None)
        if folder is None:
            pytest.skip("running as root and no folder found that root cannot write")
    try:
        assert error_line(cli("index", "build", "--codes", cpath, "--out", f"{folder}/x.idx")) == \
            f"error: cannot write to {folder}: {'read-only file system' if read_only(folder) else 'permission denied'}"
    finally:
        if os.geteuid() != 0:
            folder.chmod(0o700)


def test_os_errors_during_the_build_are_one_line(tmp_path, monkeypatch):
    import errno

    cpath = codes_file(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".x.idx.0123456789ab.tmp"))
    monkeypatch.setattr(np, "savez", full)
    assert error_line(cli("index", "build", "--codes", cpath, "--out", tmp_path / "x.idx")) == \
        f"error: no space left on device writing {tmp_path / 'x.idx'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npz"]           # no temp left


_KILLED_BUILD = """
import os, sys
import numpy as np
real = np.savez
def die(fh, **arrays):
    real(fh, **arrays)
    os.kill(os.getpid(), 9)
np.savez = die
from stvh.index.commands import build_index
build_index(sys.argv[1], sys.argv[2])
"""


def test_a_killed_build_leaves_a_temp_that_the_next_build_removes(tmp_path):
    cpath = codes_file(tmp_path)
    out = tmp_path / "x.idx"
    proc = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(cpath), str(out)], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    temps = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith(".x.idx.") and not out.exists()
    assert cli("index", "build", "--codes", cpath, "--out", out).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npz", "x.idx"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_codes_and_index_files_get_the_users_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        cpath = codes_file(tmp_path)                                           # what `stvh encode` writes
        result = cli("index", "build", "--codes", cpath, "--out", tmp_path / "x.idx")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert cpath.stat().st_mode & 0o777 == mode
    assert (tmp_path / "x.idx").stat().st_mode & 0o777 == mode


def test_milvus_lite_database_may_not_be_the_codes_or_the_index(tmp_path):
    cpath = codes_file(tmp_path)
    with pytest.raises(OutputError, match="Milvus Lite database .*: it is an input of this command \\(CODES file\\)"):
        build_index(cpath, tmp_path / "x.idx", backend="milvus", uri=str(cpath))
    with pytest.raises(OutputError, match="x.idx: it is an input of this command \\(Milvus Lite database\\)"):
        build_index(cpath, tmp_path / "x.idx", backend="milvus", uri=str(tmp_path / "x.idx"))


# --------------------------------------------------------------------------- index build: bad inputs

def test_corrupt_truncated_or_missing_codes_are_one_line(tmp_path):
    cpath = codes_file(tmp_path)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(cpath.read_bytes()[:200])
    line = error_line(cli("index", "build", "--codes", trunc, "--out", tmp_path / "x.idx"))
    assert f"{trunc}: " in line
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    assert f"{junk}: " in error_line(cli("index", "build", "--codes", junk, "--out", tmp_path / "x.idx"))
    assert error_line(cli("index", "build", "--codes", tmp_path / "none.npz", "--out", tmp_path / "x.idx")) == \
        f"error: {tmp_path / 'none.npz'}: CODES file not found"
    assert not (tmp_path / "x.idx").exists()


# --------------------------------------------------------------------------- search: k and focus

@pytest.fixture
def built(tmp_path):
    cpath = codes_file(tmp_path)
    out = tmp_path / "x.idx"
    build_index(cpath, out)
    return out


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_an_error_in_the_api(built, k):
    with pytest.raises(ValueError, match=f"^k must be >= 1, got {k}$"):
        search_index(built, clip_id="v0/0", k=k)
    with pytest.raises(ValueError, match=f"^k must be >= 1, got {k}$"):
        search_index(built, codes_file=built.with_name("codes.npz"), k=k)
    with load_index(built) as index:
        with pytest.raises(ValueError, match=f"^k must be >= 1, got {k}$"):
            index.search(np.zeros(4, np.uint8), k)
    with pytest.raises(ValueError, match="^k must be an integer >= 1, got 2.5$"):
        search_index(built, clip_id="v0/0", k=2.5)


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_below_one_is_an_error_in_the_cli(built, k):
    assert error_line(cli("search", "--index", built, "--clip", "v0/0", "-k", k)) == f"error: k must be >= 1, got {k}"


def test_k_one_still_gives_the_nearest_other_clip(built):
    rows = search_index(built, clip_id="v0/0", k=1)
    assert len(rows) == 1 and rows[0]["clip"] != "v0/0"
    result = cli("search", "--index", built, "--clip", "v0/0", "-k", "1", "--json")
    assert result.exit_code == 0 and '"rank": 1' in result.output


@pytest.mark.parametrize("focus", ["0", "4", "-1"])
def test_focus_outside_the_index_names_the_allowed_range(built, focus):
    line = error_line(cli("search", "--index", built, "--clip", "v0/0", "--focus", focus))
    assert line == f"error: unknown focus {focus}: this index has foci 1..3 (1 = shallowest, 3 = deepest)"
    assert cli("search", "--index", built, "--clip", "v0/0", "--focus", "3").exit_code == 0


def test_corrupt_index_and_wrong_code_length_are_one_line(built, tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(built.read_bytes()[:-40])
    assert f"{bad}: " in error_line(cli("search", "--index", bad, "--clip", "v0/0"))
    q = tmp_path / "q.txt"
    q.write_text("0101\n")
    assert error_line(cli("search", "--index", built, "--codes-file", q)) == \
        f"error: {q}: wrong code length: every line must have 32 bits"
    other = codes_file(tmp_path, bits=64, name="c64.npz")
    assert error_line(cli("search", "--index", built, "--codes-file", other)) == \
        f"error: {other}: codes have 64 bits but the index has 32"
