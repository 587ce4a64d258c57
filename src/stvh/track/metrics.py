"""Tracking quality against annotated tracks: MOTA (CLEAR MOT) and IDF1, with IoU >= 0.5 as a match.

Both take ``{id: {frame: box x1y1x2y2}}`` for the truth and the tracker. MOTA = 1 - (FN + FP + IDSW) / GT
boxes, where each frame keeps last frame's pairs that still overlap, then matches the rest by the
Hungarian algorithm on IoU, and an id switch is a truth id matched to another tracker id than at its
last match. IDF1 = 2 IDTP / (GT boxes + tracker boxes), IDTP the frames of matching boxes under the one
truth-to-tracker id mapping (Hungarian) that maximises them.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

Tracks = dict[int, dict[int, np.ndarray]]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(n, m)`` of boxes ``(n, 4)`` and ``(m, 4)`` x1y1x2y2."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _by_frame(tracks: Tracks) -> dict[int, dict[int, np.ndarray]]:
    out: dict[int, dict[int, np.ndarray]] = {}
    for tid, boxes in tracks.items():
        for f, b in boxes.items():
            out.setdefault(f, {})[tid] = np.asarray(b, np.float64)
    return out


def mota(truth: Tracks, pred: Tracks, thr: float = 0.5) -> dict:
    """CLEAR MOT counts and MOTA (see the module docs)."""
    gt_f, pr_f = _by_frame(truth), _by_frame(pred)
    last: dict[int, int] = {}  # truth id -> tracker id at its last match
    prev: dict[int, int] = {}  # pairs of the previous frame
    fn = fp = sw = n_gt = 0
    for f in sorted(set(gt_f) | set(pr_f)):
        g, p = gt_f.get(f, {}), pr_f.get(f, {})
        gids, pids = list(g), list(p)
        n_gt += len(gids)
        m = iou(np.array([g[i] for i in gids]), np.array([p[j] for j in pids])) if gids and pids else \
            np.zeros((len(gids), len(pids)))
        pairs = {}
        for gi, gid in enumerate(gids):  # keep last frame's pairs that still overlap
            pid = prev.get(gid)
            if pid in p and m[gi, pids.index(pid)] >= thr and pid not in pairs.values():
                pairs[gid] = pid
        rest_g = [i for i, gid in enumerate(gids) if gid not in pairs]
        rest_p = [j for j, pid in enumerate(pids) if pid not in pairs.values()]
        if rest_g and rest_p:
            sub = m[np.ix_(rest_g, rest_p)]
            rows, cols = linear_sum_assignment(-sub)
            for r, c in zip(rows, cols):
                if sub[r, c] >= thr:
                    pairs[gids[rest_g[r]]] = pids[rest_p[c]]
        for gid, pid in pairs.items():
            if gid in last and last[gid] != pid:
                sw += 1
            last[gid] = pid
        fn += len(gids) - len(pairs)
        fp += len(pids) - len(pairs)
        prev = pairs
    return {"mota": 1 - (fn + fp + sw) / n_gt if n_gt else float("nan"), "fn": fn, "fp": fp, "idsw": sw,
            "gt": n_gt}


def idf1(truth: Tracks, pred: Tracks, thr: float = 0.5) -> dict:
    """IDF1 with its IDTP, and the box counts (see the module docs)."""
    gids, pids = list(truth), list(pred)
    tp = np.zeros((len(gids), len(pids)))
    for i, g in enumerate(gids):
        for j, p in enumerate(pids):
            common = sorted(truth[g].keys() & pred[p].keys())
            if common:
                ious = iou(np.array([truth[g][f] for f in common]), np.array([pred[p][f] for f in common]))
                tp[i, j] = int((np.diag(ious) >= thr).sum())
    idtp = 0.0
    if tp.size:
        rows, cols = linear_sum_assignment(-tp)
        idtp = float(tp[rows, cols].sum())
    n_gt, n_pr = sum(len(v) for v in truth.values()), sum(len(v) for v in pred.values())
    return {"idf1": 2 * idtp / (n_gt + n_pr) if n_gt + n_pr else float("nan"), "idtp": int(idtp),
            "gt": n_gt, "pred": n_pr}


def detection_pr(truth_frames: dict[int, np.ndarray], found: dict[int, np.ndarray], thr: float = 0.5) -> dict:
    """Recall and precision of per-frame boxes ``{frame: (n, 4)}`` at IoU ``thr`` (one-to-one, Hungarian)."""
    tp = n_gt = n_found = 0
    for f, g in truth_frames.items():
        d = found.get(f, np.zeros((0, 4)))
        n_gt, n_found = n_gt + len(g), n_found + len(d)
        if len(g) and len(d):
            m = iou(g, d)
            r, c = linear_sum_assignment(-m)
            tp += int((m[r, c] >= thr).sum())
    return {"recall": tp / n_gt if n_gt else float("nan"), "precision": tp / n_found if n_found else float("nan"),
            "tp": tp, "gt": n_gt, "found": n_found}
