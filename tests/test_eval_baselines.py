"""Baselines and the label-noise ceiling of the quality benchmark, against hand-computed values."""

import json
import math

import numpy as np
import pytest

from stvh.data.formats import read_dataset
from stvh.data.synth import generate, match_activities
from stvh.eval.baselines import (PERSON_STATS, class_codes, fit_predict_logistic, focus_map, mean_pooled_roi,
                                 oracle_ceiling, pca_sign_codes, person_statistics, synth_true_activities,
                                 trajectory_feature_names, trajectory_features)
from stvh.eval.metrics import hamming_distances


def test_class_codes_are_hadamard_rows_at_half_distance():
    codes = class_codes(3, 4)
    assert codes.tolist() == [[1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]
    d = hamming_distances(class_codes(8, 64), class_codes(8, 64))
    assert (d[~np.eye(8, dtype=bool)] == 32).all() and (np.diag(d) == 0).all()
    with pytest.raises(ValueError, match="power of two"):
        class_codes(3, 12)
    with pytest.raises(ValueError, match="more than 8 bits"):
        class_codes(8, 8)


def test_mean_pooled_roi_ignores_padded_persons():
    roi = np.zeros((3, 2, 2, 1, 1), np.float16)  # (N, T, C, s, s)
    roi[0, :, 0] = 1.0
    roi[1, 0, 0], roi[1, 1, 0] = 3.0, 5.0
    roi[:2, :, 1] = 2.0
    roi[2] = 100.0  # padded slot
    out = mean_pooled_roi(roi, np.array([True, True, False]))
    assert out.tolist() == [(1 + 1 + 3 + 5) / 4, 2.0]
    assert mean_pooled_roi(roi, np.zeros(3, bool)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"\(N, T, C, s, s\)"):
        mean_pooled_roi(roi[0], np.ones(2, bool))


def test_pca_sign_codes_by_hand():
    database = np.array([[2.0, 1.0], [-2.0, -1.0], [4.0, 2.0], [-4.0, -2.0]])  # mean 0, direction (2, 1)/sqrt(5)
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert pca_sign_codes(database, x, 1).tolist() == [[1], [-1], [1]]
    # second direction: orthogonal, largest loading positive -> (-1, 2)/sqrt(5)
    assert pca_sign_codes(database, x, 2).tolist() == [[1, -1], [-1, 1], [1, 1]]
    assert pca_sign_codes(database, x, 64).shape == (3, 2)  # at most C bits
    assert pca_sign_codes(database + 10, x + 10, 1).tolist() == [[1], [-1], [1]]  # centred on the database
    with pytest.raises(ValueError, match="features"):
        pca_sign_codes(database, x[:, :1], 1)


def test_person_statistics_by_hand():
    # one person: steps right by 2 px, then jumps 4 px; 20 px tall, 10 px wide, image 100 px wide
    boxes = np.array([[[0, 0, 10, 20]], [[2, 0, 12, 20]], [[2, -4, 12, 16]]], np.float32)
    s = dict(zip(PERSON_STATS, person_statistics(boxes, 100.0)[0]))
    expected = {"speed_mean": 0.15, "speed_max": 0.2, "disp_x": 0.1, "disp_y": -0.2, "disp_max": math.sqrt(20) / 20,
                "height_max": 1.0, "height_min": 1.0, "width_max": 1.0, "width_min": 1.0, "top_lift": 0.2,
                "foot_lift": 0.2, "net_distance": abs(19 / 3 - 50) / 100}
    assert s == pytest.approx(expected)
    crouch = boxes.copy()
    crouch[2, 0] = [2, 10, 14, 20]  # half as tall, 1.2x as wide in the last frame
    s = dict(zip(PERSON_STATS, person_statistics(crouch, 100.0)[0]))
    assert s["height_min"] == pytest.approx(0.5) and s["width_max"] == pytest.approx(1.2)


def test_trajectory_features_pool_per_court_half():
    T = 3
    boxes = np.zeros((T, 3, 4), np.float32)
    boxes[:, 0] = [[10, 10, 20, 30], [12, 10, 22, 30], [14, 10, 24, 30]]  # left half, walking right
    boxes[:, 1] = [[70, 10, 80, 30], [70, 6, 80, 26], [70, 10, 80, 30]]   # right half, jumping
    boxes[:, 2] = [[40, 40, 50, 60]] * T                                   # padded slot
    mask = np.array([True, True, False])
    f = trajectory_features(boxes, mask, (100, 100))
    names = trajectory_feature_names()
    assert f.shape == (len(names),) == (2 * (1 + 3 * len(PERSON_STATS)),)
    v = dict(zip(names, f))
    left = person_statistics(boxes[:, :1], 100.0)[0]
    right = person_statistics(boxes[:, 1:2], 100.0)[0]
    assert v["left/persons"] == pytest.approx(1 / 3) and v["right/persons"] == pytest.approx(1 / 3)
    for i, stat in enumerate(PERSON_STATS):
        for pool in ("mean", "max", "min"):
            assert v[f"left/{pool}/{stat}"] == pytest.approx(left[i])
            assert v[f"right/{pool}/{stat}"] == pytest.approx(right[i])
    assert v["left/mean/disp_x"] == pytest.approx(0.2) and v["right/max/top_lift"] == pytest.approx(0.2)
    # both persons on the left: mean / max / min over the two; the right half is all zeros
    boxes[:, 1, [0, 2]] -= 50
    v = dict(zip(names, trajectory_features(boxes, mask, (100, 100))))
    assert v["left/persons"] == pytest.approx(2 / 3) and v["left/max/top_lift"] == pytest.approx(0.2)
    assert v["left/min/top_lift"] == 0.0 and v["left/mean/top_lift"] == pytest.approx(0.1)
    assert all(v[n] == 0.0 for n in names if n.startswith("right/"))


def test_logistic_regression_predicts_separable_classes():
    x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2], [2.0], [2.1], [2.2]])
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = fit_predict_logistic(x, y, np.array([[0.05], [1.05], [2.15]]), c=100.0)
    assert pred.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_predict_logistic(x, np.zeros(9, int), x)


