"""``stvh eval``: the paper's protocol on the codes and predictions of a run.

Database = train split, queries = test split (Sec. 6.3). Keys of the flat
``metrics.json`` (documented in docs/metrics.md):

* ``mca``, ``mpca`` — activity accuracy and mean per-class accuracy of the
  deepest head on the test split; ``mca/depth{t}`` for every head;
* ``action_acc`` — person action accuracy over real persons of the test split;
* ``map@{k}/{activity|visual}/K{bits}/depth{t}`` — mAP@k (relevant-count
  convention), plus the same key with ``/byk`` (divide-by-k convention) and
  ``precision@{k}/...``; ``.../derived`` for codes derived from the deepest
  one by the filter matrix (depths below the deepest).

Visual focus (Sec. 6.4): relevant = same visual group (match). When no test
group occurs in the train split (the official Volleyball split separates
matches), the visual evaluation mixes all clips and splits them by clip
instead: per group, a seeded 30 % of the clips become queries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.atomic import write_text_atomic
from ..data.splits import unit_hash
from ..index.codes import CodeSet
from ..models.filter import FilterMatrix, storage_bits
from ..train.encode import predictions_path
from .metrics import action_accuracy, class_hamming_matrix, confusion_matrix, mca, mpca, retrieval_metrics

KS = (5, 10, 20, 50)


def derived_codes(code_set: CodeSet) -> np.ndarray | None:
    """Codes of depths 1..Y-1 derived from the deepest by F (Eq. 16-17): ``(M, Y-1, K)``."""
    if code_set.filter is None or code_set.depth < 2:
        return None
    fm = FilterMatrix(code_set.bits)
    with torch.no_grad():
        fm.weight.copy_(torch.from_numpy(code_set.filter))
    deepest = torch.from_numpy(code_set.signs(code_set.depth).astype(np.float32))
    return torch.stack(fm.derive(deepest, code_set.depth), dim=1).numpy().astype(np.int8)


def visual_protocol(ids, groups, splits, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(database mask, query mask, description) for visual-focus retrieval."""
    groups, splits = np.asarray(groups), np.asarray(splits)
    train, test = splits != "test", splits == "test"
    if set(groups[test]) & set(groups[train]):
        return train, test, "train split as database, test split as queries"
    query = np.array([unit_hash(i, seed) < 0.3 for i in ids])
    return ~query, query, "all clips mixed, 30% of each group's clips as queries (split separates groups)"


def eval_folder(run: str | Path, data: str | Path | None, features: str | Path | None,
                out: str | Path | None) -> Path:
    """Where ``stvh eval`` writes ``codes.npz``, ``metrics.json`` and ``eval_details.json``.

    The run's own data: ``RUN`` (or ``--out``). Another dataset or feature cache: ``--out``, default
    ``RUN/eval-NAME`` (NAME: the folder name of ``--data``, else of ``--features``), so another
    dataset's codes and metrics never replace the run's own ``codes.npz`` and ``metrics.json``.
    """
    from ..train.checkpoint import read_run_info

    run = Path(run)
    info = read_run_info(run)
    own = features is None and (data is None or Path(data).resolve() == Path(info["data"]).resolve())
    if out is None:
        return run if own else run / f"eval-{Path(data if data is not None else features).resolve().name}"
    if not own and Path(out).resolve() == run.resolve():
        raise ValueError(f"--out {out} is the run folder: the codes and metrics of --data/--features would replace "
                         "the run's own; choose another --out")
    return Path(out)


def check_eval_splits(splits, where) -> None:
    """Refuse codes without a database (train/val split) or without queries (test split), naming ``where``."""
    splits = np.asarray(splits)
    test = int((splits == "test").sum())
    if test == 0 or test == len(splits):
        raise ValueError(f"{where}: evaluation needs clips in both the train and the test split (here: "
                         f"{len(splits) - test} train/val, {test} test); mark the split in DATA/splits.json")


