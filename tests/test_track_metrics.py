"""MOTA and IDF1 (stvh.track.metrics) on a hand-counted example, the figures of benchmarks/tracker_quality.py."""

from __future__ import annotations

import numpy as np

from stvh.track.metrics import detection_pr, idf1, iou, mota


def box(x: float) -> np.ndarray:
    return np.array([x, 0, x + 10, 10], np.float32)


# Truth: A at x=0 on frames 1-4, B at x=50 on frames 1-4 (8 boxes).
TRUTH = {1: {f: box(0) for f in range(1, 5)}, 2: {f: box(50) for f in range(1, 5)}}
# Tracker: id 7 follows A on 1-2, then id 8 takes A over on 3-4 (one switch); id 9 follows B on 1-3, misses
# frame 4 (one miss); id 10 is a false box on frame 2 far away (one false positive); 8 also has a box 3 px
# off A on frame 2 (IoU 7/13 = 0.54 >= 0.5, but A is taken by 7 there: one more false positive).
PRED = {7: {1: box(0), 2: box(0)}, 8: {2: box(3), 3: box(0), 4: box(0)}, 9: {f: box(50) for f in (1, 2, 3)},
        10: {2: box(200)}}


def test_iou_by_hand():
    np.testing.assert_allclose(iou(box(0)[None], np.stack([box(0), box(3), box(5), box(20)])),
                               [[1, 7 / 13, 5 / 15, 0]])


def test_mota_by_hand():
    m = mota(TRUTH, PRED)
    assert (m["fn"], m["fp"], m["idsw"], m["gt"]) == (1, 2, 1, 8)
    assert m["mota"] == 1 - 4 / 8


def test_idf1_by_hand():
    # mapping A->7 (2 frames) or A->8 (3 frames: 2 at IoU 1, frame 2 at 0.54): best A->8 (3), B->9 (3): IDTP 6
    r = idf1(TRUTH, PRED)
    assert (r["idtp"], r["gt"], r["pred"]) == (6, 8, 9)
    assert r["idf1"] == 2 * 6 / (8 + 9)


def test_detection_recall_precision():
    truth = {1: np.stack([box(0), box(50)]), 2: np.stack([box(0)])}
    found = {1: np.stack([box(1), box(300)]), 2: np.stack([box(6)])}  # IoU 9/11 hit, a miss; 4/16 no hit
    r = detection_pr(truth, found)
    assert (r["tp"], r["gt"], r["found"]) == (1, 3, 3)
    assert r["recall"] == 1 / 3 and r["precision"] == 1 / 3


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tracker_quality.py"
    spec = importlib.util.spec_from_file_location("tracker_quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_skips_without_the_sample(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _bench().main(["--data", str(tmp_path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("skipped: ") and not out.exists()


def test_tracker_meets_the_goals_on_the_sample(volleyball_sample, tmp_path):
    import json

    out = tmp_path / "r.json"
    assert _bench().main(["--data", str(volleyball_sample), "--seeds", "0", "--no-hog", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["goals_met"] and r["gt_boxes"] == 925
    assert r["annotated"]["interpolated"]["mota"]["min"] > r["annotated"]["tracker"]["mota"]["max"]
