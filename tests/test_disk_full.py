"""A full disk under every writing command: one line naming the path, exit 2, nothing half-written left.

The disk is a real 2 MiB tmpfs filled up to ``free`` bytes (mounting needs root). Where mounting is not
possible, every atomic write is sent to /dev/full instead (a real ENOSPC from the kernel, no file name),
which covers the commands whose files all go through ``stvh.data.atomic``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from stvh.cli import app

TINY = ["model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.depth=2", "train.epochs=1",
        "train.batch_size=4", "data.val_fraction=0.25", "filter.steps=5", "model.backbone=none",
        "model.shared_bits=0", "loss.layer_weights=[0.5,1.0]"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _mount(folder) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """``fill(free)`` -> a folder on a file system with ``free`` bytes left (or every atomic write to /dev/full)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    real = _mount(mnt)

    def fill(free: int):
        if real:
            st = os.statvfs(mnt)
            fd = os.open(mnt / ".filler", os.O_WRONLY | os.O_CREAT)
            os.posix_fallocate(fd, 0, max(st.f_bavail * st.f_frsize - free, 1))
            os.close(fd)
        else:
            if not os.path.exists("/dev/full"):
                pytest.skip("cannot mount a small file system here and there is no /dev/full")
            from stvh.data import atomic

            make = atomic._create_temp

            def to_dev_full(path):
                tmp = make(path)
                tmp.unlink()
                tmp.symlink_to("/dev/full")
                return tmp
            monkeypatch.setattr(atomic, "_create_temp", to_dev_full)
        return mnt
    fill.real = real
    yield fill
    if real:
        subprocess.run(["umount", str(mnt)], check=True)


def full_disk_error(result, disk) -> str:
    """The one line; checks it names a path on the full disk and that nothing but the filler is left there."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing "), result.output
    assert "Traceback" not in result.output
    path = lines[0].removeprefix("error: no space left on device writing ")
    assert os.path.abspath(path).startswith(str(disk)), path
    left = [os.path.relpath(os.path.join(d, f), disk) for d, _, fs in os.walk(disk) for f in fs]
    assert not [f for f in left if f.endswith((".tmp", ".lock")) or ".tmp-" in f], left  # no temp, no lock
    return path


@pytest.fixture(scope="module")
def trained(tiny_synth, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    assert invoke("train", "--data", tiny_synth, "--out", run, "--no-progress", *TINY).exit_code == 0
    assert invoke("eval", "--run", run).exit_code == 0  # RUN/codes.npz and metrics.json for the report
    return run


def test_train_on_a_full_disk(tiny_synth, small_disk):
    disk = small_disk(64 * 1024)  # room for config.yaml and run.json, not for a 400 kB checkpoint
    path = full_disk_error(invoke("train", "--data", tiny_synth, "--out", disk / "run", "--no-progress", *TINY), disk)
    assert path == str(disk / "run" / "best.pt") if small_disk.real else path.startswith(str(disk / "run"))
    assert not (disk / "run" / "best.pt").exists() and not (disk / "run" / "last.pt").exists()


def test_encode_index_and_report_on_a_full_disk(trained, small_disk):
    disk = small_disk(4096)
    full_disk_error(invoke("encode", "--run", trained, "--out", disk / "codes.npz"), disk)
    assert not (disk / "codes.npz").exists()
    full_disk_error(invoke("index", "build", "--codes", trained / "codes.npz", "--out", disk / "x.idx"), disk)
    assert not (disk / "x.idx").exists()
    full_disk_error(invoke("report", "--run", trained, "--out", disk / "report.html"), disk)
    assert not (disk / "report.html").exists()


def test_extract_on_a_full_disk_is_one_line_not_an_hdf5_crash(tiny_synth, small_disk):
    disk = small_disk(48 * 1024)  # meta.json and pca.npz (21 kB) fit, the 550 kB shard does not
    path = full_disk_error(invoke("extract", "--data", tiny_synth, "--backbone", "mobilenet_v3_small", "--pca", 8,
                                  "--out", disk / "feats", "--no-progress"), disk)
    if small_disk.real:
        assert path == str(disk / "feats" / "shard-00000.h5")
    assert not list((disk / "feats").glob("*.h5"))


def test_data_synth_on_a_full_disk(small_disk):
    if not small_disk.real:
        pytest.skip("synth writes its JPEG frames directly: needs a real small file system (root, mount)")
    disk = small_disk(64 * 1024)
    full_disk_error(invoke("data", "synth", "--out", disk / "synth", "--matches", 2, "--clips-per-match", 4,
                           "--frames", 4, "--size", "90x160", "--no-progress"), disk)
