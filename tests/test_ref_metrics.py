"""Retrieval and classification metrics against references written in the test (Sec. 6.1.3).

The ranking is rebuilt here from the definition (Hamming distance = number of differing entries, ties by
database position) and never taken from :func:`hamming_ranking`, so a wrong tie order or a wrong distance
cannot hide behind a reference that shares it. Databases hold far more than 16 rows: numpy sorts
at most 16 elements by insertion sort, which keeps ties in order even without ``kind="stable"``.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score

from stvh.eval.metrics import (action_accuracy, average_precision_at_k, class_hamming_matrix, confusion_matrix,
                               hamming_distances, hamming_ranking, map_at_k, mca, mpca, precision_at_k, relevance,
                               retrieval_metrics)


def ref_ranking(q: np.ndarray, db: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """Per query: database positions sorted by (differing entries, position); and the distances (nq, nd)."""
    dist = (q[:, None, :] != db[None, :, :]).sum(-1)  # (nq, nd)
    return [sorted(range(len(db)), key=lambda j: (d[j], j)) for d in dist], dist


def ref_ap(rel: list[bool], k: int, by_k: bool) -> float:
    """AP@k from the definition: precision@i summed over relevant ranks i <= k, / hits (or / k)."""
    hits, total = 0, 0.0
    for i, r in enumerate(rel[:k], start=1):
        if r:
            hits += 1
            total += hits / i
    if hits == 0:
        return 0.0
    return total / (k if by_k else hits)


@pytest.fixture(scope="module")
def tie_heavy():
    """300 database codes of 6 bits (only 64 distinct codes, distances 0..6): ties everywhere."""
    rng = np.random.default_rng(20)
    db = rng.choice([-1, 1], size=(300, 6))
    q = rng.choice([-1, 1], size=(25, 6))
    return q, rng.integers(0, 3, 25), db, rng.integers(0, 3, 300)


def test_ranking_ties_by_database_order_on_a_large_database(tie_heavy):
    q, _, db, _ = tie_heavy
    order, dist = hamming_ranking(q, db)
    ref_order, ref_dist = ref_ranking(q, db)
    assert order.tolist() == ref_order
    assert dist.tolist() == [[int(ref_dist[i, j]) for j in ref_order[i]] for i in range(len(q))]
    np.testing.assert_array_equal(hamming_distances(q, db), ref_dist)


def test_map_and_precision_against_the_definition(tie_heavy):
    q, ql, db, dl = tie_heavy
    ref_order, _ = ref_ranking(q, db)
    for k in (1, 5, 7, 20):
        rels = [[bool(dl[j] == ql[i]) for j in ref_order[i][:k]] for i in range(len(q))]
        assert map_at_k(q, ql, db, dl, k) == pytest.approx(np.mean([ref_ap(r, k, False) for r in rels]), abs=1e-12)
        assert map_at_k(q, ql, db, dl, k, "k") == pytest.approx(np.mean([ref_ap(r, k, True) for r in rels]),
                                                                  abs=1e-12)
        assert precision_at_k(q, ql, db, dl, k) == pytest.approx(np.mean([sum(r) / k for r in rels]), abs=1e-12)
        m = retrieval_metrics(q, ql, db, dl, ks=(k,))
        assert m[f"map@{k}"] == pytest.approx(map_at_k(q, ql, db, dl, k), abs=1e-12)
        assert m[f"map@{k}/byk"] == pytest.approx(map_at_k(q, ql, db, dl, k, "k"), abs=1e-12)
        assert m[f"precision@{k}"] == pytest.approx(precision_at_k(q, ql, db, dl, k), abs=1e-12)


def test_map_matches_sklearn_on_an_independent_ranking():
    """The sklearn test's data (seed 0) with the ranking built here: mAP@5 is 0.4574 only with ties in order."""
    rng = np.random.default_rng(0)
    db = rng.choice([-1, 1], size=(200, 16))
    db_labels = rng.integers(0, 4, 200)
    q = rng.choice([-1, 1], size=(30, 16))
    q_labels = rng.integers(0, 4, 30)
    ref_order, _ = ref_ranking(q, db)
    for k in (5, 20):
        expected = []
        for i in range(len(q)):
            rel = db_labels[ref_order[i][:k]] == q_labels[i]
            expected.append(average_precision_score(rel, -np.arange(k)) if rel.any() else 0.0)
        assert map_at_k(q, q_labels, db, db_labels, k) == pytest.approx(np.mean(expected), abs=1e-12)
    assert map_at_k(q, q_labels, db, db_labels, 5) == pytest.approx(0.4574, abs=1e-4)


def test_tie_order_decides_the_score_by_hand():
    # rows 0 and 1 are both at distance 1 from the query; row 0 (first) is irrelevant, row 1 relevant
    q = np.array([[1, 1, 1, 1]])
    db = np.array([[1, 1, 1, -1], [-1, 1, 1, 1], [-1, -1, -1, -1]])
    labels = np.array([7, 3, 3])
    assert map_at_k(q, [3], db, labels, 1) == 0.0                       # the tie goes to row 0
    assert map_at_k(q, [3], db, labels, 2) == pytest.approx(0.5)          # [- +]: (1/2) / 1
    assert map_at_k(q, [3], db, labels, 2, "k") == pytest.approx(0.25)    # (1/2) / 2
    assert precision_at_k(q, [3], db, labels, 3) == pytest.approx(2 / 3)
    assert relevance([3], labels, np.array([[2, 0, 1]])).tolist() == [[True, False, True]]


