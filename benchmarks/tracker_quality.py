"""Tracker quality on the REAL Volleyball sample: annotated boxes as detections, then OpenCV's HOG.

    python benchmarks/tracker_quality.py                       # seeds 0 1 2, HOG on every annotated frame
    python benchmarks/tracker_quality.py --no-hog --out /tmp/tq.json
    python benchmarks/tracker_quality.py --set lost_frames=30 --set min_hits=2 --max-gap 10

Data: ``<repo>/../shared/data/volleyball-sample`` (``--data``); the four clips with frames and per-frame
boxes (7/38025, 7/51725, 10/18360, 10/20525: 20 annotated frames each, 12 players, boxes flagged
``lost`` left out). Skips (exit 0, one line) when the sample is absent.

1. Annotated boxes as detections: each box dropped with probability ``--drop`` (0.2), each coordinate
   moved by Gaussian noise of ``--jitter`` px (5), score 1; seeded (``--seeds``). Tracked by
   ``stvh.track.Tracker`` (ByteTrack) with ``--set`` parameters, then scored against the annotations
   without and with gap interpolation (``--max-gap``) and short-track removal (``--min-track-len``):
   MOTA, IDF1 (``stvh.track.metrics``, IoU 0.5) and the number of tracks per clip (goal 12 +- 1).
2. HOG (``--detector hog``'s settings) on the same frames: recall and precision at IoU 0.5, seconds a
   frame (one process; the machine's load is reported beside it), and HOG + the tracker with the settings
   ``stvh track --detector hog`` uses (SVM margins as scores): MOTA, IDF1, tracks; all boxes, and only
   those whose foot point is on the court (``court``: an oracle ``--region``, the hull of the annotated
   feet 30 px wider).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from stvh.data.atomic import write_text_atomic  # noqa: E402
from stvh.data.errors import Problems  # noqa: E402
from stvh.data.volleyball import read_tracks  # noqa: E402
from stvh.track.metrics import detection_pr, idf1, mota  # noqa: E402
from stvh.track.tracker import Tracker, TrackerParams, drop_short, interpolate  # noqa: E402

CLIPS = ("7/38025", "7/51725", "10/18360", "10/20525")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "volleyball-sample"


def load_truth(data: Path, clip: str) -> dict[int, dict[int, np.ndarray]]:
    """``{player: {frame: box}}`` of a clip's tracking file, frames renumbered 1.. (lost boxes left out)."""
    match, key = clip.split("/")
    raw = read_tracks(data / "tracking" / match / key / f"{key}.txt", Problems())
    first = min(f for t in raw.values() for f in t)
    return {pid: {f - first + 1: box for f, (box, lost) in t.items() if not lost} for pid, t in raw.items()}


def frame_file(data: Path, clip: str, truth_frame: int, first: int) -> Path:
    match, key = clip.split("/")
    return data / "videos" / match / key / f"{first + truth_frame - 1}.jpg"


def noisy_detections(truth, drop: float, jitter: float, rng) -> dict[int, np.ndarray]:
    """``{frame: (n, 4)}``: the annotated boxes, some dropped, all jittered (clipped to 1280x720)."""
    frames: dict[int, list] = {}
    for pid in sorted(truth):
        for f, box in sorted(truth[pid].items()):
            if rng.random() < drop:
                continue
            b = np.asarray(box, np.float64) + rng.normal(0, jitter, 4)
            b[[0, 2]] = b[[0, 2]].clip(0, 1280)
            b[[1, 3]] = b[[1, 3]].clip(0, 720)
            if b[2] - b[0] >= 1 and b[3] - b[1] >= 1:
                frames.setdefault(f, []).append(b)
    return {f: np.array(v, np.float32) for f, v in frames.items()}


def track(dets: dict[int, np.ndarray], n_frames: int, params: TrackerParams, scores=None):
    tracker = Tracker(params)
    for f in range(1, n_frames + 1):
        boxes = dets.get(f, np.zeros((0, 4), np.float32))
        s = scores.get(f) if scores else np.ones(len(boxes), np.float32)
        tracker.update(f, boxes, s)
    return tracker.tracks()


def score(truth, pred) -> dict:
    m, i = mota(truth, pred), idf1(truth, pred)
    return {"mota": round(m["mota"], 4), "idf1": round(i["idf1"], 4), "tracks": len(pred), "idsw": m["idsw"],
            "fn": m["fn"], "fp": m["fp"], "gt_boxes": m["gt"]}


