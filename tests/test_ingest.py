"""``stvh ingest`` (stvh.ingest): footage in the MOT layout -> clips -> codes -> an index, resumable.

Fixture: the serve tests' tiny world (a 32-bit, 3-depth M-STVH run, ``backbone: none``) and its synthetic data
exported in the MOT layout (``v0``: an mp4, ``v1``: a frame folder; 72 frames each, so 7 clips of 10 frames).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stvh.cli import app
from stvh.index.base import load_index
from stvh.ingest import Ingester, Ledger, ingest_folder, ledger_path

runner = CliRunner()
V0 = [f"v0/{s:06d}" for s in range(1, 62, 10)]  # windows of 10 frames of a 72-frame video: 7 clips
V1 = [f"v1/{s:06d}" for s in range(1, 62, 10)]


@pytest.fixture(scope="module")
def footage(serve_world, tmp_path_factory) -> Path:
    """The world's data in the MOT layout, without clips.csv (footage as it arrives: no labels, no clip list)."""
    from stvh.data.mot_export import export_mot

    root = tmp_path_factory.mktemp("footage") / "mot"
    export_mot(serve_world["data"], root, media="mixed", labels=False, splits=False)
    (root / "clips.csv").unlink()
    return root


@pytest.fixture(scope="module")
def encoder(serve_world):
    from stvh.train.encode import Encoder

    return Encoder(serve_world["run"])


class Counting:
    """An encoder that counts the clips it encodes (nothing re-encoded on a restart)."""

    def __init__(self, inner):
        self.inner, self.clips = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_clips(self, clips, *a, **kw):
        self.clips += [c.id for c in clips]
        return self.inner.encode_clips(clips, *a, **kw)


def copy(src: Path, dst: Path, names=("v0", "v1")) -> Path:
    for n in names:
        (dst / "tracks").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "tracks" / f"{n}.txt", dst / "tracks" / f"{n}.txt")
        if (src / "frames" / n).is_dir():
            shutil.copytree(src / "frames" / n, dst / "frames" / n)
        else:
            (dst / "videos").mkdir(exist_ok=True)
            shutil.copy2(src / "videos" / f"{n}.mp4", dst / "videos" / f"{n}.mp4")
    return dst


def test_ingested_clips_have_the_ids_and_codes_of_stvh_encode(serve_world, footage, encoder, tmp_path):
    from stvh.index.codes import CodeSet
    from stvh.train.encode import encode

    index_path = tmp_path / "new.idx"
    result = ingest_folder(footage, serve_world["run"], index_path, settle=0, encoder=encoder)
    assert (result["videos"], result["clips"], result["skipped"]) == (2, 14, [])
    index = load_index(index_path)
    assert index.ids == V0 + V1
    encode(serve_world["run"], tmp_path / "codes.npz", data=footage, log=lambda *a: None)
    want = CodeSet.load(tmp_path / "codes.npz")
    assert list(want.ids) == V0 + V1
    for focus in (1, 2, 3):
        assert np.array_equal(index.codes_of(V0 + V1, focus), want.codes[:, focus - 1])
    activity, group = index.labels_of(V0 + V1)
    pred = encoder.encode_clips(encoder_clips(footage, encoder))["activity"]
    assert list(group) == ["v0"] * 7 + ["v1"] * 7 and np.array_equal(activity, pred)  # the predicted activity
    ids, dist = index.search(want.codes[3:4], k=14)  # searchable: a clip finds itself at distance 0
    assert V0[3] in ids[0][dist[0] == 0]
    ledger = json.loads(ledger_path(index_path).read_text())
    assert ledger["videos"]["v1"]["clips"] == V1 and ledger["videos"]["v1"]["state"] == "done"


def encoder_clips(root: Path, encoder):
    from stvh.data.formats import read_dataset
    from stvh.ingest import reader_options

    return read_dataset(root, "mot", **reader_options(encoder)).clips