def test_ap_positions_not_only_counts():
    # same number of hits, different ranks: [+ + - -] vs [- - + +] at k = 4
    assert average_precision_at_k([1, 1, 0, 0], 4) == pytest.approx(1.0)
    assert average_precision_at_k([0, 0, 1, 1], 4) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert average_precision_at_k([0, 0, 1, 1], 4, "k") == pytest.approx((1 / 3 + 2 / 4) / 4)
    # k beyond the list: divide by k, not by the list length
    assert average_precision_at_k([1, 0], 5, "k") == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="k must be positive"):
        map_at_k(np.ones((1, 2)), [0], np.ones((1, 2)), [0], 0)


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 2, 2, -1])
    p = np.array([0, 1, 2, 1, 0, 2, 0])
    # 3 of the 6 labelled predictions are right; per class 1/3, 1/1, 1/2
    assert mca(y, p) == pytest.approx(3 / 6)
    assert mpca(y, p, 4) == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)          # class 3 absent: not averaged
    assert mpca(y[:6], p[:6], 3) == pytest.approx(balanced_accuracy_score(y[:6], p[:6]))
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[1, 1, 1], [0, 1, 0], [1, 0, 1]]                  # rows: true, columns: predicted
    assert mca(np.array([-1, -1]), np.array([0, 0])) == 0.0 and mpca(np.array([-1]), np.array([0]), 2) == 0.0
    y2 = np.array([[1, 2, 0], [0, -1, 2]])
    p2 = np.array([[1, 0, 0], [1, 2, 2]])
    mask = np.array([[True, True, False], [True, True, True]])
    assert action_accuracy(y2, p2, mask) == pytest.approx(2 / 4)            # (1 ok, 2 wrong) (0 wrong, 2 ok)
    assert action_accuracy(y2, p2, np.zeros_like(mask)) == 0.0


def test_class_hamming_matrix_against_the_definition():
    rng = np.random.default_rng(3)
    codes = rng.choice([-1, 1], size=(9, 8))
    labels = np.array([0, 1, 1, 2, 0, 1, 3, 0, 1])                          # class 3 has one sample, 4 none
    m = class_hamming_matrix(codes, labels, 5)
    d = (codes[:, None] != codes[None]).sum(-1)
    for i in range(5):
        for j in range(5):
            a, b = np.flatnonzero(labels == i), np.flatnonzero(labels == j)
            pairs = [d[x, y] for x in a for y in b if x != y]
            if pairs:
                assert m[i, j] == pytest.approx(np.mean(pairs)), (i, j)
            else:
                assert np.isnan(m[i, j]), (i, j)
    assert not np.allclose(m[0, 1], m[0, 2])


def test_inputs_are_named_in_errors_and_masks_may_be_integers():
    with pytest.raises(ValueError, match=r"^codes: codes must be -1/\+1$"):
        class_hamming_matrix(np.zeros((2, 4)), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match=r"^database: expected \(n, K\) codes, got shape \(4,\)$"):
        hamming_distances(np.ones((1, 4)), np.ones(4))
    with pytest.raises(ValueError, match=r"^queries: codes must be -1/\+1$"):
        hamming_ranking(np.full((1, 4), 2), np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"^code lengths differ: queries 4 bits, database 3 bits$"):
        hamming_distances(np.ones((1, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^unknown convention 'mean'; choose one of \('relevant', 'k'\)$"):
        average_precision_at_k([1], 1, "mean")
    # a 0/1 integer mask selects like a boolean one (not as indices)
    y, p = np.array([[1, 2, 0], [0, -1, 2]]), np.array([[1, 0, 0], [1, 2, 2]])
    assert action_accuracy(y, p, np.array([[1, 1, 0], [1, 1, 1]])) == pytest.approx(2 / 4)


def test_class_hamming_matrix_single_sample_gives_nan_without_a_division_warning():
    codes = np.array([[1, 1, -1], [1, -1, -1], [-1, -1, -1]])
    with np.errstate(all="raise"):
        m = class_hamming_matrix(codes, np.array([0, 0, 1]), 2)
    assert np.isnan(m[1, 1]) and m[0, 0] == pytest.approx(1.0) and m[0, 1] == pytest.approx((2 + 1) / 2)
    assert m.dtype == np.float64


def test_no_queries_score_zero_and_counts_are_integers():
    db, labels = np.array([[1, -1, 1, 1], [-1, -1, 1, 1]]), np.array([0, 1])
    none = np.ones((0, 4), int)
    assert map_at_k(none, [], db, labels, 2) == 0.0
    assert map_at_k(none, [], db, labels, 2, "k") == 0.0
    assert precision_at_k(none, [], db, labels, 2) == 0.0
    cm = confusion_matrix(np.array([1, 0, 1]), np.array([1, 1, 1]), 2)
    assert cm.dtype == np.int64 and cm.tolist() == [[0, 1], [0, 2]]


def test_distances_are_integers():
    q, db = np.array([[1, -1, 1, 1, -1]]), np.array([[1, 1, 1, 1, 1], [-1, -1, -1, 1, -1]])
    d = hamming_distances(q, db)
    assert np.issubdtype(d.dtype, np.integer) and d.tolist() == [[2, 2]]
    order, dist = hamming_ranking(q, db)
    assert np.issubdtype(dist.dtype, np.integer) and order.tolist() == [[0, 1]]