def summary(rows: list[dict]) -> dict:
    out = {}
    for k in ("mota", "idf1", "tracks"):
        v = np.array([r[k] for r in rows], np.float64)
        out[k] = {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--drop", type=float, default=0.2)
    p.add_argument("--jitter", type=float, default=5.0)
    p.add_argument("--max-gap", type=int, default=10)
    p.add_argument("--min-track-len", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help=f"a TrackerParams field ({', '.join(f.name for f in fields(TrackerParams))})")
    p.add_argument("--no-hog", action="store_true", help="skip the HOG part (the slow one)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tracker_quality.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [c for c in CLIPS if not (args.data / "tracking" / c / f"{c.split('/')[1]}.txt").is_file()]
    if missing:
        print(f"skipped: the Volleyball sample's tracking files are not at {args.data} ({', '.join(missing)})")
        return 0
    params = TrackerParams()
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(params, name))
        params = replace(params, **{name: kind(value)})
    truths = {c: load_truth(args.data, c) for c in CLIPS}
    result = {"params": asdict(params), "drop": args.drop, "jitter": args.jitter, "max_gap": args.max_gap,
              "min_track_len": args.min_track_len, "seeds": args.seeds,
              "players": {c: len(t) for c, t in truths.items()},
              "gt_boxes": sum(len(b) for t in truths.values() for b in t.values())}
    raw_rows, post_rows = [], []
    for seed in args.seeds:
        for k, c in enumerate(CLIPS):
            truth = truths[c]
            n = max(f for t in truth.values() for f in t)
            dets = noisy_detections(truth, args.drop, args.jitter, np.random.default_rng([seed, k]))
            raw = track(dets, n, params)
            post = drop_short(interpolate(raw, args.max_gap), args.min_track_len)
            raw_rows.append({"seed": seed, "clip": c, **score(truth, raw)})
            post_rows.append({"seed": seed, "clip": c, **score(truth, post)})
            print(f"seed {seed} {c:9s} tracker alone: MOTA {raw_rows[-1]['mota']:.3f} IDF1 {raw_rows[-1]['idf1']:.3f} "
                  f"tracks {raw_rows[-1]['tracks']:2d} | + interpolation: MOTA {post_rows[-1]['mota']:.3f} "
                  f"IDF1 {post_rows[-1]['idf1']:.3f} tracks {post_rows[-1]['tracks']:2d}", flush=True)
    result["annotated"] = {"tracker": summary(raw_rows), "interpolated": summary(post_rows),
                           "per_clip": {"tracker": raw_rows, "interpolated": post_rows}}
    s = result["annotated"]["interpolated"]
    result["goals_met"] = bool(s["mota"]["min"] >= 0.85 and s["idf1"]["min"] >= 0.90
                               and s["tracks"]["min"] >= 11 and s["tracks"]["max"] <= 13)
    if not args.no_hog:
        result["hog"] = run_hog(args, truths, params)
    result["load_average"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    hog = {k: ({kk: vv for kk, vv in v.items() if kk != "per_clip"} if isinstance(v, dict) else v)
           for k, v in result.get("hog", {}).items()}
    print(json.dumps({k: result[k] for k in ("annotated", "goals_met")} | {"hog": hog}, indent=1)[:4000])
    return 0


def court_mask(truth, margin: float = 30.0):
    """An oracle court region: the convex hull of the clip's annotated foot points, ``margin`` px wider
    (what a user would draw around the court; it leaves out crowd, bench and most referees)."""
    import cv2

    from stvh.track.tracker import RegionMask

    feet = np.array([((b[0] + b[2]) / 2, b[3]) for t in truth.values() for b in t.values()], np.float32)
    pts = np.concatenate([feet + (dx, dy) for dx in (-margin, margin) for dy in (-margin, margin)])
    return RegionMask(cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2))


def run_hog(args, truths, params: TrackerParams) -> dict:
    from PIL import Image

    from stvh.track.detector import HogDetector

    hog = HogDetector()
    seconds, n = 0.0, 0
    rows = {"all": [], "court": []}
    all_truth, all_found = {}, {"all": {}, "court": {}}
    for c in CLIPS:
        truth = truths[c]
        match, key = c.split("/")
        raw = read_tracks(args.data / "tracking" / match / key / f"{key}.txt", Problems())
        first = min(f for t in raw.values() for f in t)
        frames = sorted({f for t in truth.values() for f in t})
        mask = court_mask(truth)
        found = {"all": {}, "court": {}}
        scores = {"all": {}, "court": {}}
        for f in frames:
            img = np.asarray(Image.open(frame_file(args.data, c, f, first)).convert("RGB"))
            t0 = time.perf_counter()
            boxes, sc = hog(img)
            seconds += time.perf_counter() - t0
            n += 1
            keep = mask.keep(boxes) if len(boxes) else np.zeros(0, bool)
            found["all"][f], scores["all"][f] = boxes, sc
            found["court"][f], scores["court"][f] = boxes[keep], sc[keep]
            all_truth[(c, f)] = np.array([truth[p][f] for p in truth if f in truth[p]], np.float32)
            for k in found:
                all_found[k][(c, f)] = found[k][f]
        for k in found:  # tracked as stvh track --detector hog does (SVM margins as scores)
            tracked = track(found[k], max(frames), params, scores[k])
            post = drop_short(interpolate(tracked, args.max_gap), args.min_track_len)
            rows[k].append({"clip": c, **score(truth, post)})
            print(f"hog ({k:5s}) {c:9s} MOTA {rows[k][-1]['mota']:.3f} IDF1 {rows[k][-1]['idf1']:.3f} "
                  f"tracks {rows[k][-1]['tracks']}", flush=True)
    out = {"frames": n, "s_per_frame": round(seconds / n, 3), "frame_size": "1280x720"}
    for k in found:
        pr = detection_pr(all_truth, all_found[k])
        out[k] = {"recall": round(pr["recall"], 3), "precision": round(pr["precision"], 3),
                  "tracked": summary(rows[k]), "per_clip": rows[k]}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
