"""Metrics of the paper's evaluation (Sec. 6.1.3): classification accuracy and
mAP@k of Hamming ranking, train split as database and test split as queries.

Codes are ``{-1, +1}`` arrays ``(n, K)``. Ranking sorts the database by Hamming
distance, **ties broken by database order** (a stable sort). Two published
conventions of AP@k are provided:

* ``"relevant"`` (primary; DeepHash-pytorch ``CalcTopMap``): the sum of
  precision@i over the relevant positions i <= k, divided by the number of
  relevant items in the top k;
* ``"k"`` (the video-hashing lineage): the same sum divided by k.

Under both, a query with no relevant item in its top k scores 0 and counts in
the mean.
"""

from __future__ import annotations

import numpy as np

CONVENTIONS = ("relevant", "k")


def _as_signs(codes: np.ndarray, name: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{name}: expected (n, K) codes, got shape {codes.shape}")
    if not np.isin(codes, (-1, 1)).all():
        raise ValueError(f"{name}: codes must be -1/+1")
    return codes.astype(np.int32)


def hamming_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Hamming distances ``(nq, nd)`` between ±1 codes: ``(K - q·d) / 2``."""
    q = _as_signs(queries, "queries")
    d = _as_signs(database, "database")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"code lengths differ: queries {q.shape[1]} bits, database {d.shape[1]} bits")
    return (q.shape[1] - q @ d.T) // 2


def hamming_ranking(queries: np.ndarray, database: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Database indices sorted by distance per query (stable: ties by database order), and the distances."""
    dist = hamming_distances(queries, database)
    order = np.argsort(dist, axis=1, kind="stable")
    return order, np.take_along_axis(dist, order, axis=1)


def average_precision_at_k(relevant: np.ndarray, k: int, convention: str = "relevant") -> float:
    """AP@k of one ranked relevance vector (``relevant[i]`` for rank i+1)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")
    rel = np.asarray(relevant, dtype=bool)[:k]
    hits = rel.sum()
    if hits == 0:
        return 0.0
    precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    total = float(precision[rel].sum())
    return total / (hits if convention == "relevant" else k)


def relevance(query_labels: np.ndarray, database_labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``(nq, nd)`` bool: the ranked database item has the query's label."""
    q = np.asarray(query_labels)
    d = np.asarray(database_labels)
    return d[order] == q[:, None]


def map_at_k(queries, query_labels, database, database_labels, k: int, convention: str = "relevant") -> float:
    """mAP@k of Hamming ranking (relevant = same label)."""
    if k <= 0:
        raise ValueError("k must be positive")
    order, _ = hamming_ranking(queries, database)
    rel = relevance(query_labels, database_labels, order[:, :k])
    return float(np.mean([average_precision_at_k(r, k, convention) for r in rel])) if len(rel) else 0.0


def precision_at_k(queries, query_labels, database, database_labels, k: int) -> float:
    """Mean fraction of the top k that share the query's label."""
    order, _ = hamming_ranking(queries, database)
    rel = relevance(query_labels, database_labels, order[:, :k])
    return float(rel.sum(axis=1).mean() / k) if len(rel) else 0.0


def retrieval_metrics(queries, query_labels, database, database_labels, ks=(5, 10, 20, 50)) -> dict:
    """``{"map@k": .., "map@k/byk": .., "precision@k": ..}`` for every k, from one ranking."""
    order, _ = hamming_ranking(queries, database)
    out = {}
    for k in ks:
        rel = relevance(query_labels, database_labels, order[:, :k])
        out[f"map@{k}"] = float(np.mean([average_precision_at_k(r, k, "relevant") for r in rel]))
        out[f"map@{k}/byk"] = float(np.mean([average_precision_at_k(r, k, "k") for r in rel]))
        out[f"precision@{k}"] = float(rel.sum(axis=1).mean() / k)
    return out


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class i predicted as j (labels < 0 ignored)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    keep = y_true >= 0
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true[keep], y_pred[keep]), 1)
    return cm


def mca(y_true, y_pred) -> float:
    """Multi-class accuracy over labelled samples (the paper's "accuracy")."""
    y_true = np.asarray(y_true)
    keep = y_true >= 0
    return float((np.asarray(y_pred)[keep] == y_true[keep]).mean()) if keep.any() else 0.0


def mpca(y_true, y_pred, num_classes: int) -> float:
    """Mean per-class accuracy over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float((np.diag(cm)[present] / support[present]).mean()) if present.any() else 0.0


def action_accuracy(y_true: np.ndarray, y_pred: np.ndarray, mask: np.ndarray) -> float:
    """Person action accuracy over real (unmasked) persons with a known action."""
    y_true = np.asarray(y_true)
    keep = np.asarray(mask, bool) & (y_true >= 0)
    return float((np.asarray(y_pred)[keep] == y_true[keep]).mean()) if keep.any() else 0.0


def class_hamming_matrix(codes: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean Hamming distance between the codes of every pair of classes (paper Fig. 12).

    Diagonal entries average over distinct pairs of the same class; a class with
    no (or, on the diagonal, a single) sample gives NaN.
    """
    codes = _as_signs(codes, "codes")
    labels = np.asarray(labels)
    dist = hamming_distances(codes, codes).astype(np.float64)
    out = np.full((num_classes, num_classes), np.nan)
    for i in range(num_classes):
        a = labels == i
        for j in range(num_classes):
            b = labels == j
            block = dist[np.ix_(a, b)]
            if i == j:
                n = int(a.sum())
                if n > 1:
                    out[i, j] = block.sum() / (n * (n - 1))
            elif block.size:
                out[i, j] = block.mean()
    return out