def test_a_restart_resumes_and_a_changed_file_is_reingested(serve_world, footage, encoder, tmp_path):
    src = copy(footage, tmp_path / "in")
    index_path = tmp_path / "idx.npz"
    ingest_folder(src, serve_world["run"], index_path, settle=0, encoder=encoder)
    before = load_index(index_path)
    counting = Counting(encoder)
    again = ingest_folder(src, serve_world["run"], index_path, settle=0, encoder=counting)
    assert again["videos"] == 0 and counting.clips == []  # nothing re-encoded
    # v1's tracks change: cut to frames 1-40; only v1 is read again, its 7 old clips replaced by 4
    tracks = src / "tracks" / "v1.txt"
    lines = [ln for ln in tracks.read_text().splitlines() if int(ln.split(",")[0]) <= 40]
    tracks.write_text("\n".join(lines) + "\n")
    changed = ingest_folder(src, serve_world["run"], index_path, settle=0, encoder=counting)
    assert changed["videos"] == 1 and counting.clips == V1[:4]
    after = load_index(index_path)
    assert after.ids == V0 + V1[:4]
    assert np.array_equal(after.codes_of(V0), before.codes_of(V0))
    assert json.loads(ledger_path(index_path).read_text())["videos"]["v1"]["clips"] == V1[:4]


def test_a_video_added_but_not_saved_is_ingested_again_without_duplicates(serve_world, footage, encoder, tmp_path):
    """A crash between the ledger's "pending" entry and the index save: the next run owns and replaces the ids."""
    src = copy(footage, tmp_path / "in")
    index_path = tmp_path / "idx.npz"
    ingest_folder(src, serve_world["run"], index_path, settle=0, encoder=encoder)
    index = load_index(index_path)
    ing = Ingester(src, encoder, Ledger.load(ledger_path(index_path)), settle=0)
    (src / "tracks" / "v0.txt").write_text((src / "tracks" / "v0.txt").read_text() + "\n")  # touched: v0 again
    ing.poll(0.0)
    (footage_v0, fp), = ing.poll(1.0)
    assert ing.apply(index, ing.prepare(footage_v0, fp)) == V0  # in memory; the "process" dies before saving
    assert json.loads(ledger_path(index_path).read_text())["videos"]["v0"]["state"] == "pending"
    counting = Counting(encoder)
    result = ingest_folder(src, serve_world["run"], index_path, settle=0, encoder=counting)
    assert result["videos"] == 1 and counting.clips == V0
    assert sorted(load_index(index_path).ids) == sorted(V0 + V1)


