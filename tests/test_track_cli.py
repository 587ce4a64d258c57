"""``stvh track`` end to end: a synthetic MOT video, a constant-box ONNX model, the dataset read back by
``read_mot`` and ``stvh data info``; scene cuts in clips.csv; one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnx")

from stvh.cli import app  # noqa: E402
from stvh.data.mot import read_mot  # noqa: E402

from test_track_detector import make_model  # noqa: E402
from test_track_tracker import scene  # noqa: E402

runner = CliRunner()

# Two boxes in the 64x64 input; frames are 90x160: ratio 0.4, 14 rows of padding on top.
#   (8, 20, 24, 44) -> (20, 15, 60, 75);  (40, 30, 56, 46) -> (100, 40, 140, 80)
ROWS = np.array([[[8, 20, 24, 44, 0.9, 0], [40, 30, 56, 46, 0.8, 0], [0, 0, 0, 0, 0, 0]]], np.float32)
BOX1, BOX2 = [20, 15, 60, 75], [100, 40, 140, 80]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> tuple[Path, Path]:
    """A 30-frame synthetic video (90x160) and the constant two-box model."""
    root = tmp_path_factory.mktemp("track")
    assert invoke("data", "synth", "--out", root / "synth", "--matches", 1, "--clips-per-match", 3,
                  "--size", "90x160", "--seed", 1, "--no-progress").exit_code == 0
    assert invoke("data", "export-mot", root / "synth", "--out", root / "mot", "--media", "video",
                  "--no-splits").exit_code == 0
    return root / "mot" / "videos" / "v0.mp4", make_model(root / "const.onnx", ROWS)


def test_track_writes_a_dataset_the_reader_takes(footage, tmp_path):
    video, model = footage
    out = tmp_path / "ds"
    res = invoke("track", video, "--detector", model, "--out", out, "--no-progress", "--scene-threshold", 0)
    assert res.exit_code == 0, res.output
    assert (out / "videos" / "v0.mp4").read_bytes() == video.read_bytes()
    lines = (out / "tracks" / "v0.txt").read_text().splitlines()
    assert lines[:2] == ["1,1,20.00,15.00,40.00,60.00,1", "1,2,100.00,40.00,40.00,40.00,1"] and len(lines) == 60
    assert (out / "clips.csv").read_text() == "video,start,end\nv0,1,10\nv0,11,20\nv0,21,30\n"
    ds = read_mot(out)
    assert [c.id for c in ds.clips] == ["v0/000001", "v0/000011", "v0/000021"]
    for c in ds.clips:
        np.testing.assert_allclose(c.boxes[:, :2], np.tile([BOX1, BOX2], (10, 1, 1)), atol=1e-4)
        assert c.mask.sum() == 2
    assert invoke("data", "info", out).exit_code == 0

    again = invoke("track", video, "--detector", model, "--out", out, "--no-progress")
    assert again.exit_code == 2 and "not empty; pass --overwrite" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert invoke("track", video, "--detector", model, "--out", out, "--no-progress", "--force").exit_code == 0


def test_region_drops_the_box_whose_foot_is_outside(footage, tmp_path):
    video, model = footage
    out = tmp_path / "ds"
    res = invoke("track", video, "--detector", model, "--out", out, "--no-progress", "--region", "0,0,80,90")
    assert res.exit_code == 0, res.output
    ds = read_mot(out)
    assert all(c.mask.sum() == 1 for c in ds.clips)
    np.testing.assert_allclose(ds.clips[0].boxes[0, 0], BOX1, atol=1e-4)


def test_clip_windows_never_cross_a_scene_cut(tmp_path):
    from stvh.data.mot_export import _write_video

    video = tmp_path / "cut.mp4"
    _write_video(video, scene((20, 40, 160), 26, 0) + scene((200, 60, 30), 34, 1))
    model = make_model(tmp_path / "m.onnx", ROWS, in_shape=(1, 3, 36, 64))  # 72x128 frames: ratio 0.5
    out = tmp_path / "ds"
    res = invoke("track", video, "--detector", model, "--out", out, "--no-progress", "--min-scene-len", 5)
    assert res.exit_code == 0, res.output
    assert '"scene_cuts": [\n        27\n      ]' in res.output
    assert (out / "clips.csv").read_text().splitlines()[1:] == ["cut,1,10", "cut,11,20", "cut,27,36", "cut,37,46",
                                                               "cut,47,56"]
    assert len(read_mot(out).clips) == 5


@pytest.mark.parametrize("case", ["junk model", "wrong shape", "missing video", "junk video", "webm"])
def test_bad_input_is_one_line_naming_the_file(footage, tmp_path, case):
    video, model = footage
    bad = tmp_path / "bad.onnx"
    if case == "junk model":
        bad.write_bytes(b"\x00garbage")
    elif case == "wrong shape":
        make_model(bad, np.zeros((1, 2, 3, 4)))
    else:
        model = bad = model
        video = tmp_path / {"missing video": "nope.mp4", "junk video": "junk.mp4", "webm": "clip.webm"}[case]
        if case != "missing video":
            video.write_bytes(b"not a video")
        bad = video
    res = invoke("track", video, "--detector", model if case not in ("junk model", "wrong shape") else bad,
                 "--out", tmp_path / "ds", "--no-progress")
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
    assert bad.name in res.output and "Traceback" not in res.output
    assert not (tmp_path / "ds" / "tracks").exists()


def test_a_frame_folder_is_tracked_and_copied(tmp_path):
    from stvh.data.mot_export import _write_frames

    folder = tmp_path / "cam1"
    _write_frames(folder, scene((20, 40, 160), 6, 0))  # 000001.jpg .. 000006.jpg, 72x128
    model = make_model(tmp_path / "m.onnx", ROWS, in_shape=(1, 3, 36, 64))
    out = tmp_path / "ds"
    res = invoke("track", folder, "--detector", model, "--out", out, "--no-progress", "--frames-per-clip", 3,
                 "--min-track-len", 2)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "frames" / "cam1").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 7)]
    ds = read_mot(out, frames_per_clip=3)
    assert [c.id for c in ds.clips] == ["cam1/000001", "cam1/000004"]
    np.testing.assert_allclose(ds.clips[0].boxes[0, :2], [[16, 40, 48, 72], [80, 60, 112, 72]], atol=1e-4)


def test_adding_to_a_dataset_without_clips_csv_keeps_its_videos(footage, tmp_path):
    import shutil

    video, model = footage
    out = tmp_path / "ds"
    shutil.copytree(video.parents[1], out)  # v0: tracks + video, 3 clips of 10 frames
    (out / "clips.csv").unlink()
    other = tmp_path / "other.mp4"
    shutil.copyfile(video, other)
    res = invoke("track", other, "--detector", model, "--out", out, "--no-progress", "--overwrite",
                 "--scene-threshold", 0, "--frames-per-clip", 15)
    assert res.exit_code == 0, res.output
    assert (out / "clips.csv").read_text() == ("video,start,end\nv0,1,15\nv0,16,30\nother,1,15\nother,16,30\n")
    assert sorted(c.id for c in read_mot(out, frames_per_clip=15).clips) == [
        "other/000001", "other/000016", "v0/000001", "v0/000016"]