def evaluate(codes_path: str | Path, out: str | Path | None = None, ks=KS) -> dict:
    """Compute the metrics of a CODES file (and its predictions); write ``metrics.json`` to ``out``."""
    cs = CodeSet.load(codes_path)
    pred = np.load(predictions_path(codes_path))
    if list(pred["ids"]) != list(cs.ids):
        raise ValueError(f"{predictions_path(codes_path)} does not belong to {codes_path} (clip ids differ)")
    check_eval_splits(cs.split, codes_path)
    test = cs.split == "test"
    train = ~test
    num_classes = len(cs.meta.get("activities", [])) or int(cs.activity.max()) + 1
    y = cs.activity
    depth, bits = cs.depth, cs.bits
    m: dict[str, float] = {}
    acty_pred = pred["activity_pred"]  # (M, depth)
    m["mca"] = mca(y[test], acty_pred[test, -1])
    m["mpca"] = mpca(y[test], acty_pred[test, -1], num_classes)
    for t in range(acty_pred.shape[1]):
        m[f"mca/depth{t + 1}"] = mca(y[test], acty_pred[test, t])
    if ((pred["action_true"][test] >= 0) & pred["mask"][test]).any():  # absent for data without action labels
        m["action_acc"] = action_accuracy(pred["action_true"][test], pred["action_pred"][test], pred["mask"][test])

    signs = cs.signs()  # (M, depth, K)
    derived = derived_codes(cs)
    vdb, vq, vdesc = visual_protocol(cs.ids, cs.group, cs.split, int(cs.meta.get("seed", 0)))
    labelled = y >= 0
    for t in range(depth):
        variants = [("", signs[:, t])]
        if derived is not None and t < depth - 1:
            variants.append(("/derived", derived[:, t]))
        for suffix, codes in variants:
            for focus, labels, db, q in (("activity", y, train & labelled, test & labelled),
                                         ("visual", cs.group, vdb, vq)):
                r = retrieval_metrics(codes[q], labels[q], codes[db], labels[db], ks)
                for k in ks:
                    base = f"K{bits}/depth{t + 1}{suffix}"
                    m[f"map@{k}/{focus}/{base}"] = r[f"map@{k}"]
                    m[f"map@{k}/{focus}/{base}/byk"] = r[f"map@{k}/byk"]
                    m[f"precision@{k}/{focus}/{base}"] = r[f"precision@{k}"]
    extras = {
        "activities": cs.meta.get("activities"),
        "confusion": [confusion_matrix(y[test], acty_pred[test, t], num_classes).tolist()
                      for t in range(acty_pred.shape[1])],
        "class_hamming": [np.nan_to_num(class_hamming_matrix(signs[test, t], y[test], num_classes),
                                        nan=-1).tolist() for t in range(depth)],
        "visual_protocol": vdesc,
        "bits": bits, "depth": depth, "queries": int(test.sum()), "database": int(train.sum()), "clips": len(cs),
    }
    if derived is not None:
        extras["derived_bit_agreement"] = [float((derived[:, t] == signs[:, t]).mean()) for t in range(depth - 1)]
    if out is not None:
        out = Path(out)
        write_text_atomic(out / "metrics.json", json.dumps(m, indent=2, sort_keys=True))
        write_text_atomic(out / "eval_details.json", json.dumps(extras))
    return {"metrics": m, "details": extras}


def format_headline(m: dict, details: dict) -> str:
    """A short table: accuracy and mAP@10 per depth, activity vs visual focus, each stored code beside
    the code derived from the deepest one by F (Eq. 16-17; "-" at the deepest depth, which is stored)."""
    bits, depth = details["bits"], details["depth"]
    action = f"{m['action_acc']:.4f}" if "action_acc" in m else "n/a (no action labels)"
    cols = ("activity mAP@10", "activity (F)", "visual mAP@10", "visual (F)")
    lines = [f"accuracy (MCA) {m['mca']:.4f}   MPCA {m['mpca']:.4f}   action accuracy {action}",
             f"{'depth':>5}" + "".join(f"  {c:>15}" for c in cols)]
    for t in range(1, depth + 1):
        base = f"K{bits}/depth{t}"
        cells = [m.get(f"map@10/{focus}/{base}{suffix}") for focus in ("activity", "visual")
                 for suffix in ("", "/derived")]
        lines.append(f"{t:>5}" + "".join(f"  {v:>15.4f}" if v is not None else f"  {'-':>15}" for v in cells))
    M = details.get("clips")
    if depth > 1 and M and any(f"map@10/visual/K{bits}/depth1/derived" in k for k in m):
        lines.append(f"storage (Eq. 18): every depth {storage_bits(M, bits, depth, 'all')} bits; deepest code + F "
                     f"{storage_bits(M, bits, depth, 'compact')} bits (M = {M}, K = {bits}, depths = {depth})")
    return "\n".join(lines)
