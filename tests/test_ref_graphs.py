"""The temporal IoU graph (Eq. 1) and the spatial distance graph (Eq. 2) against references written here.

Boxes have x1 != y1, x2 != y2 and width != height, so a coordinate read from the wrong column changes the
value; B, T, N differ and the batches carry different masks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stvh.models.graphs import PositionalModule, TemporalGraph, distance_graph, iou_graph


def ref_iou(a, b) -> float:
    """IoU of two boxes x1, y1, x2, y2; 0 when the union is empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def random_boxes(rng, B, T, N, W=640.0, H=360.0) -> np.ndarray:
    """``(B, T, N, 4)`` boxes with random, unequal x1/y1 and width/height, drifting over time."""
    xy = rng.uniform(0, [W * 0.6, H * 0.6], (B, 1, N, 2)) + rng.normal(0, 12, (B, T, N, 2)).cumsum(1)
    wh = rng.uniform([20, 50], [60, 140], (B, 1, N, 2)) * rng.uniform(0.8, 1.25, (B, T, N, 1))
    return np.concatenate([xy, xy + wh], -1)


def test_iou_graph_non_square_boxes_by_hand():
    # one person, 3 frames; wide then tall boxes with x1 != y1
    A = [10.0, 20.0, 50.0, 30.0]    # 40 x 10, area 400
    Bx = [30.0, 22.0, 40.0, 62.0]   # 10 x 40, area 400; overlap x 30..40, y 22..30 -> 10 x 8 = 80
    C = [45.0, 25.0, 75.0, 35.0]    # 30 x 10, area 300; with A: x 45..50, y 25..30 -> 25; with B: none
    boxes = torch.tensor([A, Bx, C]).view(1, 3, 1, 4)
    g = iou_graph(boxes, torch.ones(1, 1, dtype=torch.bool))[0, 0]
    assert g[1, 0].item() == pytest.approx(80 / (400 + 400 - 80))
    assert g[2, 0].item() == pytest.approx(25 / (400 + 300 - 25))
    assert g[2, 1].item() == 0.0
    assert g.diagonal().tolist() == [1.0, 1.0, 1.0]
    assert g[0, 1].item() == g[0, 2].item() == g[1, 2].item() == 0.0    # only earlier frames send


def test_iou_graph_against_reference():
    rng = np.random.default_rng(0)
    B, T, N = 2, 5, 3
    boxes = random_boxes(rng, B, T, N)
    mask = np.array([[True, False, True], [True, True, False]])
    g = iou_graph(torch.tensor(boxes), torch.tensor(mask)).numpy()
    assert g.shape == (B, N, T, T)
    for b in range(B):
        for n in range(N):
            for t in range(T):
                for s in range(T):
                    if not mask[b, n] or s > t:
                        expected = 0.0
                    elif s == t:
                        expected = 1.0
                    else:
                        expected = ref_iou(boxes[b, t, n], boxes[b, s, n])
                    assert g[b, n, t, s] == pytest.approx(expected, abs=1e-9), (b, n, t, s)
    assert (g[mask][:, 1:, 0] > 0).any()                    # the example has overlapping boxes


def test_temporal_graph_weight_is_elementwise_and_unsymmetric():
    rng = np.random.default_rng(1)
    boxes = torch.tensor(random_boxes(rng, 1, 3, 2))
    mask = torch.ones(1, 2, dtype=torch.bool)
    tg = TemporalGraph(max_frames=5)
    w = torch.arange(25.0).view(5, 5) / 10 + 0.5
    with torch.no_grad():
        tg.weight.copy_(w)
    g = tg(boxes, mask)
    torch.testing.assert_close(g, iou_graph(boxes, mask) * w[:3, :3])
    assert g[0, 0, 2, 0].item() == pytest.approx(iou_graph(boxes, mask)[0, 0, 2, 0].item() * 1.5)