def test_a_file_being_copied_is_not_read_until_it_settles(footage, encoder, tmp_path):
    root = tmp_path / "in"
    (root / "tracks").mkdir(parents=True)
    (root / "videos").mkdir()
    data = (footage / "videos" / "v0.mp4").read_bytes()
    shutil.copy2(footage / "tracks" / "v0.txt", root / "tracks" / "v0.txt")
    ing = Ingester(root, encoder, Ledger(tmp_path / "ledger.json"), settle=0.5)
    (root / "videos" / "v0.mp4").write_bytes(data[: len(data) // 2])
    assert ing.poll(0.0) == [] and ing.poll(0.6) != []  # unchanged for 0.6 s: it would be read now ...
    with open(root / "videos" / "v0.mp4", "ab") as fh:  # ... but the copy goes on
        fh.write(data[len(data) // 2:])
    assert ing.poll(0.7) == []   # changed: the clock starts again
    assert ing.poll(1.1) == []   # 0.4 s unchanged < 0.5 s
    (ready, fp), = ing.poll(1.3)
    assert ready.name == "v0" and ing.prepare(ready, fp) is not None
    # a tracks file without its frames, and frames without tracks, wait (named, not errors)
    (root / "tracks" / "later.txt").write_text("1,1,10,10,20,20,1\n")
    (root / "frames" / "orphan").mkdir(parents=True)
    ing.poll(2.0)
    assert ing.waiting == {"later": (str(root / "tracks" / "later.txt"),
                                     "no frames/later/ or videos/later.<mp4|avi|mkv|mov> (yet)"),
                           "orphan": (str(root / "frames" / "orphan"), "no tracks/orphan.txt (yet)")}


def test_a_video_that_fails_to_open_is_retried_then_reported(footage, encoder, tmp_path):
    root = tmp_path / "in"
    (root / "tracks").mkdir(parents=True)
    (root / "videos").mkdir()
    shutil.copy2(footage / "tracks" / "v0.txt", root / "tracks" / "v0.txt")
    (root / "videos" / "v0.mp4").write_bytes(b"\x00" * 4096)  # no moov yet: cannot open
    ledger = Ledger(tmp_path / "ledger.json")
    ing = Ingester(root, encoder, ledger, settle=0, retries=3, retry_wait=5.0)
    ing.poll(0.0)
    (f, fp), = ing.poll(0.0)
    assert ing.prepare(f, fp) is None and ledger.bad == {}  # first failure: tried again later
    assert ing.poll(4.9) == []                              # not before retry_wait
    (f, fp), = ing.poll(5.0)
    assert ing.prepare(f, fp) is None and ledger.bad == {}
    (f, fp), = ing.poll(10.0)
    assert ing.prepare(f, fp) is None                       # the third read: reported
    assert ledger.bad["v0"]["file"] == str(root / "videos" / "v0.mp4")
    assert ledger.bad["v0"]["reason"].startswith("unreadable video") and "(after 3 tries)" in ledger.bad["v0"]["reason"]
    assert ing.poll(20.0) == []                             # not read again while unchanged
    shutil.copy(footage / "videos" / "v0.mp4", root / "videos" / "v0.mp4")  # the file is fixed
    ing.poll(21.0)
    (f, fp), = ing.poll(21.0)
    assert ing.prepare(f, fp) is not None


def test_bad_files_are_skipped_and_listed_by_the_command(serve_world, footage, tmp_path):
    src = copy(footage, tmp_path / "in")
    (src / "tracks" / "broken.txt").write_text("1,1,10,10\n")             # 4 fields
    shutil.copytree(src / "frames" / "v1", src / "frames" / "broken")
    (src / "tracks" / "garbage.txt").write_text("1,1,10,10,20,20,1\n")
    (src / "videos" / "garbage.mp4").write_bytes(b"not a video")
    (src / "tracks" / "short.txt").write_text("1,1,10,10,20,20,1\n")      # one frame: no 10-frame clip
    shutil.copytree(src / "frames" / "v1", src / "frames" / "short")
    index = tmp_path / "idx.npz"
    args = ["ingest", str(src), "--run", str(serve_world["run"]), "--index", str(index), "--settle", "0",
            "--retries", "1", "--no-progress"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"ingested 2 videos (14 clips) into {index}; it holds 14 clips" in r.output
    assert "skipped 3 file(s):" in r.output
    assert f"  {src / 'tracks' / 'broken.txt'}: line 1: malformed line: expected 'frame,id,x,y,w,h" in r.output
    assert f"  {src / 'videos' / 'garbage.mp4'}: unreadable video: cannot open" in r.output
    assert f"  {src / 'tracks' / 'short.txt'}: no clip: no 10-frame window with a tracked person" in r.output
    assert str(tmp_path) + "/stvh-ingest" not in r.output and "/tmp/stvh-ingest-" not in r.output  # no view paths
    # the next run lists them again without reading them; --strict makes that an error
    r = runner.invoke(app, args + ["--strict"])
    assert r.exit_code == 2 and r.output.count("\n") == 6, r.output
    assert "ingested 0 videos" in r.output and r.output.splitlines()[-1] == "error: 3 file(s) skipped (--strict)"


def test_clips_already_in_the_index_from_elsewhere_are_not_overwritten(serve_world, footage, encoder, tmp_path):
    src = copy(footage, tmp_path / "in", names=("v0",))
    index_path = tmp_path / "idx.npz"
    ingest_folder(src, serve_world["run"], index_path, settle=0, encoder=encoder)
    os.unlink(ledger_path(index_path))  # v0's clips are in the index, but not from this ledger
    result = ingest_folder(src, serve_world["run"], index_path, settle=0, encoder=encoder)
    assert result["videos"] == 0 and result["skipped"] == [
        {"file": str(src / "tracks" / "v0.txt"), "reason": "clip id v0/000001 is already in the index and was not "
                                                           "ingested from this folder; rename the video"}]
    assert load_index(index_path).ids == V0


@pytest.mark.parametrize("args, words", [
    (["DIR_MISSING", "--run", "RUN", "--index", "IDX"], "is not a folder"),
    (["DIR", "--run", "RUN", "--index", "DIR/idx.npz"], "lies inside input folder"),
    (["DIR", "--run", "RUN", "--index", "IDX", "--settle", "-1"], "--settle"),
    (["DIR", "--run", "RUN", "--index", "IDX", "--retries", "0"], "--retries"),
    (["DIR", "--run", "DIR", "--index", "IDX"], "run.json"),
    (["DIR", "--run", "RUN", "--index", "OTHER"], "holds 16-bit codes"),
    (["DIR", "--run", "RUN", "--index", "IDX", "--region", "0,0,10,10"], "--region needs --detector"),
    (["DIR", "--run", "RUN", "--index", "IDX", "--detector", "DIR/missing.onnx"], "missing.onnx"),
])
def test_bad_arguments_are_one_line(serve_world, footage, tmp_path, args, words):
    from stvh.index.base import create_index

    create_index("numpy", 16, 3).save(tmp_path / "other.npz")
    names = {"DIR": str(footage), "DIR_MISSING": str(tmp_path / "nope"), "RUN": str(serve_world["run"]),
             "IDX": str(tmp_path / "idx.npz"), "OTHER": str(tmp_path / "other.npz")}
    r = runner.invoke(app, ["ingest", *[names.get(a, a.replace("DIR", str(footage))) for a in args]])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: "), r.output
    assert words in r.output, r.output


def test_clip_rows_of_clips_csv_are_used_per_video(serve_world, encoder, tmp_path):
    """With clips.csv, each video gets its own rows (the ids stvh encode gives); a bad row spoils its video only."""
    from stvh.data.mot_export import export_mot

    src = tmp_path / "mot"
    export_mot(serve_world["data"], src, media="mixed", labels=False, splits=False)
    lines = (src / "clips.csv").read_text().splitlines()
    bad_line = next(i for i, ln in enumerate(lines, start=1) if ln.startswith("v1,") and i > 5)
    lines[bad_line - 1] = lines[bad_line - 1].replace("v1,", "v1,x", 1)  # start "x1": not an integer
    (src / "clips.csv").write_text("\n".join(lines) + "\n")
    result = ingest_folder(src, serve_world["run"], tmp_path / "idx.npz", settle=0, encoder=encoder)
    assert load_index(tmp_path / "idx.npz").ids == [f"v0/{s:06d}" for s in range(1, 72, 6)]  # 12 rows of 6 frames
    assert result["skipped"] == [{"file": str(src / "clips.csv"),
                                  "reason": f"line {bad_line}: malformed line: start/end must be integers "
                                            f"1..1000000000 (frame numbers): {lines[bad_line - 1].split(',')!r}"}]


class Boxes:
    """A stand-in detector: the same three people in every frame (callable as stvh.track's detectors are)."""

    name = "fixed"

    def __call__(self, rgb):
        boxes = np.array([[10, 10, 30, 60], [60, 20, 80, 70], [110, 15, 130, 65]], np.float32)
        return boxes, np.full(3, 0.9, np.float32)


def test_footage_without_tracks_is_tracked_with_a_detector(serve_world, footage, encoder, tmp_path):
    src = tmp_path / "in"
    (src / "videos").mkdir(parents=True)
    shutil.copy(footage / "videos" / "v0.mp4", src / "videos" / "v0.mp4")  # 72 frames, no tracks
    without = ingest_folder(src, serve_world["run"], tmp_path / "a.npz", settle=0, encoder=encoder)
    assert without["videos"] == 0 and without["skipped"] == [
        {"file": str(src / "videos" / "v0.mp4"), "reason": "no tracks/v0.txt (yet)"}]
    result = ingest_folder(src, serve_world["run"], tmp_path / "b.npz", settle=0, encoder=encoder,
                           detector=Boxes())
    assert result["videos"] == 1 and result["skipped"] == []
    lines = (src / "tracks" / "v0.txt").read_text().splitlines()
    assert len(lines) == 72 * 3 and lines[0].startswith("1,") and lines[0].endswith(",10.00,10.00,20.00,50.00,1")
    ids = load_index(tmp_path / "b.npz").ids
    assert ids == V0  # windows of the run's 10 frames, as written to clips.csv by the tracker
    assert (src / "clips.csv").read_text().splitlines()[1:] == [f"v0,{s},{s + 9}" for s in range(1, 62, 10)]


def test_sigterm_releases_the_index_lock(serve_world, footage, tmp_path):
    """A `stvh ingest` stopped with SIGTERM (as service managers stop things) ends through its finally blocks:
    exit status 143 and no lock file left beside the index."""
    import signal
    import subprocess
    import sys
    import time

    from stvh.locks import holder, lock_path

    src = copy(footage, tmp_path / "in", names=("v0",))
    index = tmp_path / "idx.npz"
    proc = subprocess.Popen([sys.executable, "-m", "stvh.cli", "ingest", str(src), "--run", str(serve_world["run"]),
                             "--index", str(index), "--settle", "600", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while holder(index) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert holder(index) is not None and holder(index)["command"] == "stvh ingest"
        time.sleep(1.0)  # into ingest_folder's wait for the video to settle
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert not lock_path(index).exists() and "Traceback" not in out
