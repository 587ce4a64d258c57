"""The readers' box conversions and frame fills against hand-worked values.

Boxes have x != y and w != h, images are wider than tall (H != W), and frames are placed on purpose at
equal distance from two tracked frames (ties go to the earlier frame, as docs/data-user.md and
volleyball.py's docstring say).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stvh.data.cad import _keep_largest, xywh_to_box
from stvh.data.geometry import clip_box_to_image, iou_matrix
from stvh.data.mot import read_mot
from stvh.data.volleyball import _tracked_boxes, parse_annotation_line


def test_xywh_to_box_and_clipping_use_width_for_x_and_height_for_y():
    assert xywh_to_box(10, 20, 30, 5, (100, 200)).tolist() == [10, 20, 40, 25]
    # image 50 high, 100 wide: x2 = 120 clips to the width, y2 = 70 to the height
    assert xywh_to_box(90, 30, 30, 40, (50, 100)).tolist() == [90, 30, 100, 50]
    assert xywh_to_box(-5, -8, 20, 30, (50, 100)).tolist() == [0, 0, 15, 22]
    assert xywh_to_box(1, 2, 0, 5, (50, 100)) == "non-positive size w=0 h=5"
    assert xywh_to_box(1, 2, 5, -1, (50, 100)) == "non-positive size w=5 h=-1"
    assert xywh_to_box(60, 101, 5, 5, (100, 60)) == "box (60, 101, 65, 106) entirely outside the 60x100 image"
    assert clip_box_to_image((95, 45, 130, 60), (50, 100)).tolist() == [95, 45, 100, 50]
    assert clip_box_to_image((40, 60, 45, 70), (50, 100)) is None          # below a 50-high image
    assert clip_box_to_image((40, 10, 45, 20), (50, 100)).dtype == np.float32
    assert clip_box_to_image((100, 10, 110, 20), (50, 100)) is None         # touches the right edge only
    assert clip_box_to_image((40, 50, 45, 60), (50, 100)) is None           # touches the bottom edge only
    assert clip_box_to_image((40, 49.5, 45, 60), (50, 100)).tolist() == [40, 49.5, 45, 50]


def test_iou_matrix_non_square_boxes():
    a = np.array([[10, 20, 50, 30], [0, 0, 10, 40]])                       # 40 x 10, 10 x 40
    b = np.array([[30, 22, 40, 62], [45, 25, 75, 35], [100, 100, 101, 101]])
    expected = [[80 / 720, 25 / 675, 0.0], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(iou_matrix(a, b), expected)
    assert iou_matrix(np.array([[5, 5, 5, 9]]), np.array([[5, 5, 5, 9]])).tolist() == [[0.0]]   # empty union


def _mot_dataset(root: Path, rows: list[str], frames: int, size=(40, 60)) -> Path:
    (root / "tracks").mkdir(parents=True)
    (root / "tracks" / "v.txt").write_text("\n".join(rows) + "\n")
    folder = root / "frames" / "v"
    folder.mkdir(parents=True)
    for f in range(1, frames + 1):
        Image.new("RGB", (size[1], size[0])).save(folder / f"{f}.png")
    return root


def test_mot_boxes_and_nearest_frame_ties_go_earlier(tmp_path):
    rows = [
        "1,1,2,3,10,20",                  # track 1 at frames 1 and 5 only: x=2, y=3, w=10, h=20
        "5,1,30,5,8,12,1",                # conf 1 (7 fields)
        "2,3,11,4,6,9,0.7,-1,-1,-1",      # track 3 at frames 2 and 4 only
        "4,3,40,14,5,7,0.9,-1,-1,-1",
        "3,3,1,1,5,5,0,-1,-1,-1",         # conf 0: ignored, frame 3 stays untracked for track 3
    ] + [f"{f},2,{f},{2 * f},4,6" for f in range(1, 6)]   # track 2 on every frame
    ds = read_mot(_mot_dataset(tmp_path / "d", rows, 5), frames_per_clip=5)
    assert len(ds) == 1
    clip = ds.clips[0]
    assert clip.frame_ids.tolist() == [1, 2, 3, 4, 5] and clip.image_size == (40, 60)
    real = clip.boxes[:, clip.mask]                                        # (T, 3, 4), persons by track id
    first, last = [2, 3, 12, 23], [30, 5, 38, 17]
    assert real[:, 0].tolist() == [first, first, first, last, last]       # frame 3 is 2 from 1 and from 5
    early, late = [11, 4, 17, 13], [40, 14, 45, 21]
    assert real[:, 2].tolist() == [early, early, early, late, late]       # frame 3 is 1 from 2 and from 4
    assert real[:, 1].tolist() == [[f, 2 * f, f + 4, 2 * f + 6] for f in range(1, 6)]


def test_mot_box_clipped_to_the_wide_image(tmp_path):
    rows = ["1,1,50,30,20,25", "2,1,-4,-6,10,12"]                          # 40 high, 60 wide
    ds = read_mot(_mot_dataset(tmp_path / "d", rows, 2), frames_per_clip=2)
    real = ds.clips[0].boxes[:, ds.clips[0].mask]
    assert real[:, 0].tolist() == [[50, 30, 60, 40], [0, 0, 6, 6]]


def test_volleyball_annotation_line_boxes():
    line = "10.jpg r_set 10 20 30 60 standing 700 300 50 90 spiking"
    key, activity, boxes, actions = parse_annotation_line(line, Path("ann.txt"), 4, (360, 720))
    assert key == 10 and activity == 0 and actions.tolist() == [7, 6]
    assert boxes.tolist() == [[10, 20, 40, 80], [700, 300, 720, 360]]     # x clipped at W=720, y at H=360


def test_volleyball_tracked_boxes_nearest_usable_frame_ties_earlier():
    key_boxes = np.array([[100, 50, 140, 130], [300, 60, 330, 150]], np.float32)   # person 1 has no track
    K, P, Q = [101, 52, 141, 131], [90, 40, 130, 121], [120, 55, 161, 140]
    tracks = {7: {10: (np.array(K, np.float32), False), 8: (np.array(P, np.float32), False),
                  9: (np.array([0, 0, 5, 5], np.float32), True),          # lost: not usable
                  12: (np.array(Q, np.float32), False)},
              8: {10: (np.array([500, 10, 520, 40], np.float32), False)}}
    out = _tracked_boxes(key_boxes, np.array([7, 8, 9, 10, 11, 12, 13]), 10, tracks, (360, 720))
    # frame 9 is 1 from 8 and from 10 -> 8; frame 11 is 1 from 10 and 12 -> 10
    assert out[:, 0].tolist() == [P, P, P, K, K, Q, Q]
    assert out[:, 1].tolist() == [key_boxes[1].tolist()] * 7               # unmatched: the key box


def test_cad_keep_largest_ties_by_line_in_file_order():
    boxes = [np.array(b, np.float32) for b in ([0, 0, 4, 5], [0, 0, 10, 2], [0, 0, 2, 10], [0, 0, 6, 6],
                                               [0, 0, 5, 4])]
    persons = [(b, i) for i, b in enumerate(boxes)]                        # areas 20, 20, 20, 36, 20
    kept = _keep_largest(persons, 3)
    assert [i for _, i in kept] == [0, 1, 3]                               # 36, then the two earliest 20s
    assert _keep_largest(persons, 5) is persons


def test_mot_windows_keep_one_frame_tracks_and_drop_the_partial_tail(tmp_path):
    rows = [f"{f},1,{f},3,10,20" for f in range(1, 10)]            # track 1 on frames 1..9
    rows.append("4,2,40,5,6,9")                                      # track 2 on frame 4 only
    ds = read_mot(_mot_dataset(tmp_path / "d", rows, 9), frames_per_clip=5)
    assert [c.frame_ids.tolist() for c in ds.clips] == [[1, 2, 3, 4, 5]]   # 6..10 would need frame 10
    clip = ds.clips[0]
    assert clip.mask.sum() == 2
    assert clip.boxes[:, 1].tolist() == [[40, 5, 46, 14]] * 5        # the one tracked frame fills all five


def test_iou_matrix_one_axis_overlap_and_unsigned_input():
    a = np.array([[10, 20, 50, 30]])
    b = np.array([[20, 40, 30, 60], [40, 0, 60, 10], [12, 29, 14, 29.5]])
    # x overlap without y overlap (and the reverse) is no overlap; a 0.5-high overlap counts 2 x 0.5
    np.testing.assert_allclose(iou_matrix(a, b), [[0.0, 0.0, 1.0 / 400]])
    # byte-sized coordinates: no wrap-around in x2 - x1 of disjoint boxes
    assert iou_matrix(np.array([[0, 0, 2, 2]], np.uint8), np.array([[5, 5, 7, 7]], np.uint8)).tolist() == [[0.0]]
    assert iou_matrix(np.array([[5, 0, 9, 2]], np.uint8), np.array([[0, 1, 7, 3]], np.uint8)).tolist() == \
        [[pytest.approx(2 / (8 + 14 - 2))]]


def test_iou_matrix_sub_pixel_and_empty_boxes_without_warnings():
    a = np.array([[0, 0, 0.5, 0.5], [3, 3, 3, 4]])                        # union below 1; an empty box
    b = np.array([[0.25, 0, 0.75, 0.5], [3, 3, 3, 4]])
    with np.errstate(all="raise"):                                        # no 0 / 0 anywhere
        m = iou_matrix(a, b)
    np.testing.assert_allclose(m, [[0.125 / 0.375, 0.0], [0.0, 0.0]])
    # byte-sized boxes whose areas exceed 255
    big = iou_matrix(np.array([[0, 0, 20, 20]], np.uint8), np.array([[10, 0, 30, 20]], np.uint8))
    assert big.tolist() == [[pytest.approx(200 / 600)]]


def _track(boxes: dict[int, list[float]]) -> dict:
    return {f: (np.array(b, np.float32), False) for f, b in boxes.items()}


def test_volleyball_tracked_boxes_greedy_matching():
    key = np.array([[0, 0, 10, 10], [100, 100, 120, 140]], np.float32)
    frames = np.array([9, 10, 11])
    tracks = {
        3: _track({9: [101, 99, 121, 139], 10: [100, 100, 120, 140], 11: [102, 101, 122, 141]}),   # person 1
        5: _track({9: [1, 1, 11, 11], 10: [0, 0, 10, 10], 11: [2, 2, 12, 12]}),                    # person 0, IoU 1
        7: _track({9: [50, 50, 60, 60], 10: [0, 0, 10, 6], 11: [60, 60, 70, 70]}),                  # person 0, IoU 0.6
    }
    out = _tracked_boxes(key, frames, 10, tracks, (360, 720))
    assert out[:, 0].tolist() == [[1, 1, 11, 11], [0, 0, 10, 10], [2, 2, 12, 12]]       # the best track only
    assert out[:, 1].tolist() == [[101, 99, 121, 139], [100, 100, 120, 140], [102, 101, 122, 141]]
    # one person, matched at IoU exactly 0.5
    half = {4: _track({9: [5, 5, 15, 10], 10: [0, 0, 10, 5]})}
    one = _tracked_boxes(key[:1], np.array([9, 10]), 10, half, (360, 720))
    assert one[:, 0].tolist() == [[5, 5, 15, 10], [0, 0, 10, 5]]
    # no track has the key frame: every person keeps its key box
    none = _tracked_boxes(key, frames, 10, {4: _track({9: [0, 0, 10, 10]})}, (360, 720))
    assert none.tolist() == [key.tolist()] * 3


def test_volleyball_annotation_line_shapes():
    from stvh.data.errors import MalformedLine

    key, activity, boxes, actions = parse_annotation_line("0.jpg l_pass", Path("a.txt"), 1, (360, 720))
    assert key == 0 and activity == 6 and boxes.shape == (0, 4) and actions.shape == (0,)   # no persons
    assert boxes.dtype == np.float32 and actions.dtype == np.int64
    for line in ("10.jpg", "10.png r_set", "10.png r_set 1 2 3 4 standing", "10.jpg r_set 1 2 3",
                 "1000000001.jpg r_set", "-1.jpg r_set"):
        with pytest.raises(MalformedLine, match=r"a\.txt:7"):
            parse_annotation_line(line, Path("a.txt"), 7, (360, 720))


def test_volleyball_tracked_boxes_matching_continues_past_used_and_lost_tracks():
    key = np.array([[0, 0, 10, 10], [100, 100, 120, 140], [0, 0, 10, 8]], np.float32)
    frames = np.array([9, 10])
    p1 = _track({9: [101, 99, 121, 121], 10: [100, 100, 120, 122]})         # person 1 at IoU 0.55
    tracks = {5: _track({9: [1, 1, 11, 11], 10: [0, 0, 10, 10]}),           # person 0 (1.0), person 2 (0.8)
              7: _track({9: [2, 0, 12, 6], 10: [0, 0, 10, 6]}),             # person 0 (0.6), person 2 (0.75)
              3: p1}
    out = _tracked_boxes(key, frames, 10, tracks, (360, 720))
    assert out[:, 0].tolist() == [[1, 1, 11, 11], [0, 0, 10, 10]]         # track 5 once, person 0 once
    assert out[:, 2].tolist() == [[2, 0, 12, 6], [0, 0, 10, 6]]             # track 5 is taken: track 7
    assert out[:, 1].tolist() == [[101, 99, 121, 121], [100, 100, 120, 122]]
    # the best match is a track lost on every frame: that person keeps its key box, the others still match
    lost = {6: {f: (np.array([0, 0, 10, 10], np.float32), True) for f in (9, 10)}, 3: p1}
    out = _tracked_boxes(key[:2], frames, 10, lost, (360, 720))
    assert out[:, 0].tolist() == [[0, 0, 10, 10]] * 2
    assert out[:, 1].tolist() == [[101, 99, 121, 121], [100, 100, 120, 122]]


def test_volleyball_annotation_line_small_and_empty_boxes():
    from stvh.data.errors import BadBox

    _, _, boxes, _ = parse_annotation_line("3.jpg r_set 5 6 1 1 standing 7 8 0.5 0.25 moving", Path("a.txt"), 2,
                                           (360, 720))
    assert boxes.tolist() == [[5, 6, 6, 7], [7, 8, 7.5, 8.25]]
    for w, h in ((0, 3), (3, 0), (-1, 3)):
        with pytest.raises(BadBox, match=f"a.txt:2.*person 0: non-positive size w={w} h={h}"):
            parse_annotation_line(f"3.jpg r_set 5 6 {w} {h} standing", Path("a.txt"), 2, (360, 720))


def test_cad_boxes_away_from_the_origin():
    assert xywh_to_box(1, 2, 1, 1, (50, 100)).tolist() == [1, 2, 2, 3]
    assert xywh_to_box(1, 2, 0.5, 0.5, (50, 100)).tolist() == [1, 2, 1.5, 2.5]
    assert xywh_to_box(1, 2, 5, 0, (50, 100)) == "non-positive size w=5 h=0"
    # areas: 4 x 10 = 40 (x1 != y1, far from the origin), 6 x 6 = 36, 5 x 7 = 35
    boxes = [np.array(b, np.float32) for b in ([50, 20, 54, 30], [10, 2, 16, 8], [80, 60, 85, 67])]
    kept = _keep_largest([(b, i) for i, b in enumerate(boxes)], 2)
    assert [i for _, i in kept] == [0, 1]
