"""Tracking post-processing on synthetic boxes: ByteTrack ids through a gap, first frames kept, linear
interpolation, short tracks dropped, the region mask; scene cuts and the windows that never cross them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stvh.data.errors import MalformedLine
from stvh.track.scenes import CutDetector, windows
from stvh.track.tracker import RegionMask, Tracker, TrackerParams, drop_short, interpolate


def walker(f: int) -> np.ndarray:
    """Person 1: 20x40 px, moving 2 px right a frame."""
    return np.array([10 + 2 * f, 10, 30 + 2 * f, 50], np.float32)


STILL = np.array([100, 10, 120, 50], np.float32)  # person 2, standing


def run_tracker(max_gap: int, min_len: int) -> dict:
    tracker = Tracker(TrackerParams())
    for f in range(1, 13):
        boxes = [STILL]
        if f not in (5, 6, 7):  # person 1 undetected for 3 frames
            boxes.append(walker(f))
        if 2 <= f <= 4:  # a false box for 3 frames far away
            boxes.append(np.array([200, 100, 210, 120], np.float32))
        tracker.update(f, np.stack(boxes), np.full(len(boxes), 0.9))
    return drop_short(interpolate(tracker.tracks(), max_gap), min_len)


def test_tracker_keeps_ids_through_a_gap_and_interpolates():
    tracks = run_tracker(max_gap=3, min_len=5)
    assert len(tracks) == 2  # the 3-frame false track is dropped
    by_x = sorted(tracks.values(), key=lambda t: t[1][0])
    walk, still = by_x
    assert sorted(walk) == list(range(1, 13))  # frame 1 kept (before ByteTrack's id), 5-7 filled
    for f in range(1, 13):
        np.testing.assert_allclose(walk[f], walker(f), atol=1e-4)  # linear motion: the fill is exact
        np.testing.assert_array_equal(still[f], STILL)
    assert set(tracks) == {1, 2}


def test_gap_longer_than_max_gap_stays_empty():
    tracks = run_tracker(max_gap=2, min_len=5)
    walk = min(tracks.values(), key=lambda t: t[1][0])
    assert sorted(walk) == [1, 2, 3, 4, 8, 9, 10, 11, 12]
    assert len(run_tracker(max_gap=2, min_len=3)) == 3  # the false track is long enough now


def test_interpolate_and_drop_short_by_hand():
    a = {1: np.array([0, 0, 10, 10], np.float32), 4: np.array([30, 0, 40, 30], np.float32),
         10: np.array([0, 0, 1, 1], np.float32)}
    out = interpolate({7: a}, max_gap=2)[7]
    assert sorted(out) == [1, 2, 3, 4, 10]  # the 5-frame gap 5..9 is too long
    np.testing.assert_allclose(out[2], [10, 0, 20, 16.666666], atol=1e-4)
    np.testing.assert_allclose(out[3], [20, 0, 30, 23.333334], atol=1e-4)
    tracks = {5: {3: a[1], 4: a[1]}, 9: {1: a[1], 2: a[1]}, 2: {3: a[1]}}
    kept = drop_short(tracks, 2)
    assert list(kept) == [1, 2] and list(kept[1]) == [1, 2] and list(kept[2]) == [3, 4]  # by first frame


def test_region_rectangle_polygon_file_and_text(tmp_path):
    boxes = np.array([[40, 0, 60, 100],    # foot (50, 100): on the edge, kept
                      [40, 0, 60, 101],    # foot (50, 101): below, dropped
                      [-50, 0, 10, 50],    # foot (-20, 50): left, dropped
                      [0, 0, 200, 20]], np.float32)  # foot (100, 20): inside, kept (the box itself overflows)
    np.testing.assert_array_equal(RegionMask.parse("0,0,100,100").keep(boxes), [True, False, False, True])
    tri = tmp_path / "court.json"
    tri.write_text(json.dumps({"polygon": [[0, 0], [100, 0], [0, 100]]}))
    # the triangle x + y <= 100: feet (50, 100) and (100, 20) are outside, (30, 60) inside
    np.testing.assert_array_equal(RegionMask.parse(str(tri)).keep(boxes), [False, False, False, False])
    np.testing.assert_array_equal(RegionMask.parse(str(tri)).keep(np.array([[20, 0, 40, 60]])), [True])
    txt = tmp_path / "court.txt"
    txt.write_text("# court corners\n0 0\n100,0\n100 100\n0 100\n")
    np.testing.assert_array_equal(RegionMask.parse(str(txt)).keep(boxes), [True, False, False, True])
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0\n1 oops\n")
    with pytest.raises(MalformedLine, match="bad.txt:2"):
        RegionMask.parse(str(bad))
    with pytest.raises(ValueError, match="--region"):
        RegionMask.parse("1,2,3")


def scene(colour, n: int, seed: int) -> list[np.ndarray]:
    """n frames of one scene: a flat colour with a small moving square and a little noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = np.full((72, 128, 3), colour, np.uint8)
        f[20:36, 10 + 2 * i:26 + 2 * i] = 255
        out.append(np.clip(f + rng.integers(0, 4, f.shape), 0, 255).astype(np.uint8))
    return out


def test_hard_cut_found_and_windows_do_not_cross_it():
    det = CutDetector(threshold=27.0, min_scene_len=5)
    for f in scene((20, 40, 160), 26, 0) + scene((200, 60, 30), 34, 1):
        det.add(f)
    assert det.cuts() == [27]  # frame 27 (1-based) starts the second scene
    assert windows(1, 60, [27], 10) == [(1, 10), (11, 20), (27, 36), (37, 46), (47, 56)]
    assert windows(3, 60, [], 10) == [(3, 12), (13, 22), (23, 32), (33, 42), (43, 52)]
    off = CutDetector(threshold=0)
    for f in scene((20, 40, 160), 3, 0) + scene((200, 60, 30), 3, 1):
        off.add(f)
    assert off.cuts() == []


def test_boxes_before_bytetrack_gives_an_id_are_kept():
    tracker = Tracker(TrackerParams(min_hits=3))  # the id comes on the 3rd hit; frames 1 and 2 are kept too
    for f in range(1, 7):
        tracker.update(f, walker(f)[None], np.array([0.9]))
    (track,) = tracker.tracks().values()
    assert sorted(track) == [1, 2, 3, 4, 5, 6]
    for f in range(1, 7):
        np.testing.assert_allclose(track[f], walker(f), atol=1e-4)
    with pytest.raises(ValueError, match="frames must increase"):
        tracker.update(6, walker(6)[None], np.array([0.9]))


def test_cuts_are_frame_numbers_not_positions():
    det = CutDetector(threshold=27.0, min_scene_len=5)
    frames = scene((20, 40, 160), 8, 0) + scene((200, 60, 30), 8, 1)
    for number, f in enumerate(frames, start=38005):  # a frame folder named by broadcast frame numbers
        det.add(f, number)
    assert det.cuts() == [38013]
