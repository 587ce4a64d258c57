"""stvh.track.settings: ``stvh track``'s settings as ``OUT/track.yaml``, read back by ``--track-config`` of ingest
and serve --watch (flags win over the file; errors name the file, line and key)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("onnx")

from stvh.cli import app  # noqa: E402
from stvh.data.errors import FormatError  # noqa: E402
from stvh.track.detector import HogDetector, OnnxDetector  # noqa: E402
from stvh.track.settings import TrackSettings, load_track_settings, tracking_from  # noqa: E402

from test_track_cli import footage  # noqa: E402, F401 - fixture: a synthetic video and a constant two-box model
from test_track_detector import make_model  # noqa: E402


def test_saved_settings_read_back_equal_with_the_region_as_points(tmp_path):
    s = TrackSettings(detector="hog", region="10,20,110,70", imgsz=(320, 480), mean=(0.1, 0.2, 0.3), max_gap=4,
                      lost_frames=7, channels="bgr")
    s.save(tmp_path / "track.yaml")
    back = load_track_settings(tmp_path / "track.yaml")
    assert back.region == [(10, 20), (110, 20), (110, 70), (10, 70)]  # the rectangle's corners, by hand
    assert back.model_dump(exclude={"region"}) == s.model_dump(exclude={"region"})
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary left


def test_relative_paths_are_the_files_neighbours(tmp_path):
    (tmp_path / "cfg").mkdir()
    model = make_model(tmp_path / "cfg" / "det.onnx", np.zeros((1, 3, 6), np.float32))
    (tmp_path / "cfg" / "court.txt").write_text("0,0\n100,0\n100,50\n")
    (tmp_path / "cfg" / "track.yaml").write_text("detector: det.onnx\nregion: court.txt\nscore: 0.6\n")
    s = load_track_settings(tmp_path / "cfg" / "track.yaml")
    assert s.detector == str(model) and s.region == str(tmp_path / "cfg" / "court.txt") and s.score == 0.6
    det, opts = s.build()
    assert isinstance(det, OnnxDetector) and det.score == 0.6
    np.testing.assert_array_equal(opts.region.points, [[0, 0], [100, 0], [100, 50]])


@pytest.mark.parametrize("text, words", [
    ("detector: hog\nmax_gap: 3\nscroe: 0.3\n", "track.yaml:3: format error: key 'scroe': Extra inputs"),
    ("detector: hog\niou: high\n", "track.yaml:2: format error: key 'iou':"),
    ("detector: hog\nmin_hits: 0\n", "track.yaml:2: format error: key 'min_hits': Input should be greater"),
    ("detector: hog\nimgsz: [0, 640]\n", "key 'imgsz': Value error, imgsz must be two positive integers"),
    ("detector: hog\nchannels: rbg\n", "key 'channels':"),
    ("score: 0.3\n", "key 'detector': Field required"),
    ("- detector\n", "expected a mapping"),
    ("detector: [hog\n", "track.yaml:2: format error: not YAML"),
])
def test_bad_files_name_the_file_line_and_key(tmp_path, text, words):
    (tmp_path / "track.yaml").write_text(text)
    with pytest.raises(FormatError) as e:
        load_track_settings(tmp_path / "track.yaml")
    assert words in str(e.value)
    with pytest.raises(FormatError, match="track settings file not found"):
        load_track_settings(tmp_path / "missing.yaml")


def test_flags_win_over_the_file(tmp_path):
    (tmp_path / "t.yaml").write_text("detector: hog\nscore: 0.7\nmax_gap: 3\nregion: 0,0,50,50\n")
    det, opts = tracking_from(None, None, tmp_path / "t.yaml")
    assert isinstance(det, HogDetector) and det.score == 0.7 and opts.max_gap == 3
    np.testing.assert_array_equal(opts.region.points, [[0, 0], [50, 0], [50, 50], [0, 50]])
    model = make_model(tmp_path / "m.onnx", np.zeros((1, 3, 6), np.float32))
    det, opts = tracking_from(str(model), "0,0,20,10", tmp_path / "t.yaml")
    assert isinstance(det, OnnxDetector) and det.score == 0.7 and opts.max_gap == 3
    np.testing.assert_array_equal(opts.region.points, [[0, 0], [20, 0], [20, 10], [0, 10]])
    det, opts = tracking_from("hog", None, None)  # --detector alone: stvh track's defaults
    assert isinstance(det, HogDetector) and opts.max_gap == 10 and opts.region is None
    assert tracking_from(None, None, None) == (None, None)
    with pytest.raises(ValueError, match="--region needs --detector or --track-config"):
        tracking_from(None, "0,0,1,1", None)


def test_stvh_track_writes_the_settings_it_ran_with(footage, tmp_path):  # noqa: F811
    runner = CliRunner()
    video, model = footage
    res = runner.invoke(app, ["track", str(video), "--detector", str(model), "--out",
                              str(tmp_path / "ds"), "--no-progress", "--max-gap", "2", "--score", "0.5", "--region",
                              "0,0,80,90", "--channels", "bgr", "--scene-threshold", "0"])
    assert res.exit_code == 0, res.output
    s = load_track_settings(tmp_path / "ds" / "track.yaml")
    assert (s.detector, s.max_gap, s.score, s.channels, s.scene_threshold) == (str(model), 2, 0.5, "bgr", 0)
    assert s.region == [(0, 0), (80, 0), (80, 90), (0, 90)]
    bad = runner.invoke(app, ["track", str(video), "--detector", str(model),
                              "--out", str(tmp_path / "ds2"), "--no-progress", "--min-hits", "0"])
    assert bad.exit_code == 2 and "--min-hits" in bad.output and not (tmp_path / "ds2").exists()


def test_ingest_tracks_footage_as_the_file_says(serve_world, tmp_path):
    """`stvh ingest --track-config`: the file's region keeps one of the fixed detector's two people."""
    import shutil

    from test_track_cli import ROWS

    from stvh.data.mot import read_mot
    from stvh.data.mot_export import export_mot
    from stvh.index.base import load_index

    src = tmp_path / "exp"
    export_mot(serve_world["data"], src, media="video", labels=False, splits=False)
    drop = tmp_path / "drop"
    (drop / "videos").mkdir(parents=True)
    shutil.copy(src / "videos" / "v0.mp4", drop / "videos" / "v0.mp4")  # no tracks
    (tmp_path / "cfg").mkdir()
    make_model(tmp_path / "cfg" / "const.onnx", ROWS)
    (tmp_path / "cfg" / "track.yaml").write_text("detector: const.onnx\nregion: 0,0,80,1000\nscene_threshold: 0\n")
    res = CliRunner().invoke(app, ["ingest", str(drop), "--run", str(serve_world["run"]), "--index",
                                   str(tmp_path / "i.npz"), "--settle", "0", "--no-progress", "--track-config",
                                   str(tmp_path / "cfg" / "track.yaml")])
    assert res.exit_code == 0, res.output
    assert len(load_index(tmp_path / "i.npz")) > 0
    ds = read_mot(drop, frames_per_clip=10)
    assert ds.clips and all(int(c.mask[0].sum()) == 1 for c in ds.clips)  # the region dropped the other person
