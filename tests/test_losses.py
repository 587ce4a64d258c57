"""Losses of Eq. 6-9 and 13-15, the GCN adjacency of L_CON, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from stvh.losses import (LossConfig, action_loss, activity_loss, contrastive_loss, layer_weights,
                         layered_activity_loss, mstvh_loss, quantization_loss, recon_loss, stvh_loss)
from stvh.models.gcn import ContrastiveGCN, contrastive_adjacency
from stvh.models.output import ModelOutput



def _ce(logits, k):
    return -math.log(math.exp(logits[k]) / sum(math.exp(v) for v in logits))


def test_quantization_loss_two_codes_by_hand():
    h = torch.tensor([[0.5, -1.0], [0.0, 0.2]])  # b = (+1, -1), (+1, +1): sign(0) = +1
    # pairs (K = 2): (1,1) |1.25 - 2| / 2 = 0.375; (2,2) |0.04 - 2| / 2 = 0.98; (1,2) |-0.2 - 0| / 2 = 0.1
    expected = (math.exp(0.375) + math.exp(0.98) + 2 * math.exp(0.1)) / 4
    assert quantization_loss(h).item() == pytest.approx(expected, rel=1e-6)
    assert quantization_loss(torch.tensor([[1.0, -1.0], [-1.0, -1.0]])).item() == pytest.approx(1.0)


def test_quantization_loss_gradient_pushes_to_binary():
    h = torch.tensor([[0.3, -0.6, 0.9]], requires_grad=True)
    quantization_loss(h).backward()
    assert (h.grad * h.detach().sign() < 0).all()  # descent increases |h|


def test_contrastive_loss_two_samples_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    h = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    r = 1 / math.sqrt(2)
    S = [[math.exp(r), math.exp(0.0)], [math.exp(r), math.exp(-1.0)]]  # S[i][j] = exp(cos(a_i, h_j))
    l1 = math.log((S[0][0] + S[0][1] + S[0][0] + S[1][0]) / S[0][0])
    l2 = math.log((S[1][0] + S[1][1] + S[0][1] + S[1][1]) / S[1][1])
    assert contrastive_loss(a, h).item() == pytest.approx((l1 + l2) / 2, rel=1e-6)


def test_contrastive_loss_is_differentiable_in_both():
    a = torch.randn(4, 8, requires_grad=True)
    h = torch.randn(4, 8, requires_grad=True)
    contrastive_loss(a, h).backward()
    assert a.grad.abs().sum() > 0 and h.grad.abs().sum() > 0


def test_classification_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 3.0]])
    target = torch.tensor([0, -1, 1])  # clip 1 unlabeled
    expected = (_ce([2.0, 0.0], 0) + _ce([1.0, 3.0], 1)) / 2
    assert activity_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert activity_loss(logits, torch.full((3,), -1)).item() == 0.0

    act = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, -5.0], [0.0, 0.0]]])  # (1, 4, 2)
    labels = torch.tensor([[0, 1, 1, -1]])
    mask = torch.tensor([[True, True, False, True]])  # person 2 padded, person 3 unlabeled
    expected = (_ce([1.0, 0.0], 0) + _ce([0.0, 2.0], 1)) / 2
    assert action_loss(act, labels, mask).item() == pytest.approx(expected, rel=1e-6)


def test_recon_loss_by_hand():
    recon = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    mask = torch.tensor([[True, False]])
    assert recon_loss(recon, target, mask).item() == pytest.approx((1 + 4) / 2)  # (1/d) * squared error


def test_layered_activity_loss_weights():
    assert layer_weights(3) == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert layer_weights(2, (0.2, 0.8)) == [0.2, 0.8]
    with pytest.raises(ValueError):
        layer_weights(2, (1.0,))
    l1, l2 = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    expected = _ce([2.0, 0.0], 0) / 3 + 2 * _ce([0.0, 1.0], 0) / 3
    assert layered_activity_loss([l1, l2], y).item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_adjacency_by_hand():
    g = torch.zeros(1, 2, 3, 3)
    g[0, 0, 0, 1] = g[0, 0, 1, 0] = 0.5
    g[0, 1, 0, 1] = g[0, 1, 1, 0] = -0.1  # time mean 0.2
    g[0, :, 0, 2] = 9.0  # edge to the padded person
    adj = contrastive_adjacency(g, torch.tensor([[True, True, False]]))[0]
    assert adj[0].tolist() == pytest.approx([1 / 1.2, 0.2 / 1.2, 0.0])
    assert adj[1].tolist() == pytest.approx([0.2 / 1.2, 1 / 1.2, 0.0])
    assert adj[2].tolist() == [0.0, 0.0, 0.0]


def test_contrastive_gcn_ignores_padded_persons():
    torch.manual_seed(0)
    gcn = ContrastiveGCN(num_actions=3, bits=8, hidden=5)
    logits, g = torch.randn(1, 3, 3), torch.randn(1, 2, 3, 3)
    mask = torch.tensor([[True, True, False]])
    a = gcn(logits, g, mask)
    logits2 = logits.clone()
    logits2[0, 2] = 100.0
    assert a.shape == (1, 8)
    assert torch.allclose(a, gcn(logits2, g, mask), atol=1e-6)
    assert torch.allclose(a, gcn(logits[:, :2], g[..., :2, :2], mask[:, :2]), atol=1e-6)


def _output(depth: int, recon: bool) -> ModelOutput:
    torch.manual_seed(depth)
    h = [torch.tanh(torch.randn(3, 8, requires_grad=True)) for _ in range(depth)]
    return ModelOutput(
        h=h, b=[x.sign() for x in h], activity_logits=[torch.randn(3, 4, requires_grad=True) for _ in h],
        action_logits=torch.randn(3, 2, 5, requires_grad=True),
        recon=torch.randn(3, 2, 6, 7, requires_grad=True) if recon else None,
        recon_target=torch.randn(3, 2, 6, 7) if recon else None,
        contrast=torch.randn(3, 8, requires_grad=True), mask=torch.tensor([[True, True], [True, False], [True, True]]),
    )


def test_stvh_total_eq9():
    out = _output(1, recon=False)
    y, act = torch.tensor([0, 1, 3]), torch.tensor([[0, 1], [2, -1], [4, 4]])
    t = stvh_loss(out, y, act)
    assert set(t) == {"acty", "action", "cls", "quant", "contrast", "total"}
    assert t["cls"].item() == pytest.approx(t["acty"].item() + 0.5 * t["action"].item(), rel=1e-6)
    expected = t["cls"] + 0.1 * t["quant"] + 0.5 * t["contrast"]
    assert t["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert t["acty"].item() == pytest.approx(activity_loss(out.activity_logits[0], y).item(), rel=1e-6)
    t["total"].backward()


def test_mstvh_total_eq15_and_ablation():
    out = _output(3, recon=True)
    y, act = torch.tensor([0, 1, 3]), torch.tensor([[0, 1], [2, -1], [4, 4]])
    t = mstvh_loss(out, y, act)
    expected = t["acty"] + 0.5 * t["action"] + 0.1 * t["quant"] + 0.5 * t["contrast"] + 0.01 * t["recon"]
    assert t["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    quant = sum(quantization_loss(h) for h in out.h) / 3  # L_q over every depth
    assert t["quant"].item() == pytest.approx(quant.item(), rel=1e-6)
    assert t["contrast"].item() == pytest.approx(contrastive_loss(out.contrast, out.h[-1]).item(), rel=1e-6)
    # Table 7 ablation: L_cls + mu3 L_recon
    off = mstvh_loss(out, y, act, LossConfig.mstvh(quant=0.0, contrast=0.0))
    assert "quant" not in off and "contrast" not in off
    assert off["total"].item() == pytest.approx((off["cls"] + 0.01 * off["recon"]).item(), rel=1e-6)
    assert LossConfig.stvh().recon == 0.0 and LossConfig.stvh().quant == 0.1 and LossConfig.stvh().contrast == 0.5


def test_visual_group_loss_matches_a_loop_over_anchors():
    import math

    from stvh.losses import visual_group_loss

    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 8, generator=g)
    group = torch.tensor([0, 1, 0, 2, 1, 0])  # clip 3 is alone: not an anchor
    z = h / h.norm(dim=1, keepdim=True)
    terms = []
    for i in range(6):
        pos = [j for j in range(6) if j != i and group[j] == group[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / 0.2) for a in range(6) if a != i)
        terms.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / 0.2) / denom) for p in pos) / len(pos))
    assert float(visual_group_loss(h, group)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # codes that put each group on its own direction score lower than codes that mix them
    sep = torch.nn.functional.one_hot(group, 8).float() * 4 - 1
    assert float(visual_group_loss(sep, group)) < float(visual_group_loss(sep[torch.tensor([1, 0, 3, 2, 5, 4])], group))
    assert float(visual_group_loss(h, torch.arange(6))) == 0.0  # no positives: no term
    h.requires_grad_(True)
    visual_group_loss(h, group).backward()
    assert h.grad is not None and bool(torch.isfinite(h.grad).all())


def test_side_loss_by_hand():
    from stvh.data.clip import side_ids
    from stvh.losses import side_loss

    names = ["r_set", "r_spike", "l_set", "l_spike", "queueing"]
    sides = torch.from_numpy(side_ids(names))
    assert sides.tolist() == [1, 1, 0, 0, -1] and side_ids(["Left pass", "right-win", "lr"]).tolist() == [0, 1, -1]
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, 3.0], [1.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5])
    target = torch.tensor([1, 2, 4])  # r_spike, l_set, queueing (no side: left out)
    e = [[math.exp(v) for v in row] for row in logits.tolist()]
    p_right0 = (e[0][0] + e[0][1]) / (e[0][0] + e[0][1] + e[0][2] + e[0][3])
    p_left1 = (e[1][2] + e[1][3]) / (e[1][0] + e[1][1] + e[1][2] + e[1][3])
    expect = -(math.log(p_right0) + math.log(p_left1)) / 2
    assert float(side_loss(logits, target, sides)) == pytest.approx(expect, rel=1e-6)
    assert float(side_loss(logits, torch.tensor([4, -1, 4]), sides)) == 0.0
