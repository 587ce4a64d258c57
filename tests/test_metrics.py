"""Metrics against hand-computed rankings and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, balanced_accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion

from stvh.eval.metrics import (action_accuracy, average_precision_at_k, class_hamming_matrix, confusion_matrix,
                               hamming_distances, hamming_ranking, map_at_k, mca, mpca, precision_at_k,
                               retrieval_metrics)


def test_ap_hand_values_plus_minus_minus_vs_plus_minus_plus():
    # [+ - -]: relevant-count convention gives 1/1 = 1; divide-by-k gives 1/3
    assert average_precision_at_k([1, 0, 0], 3) == pytest.approx(1.0)
    assert average_precision_at_k([1, 0, 0], 3, "k") == pytest.approx(1 / 3)
    # [+ - +]: (1/1 + 2/3) / 2 and (1/1 + 2/3) / 3
    assert average_precision_at_k([1, 0, 1], 3) == pytest.approx(5 / 6)
    assert average_precision_at_k([1, 0, 1], 3, "k") == pytest.approx(5 / 9)
    assert average_precision_at_k([0, 0, 0], 3) == 0.0
    assert average_precision_at_k([0, 1, 1, 1], 2) == pytest.approx(0.5)  # truncated at k
    with pytest.raises(ValueError, match="convention"):
        average_precision_at_k([1], 1, "bogus")


def test_hamming_and_ties_by_database_order():
    q = np.array([[1, 1, 1, 1]])
    db = np.array([[1, 1, -1, -1], [1, 1, 1, -1], [-1, 1, 1, 1], [1, 1, 1, 1]])
    assert hamming_distances(q, db).tolist() == [[2, 1, 1, 0]]
    order, dist = hamming_ranking(q, db)
    assert order.tolist() == [[3, 1, 2, 0]] and dist.tolist() == [[0, 1, 1, 2]]
    with pytest.raises(ValueError, match="differ"):
        hamming_distances(q, db[:, :3])
    with pytest.raises(ValueError, match="-1/\\+1"):
        hamming_distances(q * 0, db)


def test_map_hand_ranking():
    q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])
    db = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, -1], [-1, -1, -1, -1]])
    db_labels = np.array([0, 1, 0, 1])
    # query 0 (label 0) ranking: 0(d0,+) 1(d1,-) 2(d2,+) 3(d4,-) -> AP@3 = (1 + 2/3)/2
    # query 1 (label 1) ranking: 3(d0,+) 2(d2,-) 1(d3,+) -> AP@3 = (1 + 2/3)/2
    assert map_at_k(q, [0, 1], db, db_labels, 3) == pytest.approx(5 / 6)
    assert map_at_k(q, [0, 1], db, db_labels, 3, "k") == pytest.approx(5 / 9)
    assert precision_at_k(q, [0, 1], db, db_labels, 3) == pytest.approx(2 / 3)
    # a query with no relevant item in the top k scores 0 and counts
    assert map_at_k(q, [0, 5], db, db_labels, 3) == pytest.approx(5 / 12)


def test_map_matches_sklearn_on_random_codes():
    rng = np.random.default_rng(0)
    db = rng.choice([-1, 1], size=(200, 16))
    db_labels = rng.integers(0, 4, 200)
    q = rng.choice([-1, 1], size=(30, 16))
    q_labels = rng.integers(0, 4, 30)
    k = 20
    order, _ = hamming_ranking(q, db)
    expected = []
    for i in range(len(q)):
        rel = db_labels[order[i, :k]] == q_labels[i]
        # scores strictly decreasing with rank, so sklearn sees the same ranking without ties
        expected.append(average_precision_score(rel, -np.arange(k)) if rel.any() else 0.0)
    assert map_at_k(q, q_labels, db, db_labels, k) == pytest.approx(np.mean(expected))
    m = retrieval_metrics(q, q_labels, db, db_labels, ks=(k,))
    assert m[f"map@{k}"] == pytest.approx(np.mean(expected))
    assert m[f"map@{k}/byk"] <= m[f"map@{k}"]


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5, 300))
    assert mca(y, p) == pytest.approx(accuracy_score(y, p))
    assert mpca(y, p, 5) == pytest.approx(balanced_accuracy_score(y, p))
    np.testing.assert_array_equal(confusion_matrix(y, p, 5), sk_confusion(y, p, labels=range(5)))
    # unlabeled samples (-1) are ignored
    assert mca(np.array([0, -1, 1]), np.array([0, 1, 0])) == pytest.approx(0.5)


def test_action_accuracy_ignores_padding():
    y = np.array([[0, 1, -1], [2, 2, 2]])
    p = np.array([[0, 0, 5], [2, 2, 1]])
    mask = np.array([[True, True, False], [True, True, False]])
    assert action_accuracy(y, p, mask) == pytest.approx(3 / 4)


def test_class_hamming_matrix_hand():
    codes = np.array([[1, 1], [1, -1], [-1, -1]])
    labels = np.array([0, 0, 1])
    m = class_hamming_matrix(codes, labels, 3)
    assert m[0, 0] == pytest.approx(1.0)            # one pair at distance 1
    assert m[0, 1] == pytest.approx((2 + 1) / 2)     # distances 2 and 1
    assert np.isnan(m[1, 1]) and np.isnan(m[2, 0])