def test_focus_map_by_hand():
    codes = np.array([[1, 1], [1, -1], [1, 1], [-1, -1]])
    labels = np.array([0, 1, 0, 1])
    db, q = np.array([True, True, False, False]), np.array([False, False, True, True])
    # query 2 (label 0, code ++): db ranked [0 (d=0), 1 (d=1)] -> relevant [T, F] -> AP 1
    # query 3 (label 1, code --): db ranked [1 (d=1), 0 (d=2)] -> relevant [T, F] -> AP 1
    assert focus_map(codes, labels, db, q, k=2) == 1.0
    assert focus_map(codes, np.array([0, 1, 1, 0]), db, q, k=2) == 0.5 * (1 / 2) + 0.5 * (1 / 2)


def test_oracle_ceiling_by_hand():
    true = np.array([0, 0, 1, 1, 0, 1])
    labels = np.array([0, 1, 1, 1, 0, 0])  # db item 1 and test item 5 flipped
    test = np.array([False, False, False, False, True, True])
    # query 4 (true 0, label 0): db items of true class 0 first, in db order: labels [0, 1] -> AP@2 = 1
    # query 5 (true 1, label 0): db items 2, 3 (labels 1, 1) -> AP@2 = 0
    r = oracle_ceiling(true, labels, test, bits=4, k=2)
    assert r == {"map@2": 0.5, "mca": 0.5}
    clean = oracle_ceiling(true, true, test, bits=4, k=2)
    assert clean == {"map@2": 1.0, "mca": 1.0}
    unlabeled = labels.copy()
    unlabeled[5] = -1  # left out as a query, as in stvh eval
    assert oracle_ceiling(true, unlabeled, test, bits=4, k=2) == {"map@2": 1.0, "mca": 1.0}


def _tiny(tmp_path, name, **knobs):
    out = tmp_path / name
    generate(out, matches=2, clips_per_match=8, frames=2, size=(64, 64), players_per_side=1, pan=2, jitter=0,
             seed=3, progress=False, **knobs)
    return out


def test_synth_true_activities_match_the_generator(tmp_path):
    clean = _tiny(tmp_path, "clean")
    ds = read_dataset(clean)
    ids = [c.id for c in ds.clips]
    true = synth_true_activities(clean, ids)
    assert true.tolist() == [c.activity for c in ds.clips]
    expect = {f"{m}/{1000 + 100 * i}": int(a) for m in range(2) for i, a in enumerate(match_activities(3, m, 8))}
    assert true.tolist() == [expect[i] for i in ids]
    noisy = _tiny(tmp_path, "noisy", label_noise=1.0)  # every label redrawn: about 7/8 differ
    ds = read_dataset(noisy)
    true = synth_true_activities(noisy, [c.id for c in ds.clips])
    assert true.tolist() == [expect[c.id] for c in ds.clips]
    assert sum(c.activity != t for c, t in zip(ds.clips, true)) >= 8
    with pytest.raises(ValueError, match="not a clip of this synthetic dataset"):
        synth_true_activities(clean, ["0/1050"])
    (tmp_path / "other").mkdir()
    assert synth_true_activities(tmp_path / "other", ids) is None
    meta = json.loads((clean / "dataset.json").read_text())
    (clean / "dataset.json").write_text(json.dumps({**meta, "version": -1}))
    assert synth_true_activities(clean, ids) is None