def ref_distance_graph(boxes: np.ndarray, mask: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Eq. 2: ``1 - sqrt(sum_c (box_ic - box_jc)^2 / std_c^2)``, std over the real persons of the frame."""
    B, T, N, _ = boxes.shape
    out = np.zeros((B, T, N, N))
    for b in range(B):
        real = np.flatnonzero(mask[b])
        for t in range(T):
            std = np.maximum(boxes[b, t, real].std(0), eps)        # population std per coordinate
            for i in real:
                for j in real:
                    out[b, t, i, j] = 1 - math.sqrt((((boxes[b, t, i] - boxes[b, t, j]) / std) ** 2).sum())
    return out


def test_distance_graph_against_reference():
    rng = np.random.default_rng(2)
    B, T, N = 2, 3, 4
    boxes = random_boxes(rng, B, T, N)
    mask = np.array([[True, True, False, True], [False, True, True, True]])
    g = distance_graph(torch.tensor(boxes), torch.tensor(mask)).numpy()
    assert g.shape == (B, T, N, N)
    np.testing.assert_allclose(g, ref_distance_graph(boxes, mask), atol=1e-9)


def test_distance_graph_per_coordinate_std_by_hand():
    # two persons; per coordinate std = |difference| / 2, so every standardised difference is 2
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0], [16.0, 21.0, 70.0, 140.0]]).view(1, 1, 2, 4)
    g = distance_graph(boxes, torch.ones(1, 2, dtype=torch.bool))[0, 0]
    assert g[0, 1].item() == pytest.approx(1 - math.sqrt(4 * 4), abs=1e-6)
    # three persons: std differs per coordinate, so coordinates are not interchangeable
    persons = np.array([[10.0, 20.0, 50.0, 100.0], [16.0, 21.0, 70.0, 140.0], [13.0, 26.0, 52.0, 95.0]])
    g3 = distance_graph(torch.tensor(persons).view(1, 1, 3, 4), torch.ones(1, 3, dtype=torch.bool))[0, 0]
    np.testing.assert_allclose(g3.numpy(), ref_distance_graph(persons[None, None], np.ones((1, 3), bool))[0, 0],
                               atol=1e-9)


def test_positional_module_returns_both_graphs():
    rng = np.random.default_rng(3)
    boxes = torch.tensor(random_boxes(rng, 2, 4, 3))
    mask = torch.tensor([[True, True, False], [True, True, True]])
    pm = PositionalModule(max_frames=6, eps=1e-3)
    out = pm(boxes, mask)
    torch.testing.assert_close(out.g_t, iou_graph(boxes, mask))
    torch.testing.assert_close(out.g_s, distance_graph(boxes, mask, 1e-3))
    assert out.sup_t[0, 2].sum() == 0 and out.sup_t[0, 1].sum() == 10          # 4 frames: 10 pairs s <= t
    assert out.sup_s[0, 0].tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert out.mask is mask


def test_iou_overlap_in_one_axis_only_and_sub_pixel_boxes():
    A = [10.0, 20.0, 50.0, 30.0]
    D = [20.0, 40.0, 30.0, 60.0]    # overlaps A in x (20..30), not in y: IoU 0
    E = [10.2, 20.0, 10.7, 24.0]    # 0.5 px wide, 4 high: area 2
    G = [10.2, 21.0, 10.7, 25.0]    # overlap 0.5 x 3 = 1.5 -> IoU 1.5 / 2.5
    H = [10.0, 20.0, 14.0, 20.5]    # 0.5 px high, 4 wide: area 2
    I = [11.0, 20.0, 15.0, 20.5]    # overlap 3 x 0.5 -> IoU 1.5 / 2.5
    boxes = torch.tensor([[A, E, H], [D, G, I]], dtype=torch.float64).view(1, 2, 3, 4)   # (B, T, N, 4)
    g = iou_graph(boxes, torch.ones(1, 3, dtype=torch.bool))[0]                        # (N, T, T)
    assert g[0, 1, 0].item() == 0.0
    assert g[1, 1, 0].item() == pytest.approx(0.6, abs=1e-9)
    assert g[2, 1, 0].item() == pytest.approx(0.6, abs=1e-9)


def test_temporal_graph_accepts_exactly_max_frames_and_defaults():
    boxes = torch.tensor(random_boxes(np.random.default_rng(4), 1, 3, 1))
    assert TemporalGraph(max_frames=3)(boxes, torch.ones(1, 1, dtype=torch.bool)).shape == (1, 1, 3, 3)
    assert TemporalGraph().max_frames == 64 and TemporalGraph().weight.shape == (64, 64)
    pm = PositionalModule()
    assert pm.temporal.max_frames == 64 and pm.eps == 1e-4


def test_distance_graph_close_pairs_exact_diagonal_and_eps():
    # persons 0 and 1 are within one standardised unit of each other; 2 and 3 are far
    persons = np.array([[10.0, 20.0, 50.0, 100.0], [10.5, 20.2, 50.4, 100.9], [60.0, 5.0, 90.0, 70.0],
                        [30.0, 50.0, 45.0, 120.0]])
    mask = np.ones((1, 4), bool)
    g = distance_graph(torch.tensor(persons).view(1, 1, 4, 4), torch.tensor(mask))[0, 0]
    ref = ref_distance_graph(persons[None, None], mask)[0, 0]
    assert 0 < 1 - ref[0, 1] < 1                                              # d^2 below 1
    np.testing.assert_allclose(g.numpy(), ref, atol=1e-12)
    assert torch.equal(g.diagonal(), torch.ones(4, dtype=torch.float64))      # exactly 1, no sqrt(eps)
    # a coordinate that varies by less than eps: its std is clamped to eps
    near = torch.tensor([[0.0, 5.0, 2.0, 7.0], [3.0, 5.2, 5.0, 7.0]], dtype=torch.float64).view(1, 1, 2, 4)
    out = PositionalModule(eps=0.5)(near, torch.ones(1, 2, dtype=torch.bool))
    # x1, x2: std 1.5 -> difference 2 each; y1: std 0.1 clamped to 0.5 -> 0.2 / 0.5; y2: equal
    assert out.g_s[0, 0, 0, 1].item() == pytest.approx(1 - math.sqrt(4 + 4 + 0.4 ** 2), abs=1e-9)


def test_iou_of_boxes_smaller_than_a_pixel():
    # 0.5 x 0.5 boxes shifted by 0.25: intersection 0.125, union 0.375 (below 1)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5]], dtype=torch.float64).view(1, 2, 1, 4)
    g = iou_graph(boxes, torch.ones(1, 1, dtype=torch.bool))[0, 0]
    assert g[1, 0].item() == pytest.approx(1 / 3, abs=1e-12)
