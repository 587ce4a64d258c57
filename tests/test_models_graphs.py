"""Positional module (Sec. 4.2): IoU graph (Eq. 1), G_T, distance graph (Eq. 2)."""

from __future__ import annotations

import math

import pytest
import torch

from stvh.models.graphs import (PositionalModule, TemporalGraph, distance_graph, iou_graph,
                                spatial_support, temporal_support)


A = [0.0, 0.0, 2.0, 2.0]  # area 4
Bx = [1.0, 1.0, 3.0, 3.0]  # area 4, overlap 1 with A -> IoU 1/7


def _one_person(frames):
    return torch.tensor(frames).view(1, len(frames), 1, 4), torch.ones(1, 1, dtype=torch.bool)


def test_iou_values_and_direction():
    boxes, mask = _one_person([A, Bx, A])
    g = iou_graph(boxes, mask)
    assert g.shape == (1, 1, 3, 3)
    g = g[0, 0]
    # row = receiver frame t, column = sender frame s, non-zero only for s <= t
    assert g[1, 0].item() == pytest.approx(1 / 7)
    assert g[2, 1].item() == pytest.approx(1 / 7)
    assert g[2, 0].item() == pytest.approx(1.0)
    assert torch.equal(g.diagonal(), torch.ones(3))
    assert g[0, 1].item() == 0 and g[0, 2].item() == 0 and g[1, 2].item() == 0
    assert torch.equal(g, g.tril())


def test_iou_disjoint_degenerate_and_padded():
    boxes = torch.tensor([[[0.0, 0, 1, 1], [5, 5, 5, 5], [9, 9, 1, 1]],
                          [[10.0, 10, 11, 11], [5, 5, 5, 5], [3, 3, 2, 2]]]).view(1, 2, 3, 4)
    mask = torch.tensor([[True, True, False]])
    g = iou_graph(boxes, mask)[0]  # (N, T, T)
    assert g[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # disjoint boxes
    assert g[1].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # zero-area box: diagonal still 1
    assert torch.equal(g[2], torch.zeros(2, 2))  # padded person: no edges


def test_temporal_graph_weights_keep_direction():
    boxes, mask = _one_person([A, Bx, A])
    tg = TemporalGraph(max_frames=4)
    with torch.no_grad():
        tg.weight.copy_(torch.arange(16.0).view(4, 4))
    g = tg(boxes, mask)[0, 0]
    assert g[1, 0].item() == pytest.approx(4 / 7)  # IoU 1/7 times W[1, 0] = 4
    assert g[2, 2].item() == pytest.approx(10.0)
    assert torch.equal(g, g.tril())
    with pytest.raises(ValueError, match="max_frames"):
        tg(torch.zeros(1, 5, 1, 4), mask)


def test_supports():
    mask = torch.tensor([[True, False]])
    st = temporal_support(mask, 3)
    assert st.shape == (1, 2, 3, 3)
    assert torch.equal(st[0, 0], torch.ones(3, 3, dtype=torch.bool).tril())
    assert not st[0, 1].any()
    ss = spatial_support(mask, 3)
    assert ss.shape == (1, 3, 2, 2)
    assert ss[0, 0].tolist() == [[True, False], [False, False]]


def _pstd(values):
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def test_distance_graph_by_hand_and_mask():
    persons = [[0.0, 0.0, 2.0, 2.0], [2.0, 1.0, 4.0, 3.0], [4.0, 0.0, 6.0, 4.0]]
    garbage = [123.0, -55.0, 9e3, 7.0]
    boxes = torch.tensor(persons + [garbage]).view(1, 1, 4, 4)
    mask = torch.tensor([[True, True, True, False]])
    g = distance_graph(boxes, mask)
    assert g.shape == (1, 1, 4, 4)
    std = [_pstd([p[c] for p in persons]) for c in range(4)]  # over the real persons only
    for i in range(3):
        for j in range(3):
            s = sum((persons[i][c] - persons[j][c]) ** 2 / std[c] ** 2 for c in range(4))
            assert g[0, 0, i, j].item() == pytest.approx(1 - math.sqrt(s), abs=1e-5)
    assert torch.equal(g[0, 0, 3], torch.zeros(4)) and torch.equal(g[0, 0, :, 3], torch.zeros(4))
    # the padded garbage box changes nothing
    g3 = distance_graph(boxes[:, :, :3], mask[:, :3])
    assert torch.allclose(g[0, 0, :3, :3], g3[0, 0], atol=1e-6)


def test_distance_graph_constant_coordinate_uses_eps():
    boxes = torch.tensor([[0.0, 5.0, 2.0, 7.0], [3.0, 5.0, 5.0, 7.0]]).view(1, 1, 2, 4)  # y equal
    g = distance_graph(boxes, torch.ones(1, 2, dtype=torch.bool))
    # x1: {0, 3} std 1.5, x2: {2, 5} std 1.5 -> sqrt(4 + 4)
    assert g[0, 0, 0, 1].item() == pytest.approx(1 - math.sqrt(8), abs=1e-5)
    assert torch.isfinite(g).all()


def test_positional_module_shapes():
    boxes = torch.rand(2, 5, 3, 4) * 10
    boxes[..., 2:] += boxes[..., :2]
    g = PositionalModule(max_frames=8)(boxes, torch.ones(2, 3, dtype=torch.bool))
    assert g.g_t.shape == (2, 3, 5, 5) and g.g_s.shape == (2, 5, 3, 3)
    assert g.sup_t.shape == (2, 3, 5, 5) and g.sup_s.shape == (2, 5, 3, 3)
