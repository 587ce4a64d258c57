"""Tests of the synthetic dataset generator (tiny settings: fast)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stvh.data.labels import VOLLEYBALL_ACTIONS, VOLLEYBALL_ACTIVITIES
from stvh.data.synth import (
    JERSEY_PALETTE, SynthConfig, _parts, annotated_boxes, camera_map, court_canvas, generate, initial_layout,
    match_activities, match_distinctness, match_style, match_test_mask, nearest_centroid_accuracy, render_clip,
    scene_boxes, simulate_clip,
)

TINY = dict(matches=2, clips_per_match=8, frames=4, size=(90, 160), players_per_side=6, progress=False)
H, W = TINY["size"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _text_files(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(root).items() if not k.endswith(".jpg")}


def _parse_annotations(path: Path) -> list[tuple[int, str, list[tuple[int, int, int, int, str]]]]:
    out = []
    for line in path.read_text().splitlines():
        tok = line.split()
        assert tok[0].endswith(".jpg") and (len(tok) - 2) % 5 == 0, line
        persons = [(int(tok[p]), int(tok[p + 1]), int(tok[p + 2]), int(tok[p + 3]), tok[p + 4])
                   for p in range(2, len(tok), 5)]
        out.append((int(tok[0][:-4]), tok[1], persons))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = generate(root, seed=3, **TINY)
    assert summary["written"] == 16 and summary["skipped"] == 0 and summary["clips"] == 16
    return root


def test_layout_and_files_parse(tiny):
    meta = json.loads((tiny / "dataset.json").read_text())
    assert meta["format"] == "volleyball" and meta["generator"] == "stvh.data.synth"
    assert meta["complete"] is True and meta["seed"] == 3 and meta["version"] == 2
    assert meta["image_size"] == [H, W] and meta["window"] == [-2, 1]
    assert meta["params"]["frames"] == 4 and meta["params"]["size"] == [H, W]
    assert meta["activities"] == list(VOLLEYBALL_ACTIVITIES) and meta["actions"] == list(VOLLEYBALL_ACTIONS)
    assert set(meta["matches"]) == {"0", "1"}
    assert all(len(s["court"]) == 3 and len(s["jerseys"]) == 2 for s in meta["matches"].values())
    for m in ("0", "1"):
        ann = tiny / "videos" / m / "annotations.txt"
        assert ann.read_text().endswith("\n")
        clips = _parse_annotations(ann)
        assert [c[0] for c in clips] == [1000 + 100 * i for i in range(8)]
        for key, activity, persons in clips:
            assert activity in VOLLEYBALL_ACTIVITIES
            assert 1 <= len(persons) <= 12
            for x, y, w, h, action in persons:
                assert action in VOLLEYBALL_ACTIONS
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
            frames = sorted(int(p.stem) for p in (tiny / "videos" / m / str(key)).glob("*.jpg"))
            assert frames == [key - 2, key - 1, key, key + 1]
            rows = [l.split() for l in (tiny / "tracking" / m / str(key) / f"{key}.txt").read_text().splitlines()]
            assert len(rows) == 4 * len(persons)
            for r in rows:
                assert len(r) == 10 and r[6] in "01" and r[7] in "01" and r[8] == "0" and r[9] in VOLLEYBALL_ACTIONS
                pid, x1, y1, x2, y2, frame = (int(v) for v in r[:6])
                assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H and key - 2 <= frame <= key + 1
                if frame == key:  # the tracked key-frame box is the annotated box of person pid
                    x, y, w, h, action = persons[pid]
                    assert (x1, y1, x2, y2, r[9]) == (x, y, x + w, y + h, action)
    assert not list(tiny.rglob(".tmp*")) and not list(tiny.rglob("*.tmp"))


def test_read_with_volleyball_reader(tiny):
    from stvh.data import volleyball as vb
    ds = vb.read_volleyball(tiny)
    assert len(ds) == 16
    assert set(ds.splits()) == {"train", "test"}
    for c in ds:
        c.validate()
        assert c.boxes.shape == (4, 12, 4) and c.image_size == (H, W) and c.tracked
        assert c.frames is not None and c.frames.exists() and c.key_index == 2
        assert c.split in ("train", "test") and c.group == c.video
        real = c.boxes[:, c.mask]
        assert np.all(real[..., 2] > real[..., 0]) and np.all(real[..., 3] > real[..., 1])
    assert {c.group for c in ds} == {"0", "1"}


def test_splits_cover_every_match(tiny):
    splits = json.loads((tiny / "splits.json").read_text())
    train, test = set(splits["train"]), set(splits["test"])
    assert not train & test and len(train | test) == 16
    for m in ("0", "1"):
        assert any(c.startswith(m + "/") for c in train) and any(c.startswith(m + "/") for c in test)
    mask = match_test_mask(0, 0, match_activities(0, 0, 60), 0.3)
    assert mask.sum() == 18  # 30 % of 60


def test_activities_balanced_and_every_activity_occurs(tiny):
    for m in ("0", "1"):
        labels = [c[1] for c in _parse_annotations(tiny / "videos" / m / "annotations.txt")]
        assert sorted(labels) == sorted(VOLLEYBALL_ACTIVITIES)  # 8 clips per match: each activity once
    counts = np.bincount(match_activities(5, 1, 60), minlength=8)
    assert counts.max() - counts.min() <= 1


def test_deterministic_for_a_seed(tmp_path, tiny):
    again = tmp_path / "again"
    generate(again, seed=3, **TINY)
    assert _files(again) == _files(tiny)  # text files and JPEGs byte-identical
    other = tmp_path / "other"
    generate(other, seed=4, **TINY)
    a, b = _text_files(other), _text_files(tiny)
    assert a.keys() == b.keys()
    assert a["videos/0/annotations.txt"] != b["videos/0/annotations.txt"]
    assert a["dataset.json"] != b["dataset.json"]


def test_resume_writes_only_missing_clips(tmp_path, tiny):
    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    shutil.rmtree(root / "videos" / "1" / "1300")
    (root / "videos" / "0" / ".tmp-1100").mkdir()          # leftover of a killed run
    (root / "videos" / "0" / ".tmp-1100" / "1099.jpg").write_bytes(b"partial")
    (root / "tracking" / "0" / "1000" / ".1000.txt.abc.tmp").write_text("partial")
    (root / "dataset.json").write_text((root / "dataset.json").read_text().replace(
        '"complete": true', '"complete": false'))
    summary = generate(root, seed=3, **TINY)
    assert summary["written"] == 1 and summary["skipped"] == 15
    assert _files(root) == _files(tiny)


def test_params_mismatch_on_resume(tmp_path, tiny):
    root = tmp_path / "data"
    shutil.copytree(tiny, root)
    with pytest.raises(ValueError, match="jitter.*choose another folder"):
        generate(root, seed=3, **{**TINY, "jitter": 2.0})
    with pytest.raises(ValueError, match="seed"):
        generate(root, seed=9, **TINY)
    summary = generate(root, seed=9, overwrite=True, **TINY)
    assert summary["written"] == 16
    assert json.loads((root / "dataset.json").read_text())["seed"] == 9
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="choose another"):
        generate(foreign, **TINY)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("bad, message", [
    (dict(frames=1), "frames"), (dict(size=(32, 160)), "size"), (dict(players_per_side=0), "players_per_side"),
    (dict(players_per_side=9), "players_per_side"), (dict(occlusion=1.5), "occlusion"),
    (dict(missing=-0.1), "missing"), (dict(label_noise=2), "label_noise"), (dict(test_fraction=0.0), "test_fraction"),
    (dict(clips_per_match=1), "clips_per_match"), (dict(matches=0), "matches"), (dict(jitter=-1), "jitter"),
    (dict(pan=100.0), "pan"),
])
def test_validation(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "x", **{**TINY, **bad})
    assert not (tmp_path / "x").exists()


def test_boxes_inside_image_and_positive_under_stress():
    for size, pps, pan in (((64, 64), 8, 8.0), ((90, 160), 6, 11.0), ((180, 320), 1, 4.0)):
        cfg = SynthConfig(frames=7, size=size, players_per_side=pps, pan=pan, jitter=3.0,
                          occlusion=0.5, missing=0.5)
        cfg.validate()
        for seed in range(40):
            scene = simulate_clip(seed % 8, cfg, np.random.default_rng(seed))
            for boxes in (scene_boxes(scene, size), annotated_boxes(scene, size)):
                assert boxes.shape == (7, 2 * pps, 4)
                assert np.all(boxes[..., 0] >= 0) and np.all(boxes[..., 1] >= 0)
                assert np.all(boxes[..., 2] <= size[1]) and np.all(boxes[..., 3] <= size[0])
                assert np.all(boxes[..., 2] > boxes[..., 0]) and np.all(boxes[..., 3] > boxes[..., 1])
            # the unclipped drawing is already inside: nobody leaves the frame, even partly
            p = _parts(scene, size)
            assert p["x1"].min() >= 0 and p["y_top"].min() >= 0
            assert p["x2"].max() <= size[1] and p["yb"].max() <= size[0]


def test_same_side_activities_share_frame_zero():
    cfg = SynthConfig(frames=10, occlusion=0.0, missing=0.0)
    style = match_style(0, 0)
    for side in ("l", "r"):
        ids = [VOLLEYBALL_ACTIVITIES.index(f"{side}_{k}") for k in ("pass", "set", "spike", "winpoint")]
        for seed in range(5):
            scenes = [simulate_clip(a, cfg, np.random.default_rng(seed)) for a in ids]
            frame0 = [render_clip(s, style, cfg.size)[0] for s in scenes]
            for s, f in zip(scenes[1:], frame0[1:]):
                for name in ("x", "y", "z", "hs", "ws", "arm", "ball"):
                    np.testing.assert_array_equal(getattr(s, name)[0], getattr(scenes[0], name)[0])
                np.testing.assert_array_equal(f, frame0[0])  # identical first images
            # ... but they differ over time
            assert all(not np.array_equal(s.x, scenes[0].x) or not np.array_equal(s.z, scenes[0].z)
                       for s in scenes[1:])


def test_initial_layout():
    rng = np.random.default_rng(0)
    for side in ("l", "r"):
        pts = initial_layout(side, 6, (180, 320), rng)
        assert pts.shape == (6, 2)
        assert np.all(pts[:, 0] < 160) if side == "l" else np.all(pts[:, 0] > 160)
        assert np.all((pts[:, 1] > 0.5 * 180) & (pts[:, 1] < 0.94 * 180))
        # front row (first 3) is nearer the net than the back row
        dist = np.abs(pts[:, 0] - 160)
        assert dist[:3].max() < dist[3:].min()
    with pytest.raises(ValueError):
        initial_layout("x", 6, (180, 320), rng)


def test_key_player_wears_the_team_jersey_whatever_the_activity():
    cfg = SynthConfig(frames=6, occlusion=0.0, missing=0.0, pan=0.0)
    style = match_style(1, 2)
    for activity in range(8):
        scene = simulate_clip(activity, cfg, np.random.default_rng(activity))
        k = scene.key
        assert (scene.team == scene.team[k]).sum() == cfg.players_per_side  # one jersey per team
        scene.present[:] = False
        scene.present[k] = True  # render the key player alone
        frames = render_clip(scene, style, cfg.size)
        light = scene.gain * np.asarray(style.light, np.float32)  # the clip's gain x the match's light
        jersey = np.clip(np.asarray(style.jerseys[scene.team[k]], float) * light, 0, 255).astype(np.uint8)
        p = _parts(scene, cfg.size)
        checked = 0
        for t in range(cfg.frames):
            ty = (p["y_torso"][t, k] + p["y_shorts"][t, k]) // 2  # torso centre
            tx = (p["x1"][t, k] + p["x2"][t, k]) // 2
            if np.hypot(*(scene.ball[t] - (tx, ty))) > 12:  # the ball is not in front of it
                np.testing.assert_array_equal(frames[t, ty, tx], jersey)
                checked += 1
        assert checked >= 3


def test_tight_box_is_the_rendered_extent():
    cfg = SynthConfig(frames=6, occlusion=0.0, missing=0.0, pan=4.0)
    style = match_style(0, 1)
    canvas = court_canvas(style, cfg.size, 4)
    for activity in range(8):
        scene = simulate_clip(activity, cfg, np.random.default_rng(100 + activity))
        i = scene.key
        scene.present[:] = False
        scene.present[i] = True
        frames = render_clip(scene, style, cfg.size, canvas)
        scene.present[i] = False
        empty = render_clip(scene, style, cfg.size, canvas)  # background + ball only
        boxes = scene_boxes(scene, cfg.size)
        for t in range(cfg.frames):
            ys, xs = np.nonzero(np.any(frames[t] != empty[t], axis=-1))
            if len(ys):  # the ball may hide some pixels; drawn pixels never leave the box
                x1, y1, x2, y2 = boxes[t, i]
                assert x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2


def test_label_noise_missing_and_occlusion():
    clean = SynthConfig(label_noise=0.0)
    noisy = SynthConfig(label_noise=1.0, missing=1.0, occlusion=1.0)
    flips = 0
    for seed in range(40):
        a = seed % 8
        assert simulate_clip(a, clean, np.random.default_rng(seed)).label == a
        s = simulate_clip(a, noisy, np.random.default_rng(seed))
        flips += s.label != a
        assert s.activity == a
        assert s.present[s.key] and np.all(s.present == (s.grouping.astype(bool)
                                                         | (s.actions == VOLLEYBALL_ACTIONS.index("falling"))
                                                         | (np.arange(12) == s.key)))
        assert np.all(s.occluded.any(axis=0)[s.present])
        assert sorted(s.order.tolist()) == np.flatnonzero(s.present).tolist()
    assert flips > 25  # 7/8 of random replacements differ


def test_match_styles_are_distinct_pairs():
    def pair(style):  # palette indices of the two jerseys (a jersey is a palette colour +- 10)
        return frozenset(int(np.abs(JERSEY_PALETTE - np.asarray(j)).sum(1).argmin()) for j in style.jerseys)

    pairs = [pair(match_style(0, m)) for m in range(120)]
    assert all(len(p) == 2 for p in pairs) and len(set(pairs)) == 120
    assert match_style(0, 3) == match_style(0, 3) and match_style(0, 3) != match_style(1, 3)


def test_match_styles_vary_light_camera_and_court_within_limits():
    styles = [match_style(0, m) for m in range(200)]
    zooms = np.array([s.camera[0] for s in styles])
    assert 0.85 <= zooms.min() and zooms.max() <= 1.0 and zooms.std() > 0.03
    assert all(abs(s.camera[1]) <= 0.02 and abs(s.camera[2]) <= 0.03 for s in styles)
    warm = np.array([s.light[0] / s.light[2] for s in styles])  # colour temperature: red over blue gain
    assert warm.min() < 0.9 and warm.max() > 1.1
    assert len({s.court for s in styles}) == 200 and len({s.lines for s in styles}) == 4
    assert {s.attack_lines for s in styles} == {True, False} and len({s.stand_tiers for s in styles}) == 6


def test_camera_zooms_about_the_floor_centre_and_boxes_stay_tight():
    fx, fy, z = camera_map((0.5, 0.1, -0.1), (100, 200))
    assert (fx(100.0), fx(0.0), fy(72.0), fy(0.0)) == (120.0, 70.0, 62.0, 26.0) and z == 0.5
    cfg = SynthConfig(frames=4, occlusion=0.0, missing=0.0, pan=0.0)
    style = match_style(0, 5)
    scene = simulate_clip(6, cfg, np.random.default_rng(1))     # l_winpoint
    plain = scene_boxes(scene, cfg.size)
    scene.camera = (0.86, 0.0, 0.0)
    zoomed = scene_boxes(scene, cfg.size)
    heights = (zoomed[..., 3] - zoomed[..., 1]) / (plain[..., 3] - plain[..., 1])
    assert abs(np.median(heights) - 0.86) < 0.03     # persons shrink with the zoom
    k = scene.key
    scene.present[:] = False
    scene.present[k] = True
    frames = render_clip(scene, style, cfg.size)
    scene.present[k] = False
    empty = render_clip(scene, style, cfg.size)
    for t in range(cfg.frames):
        ys, xs = np.nonzero(np.any(frames[t] != empty[t], axis=-1))
        x1, y1, x2, y2 = zoomed[t, k]
        assert len(ys) and x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2


def test_nearest_centroid_accuracy_hand_example():
    x = np.array([[0.0], [2.0], [10.0], [12.0], [1.0], [7.0], [11.5]])
    groups = np.array([0, 0, 1, 1, 0, 0, 1])
    train = np.array([True, True, True, True, False, False, False])
    # centroids 1 and 11: query 1 -> 0 (right), 7 -> 1 (wrong: nearer 11 than 1), 11.5 -> 1 (right)
    assert nearest_centroid_accuracy(x, groups, train) == pytest.approx(2 / 3)


def test_match_distinctness_on_a_few_small_matches():
    d = match_distinctness(0, 3, clips_per_match=4, size=(64, 112))
    assert set(d) == {"mean_colour", "grid4"} and d["grid4"] == 1.0 and 0.0 <= d["mean_colour"] <= 1.0
