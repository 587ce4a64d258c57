"""SGAT (Eq. 4) and O-/G-MFAT (Eq. 11) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from stvh.models.attention import SGAT, GroupMFAT, ObjectMFAT



def _fix(module, d=2):
    """W1 = W2 = W3 = I, edge logits = 1 * tanh(1 * g + 0) (one head)."""
    with torch.no_grad():
        for w in (module.w1, module.w2, module.w3):
            w.weight.copy_(torch.eye(d))
        module.edge.inner.weight.fill_(1.0)
        module.edge.inner.bias.zero_()
        module.edge.weight.weight.fill_(1.0)
    return module


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _by_hand(feats, graph, allowed):
    """Eq. 4 for one sequence: feats L x d, graph L x L, allowed(i, j) -> output L x d."""
    L, d = len(feats), len(feats[0])
    out = []
    for i in range(L):
        js = [j for j in range(L) if allowed(i, j)]
        at_v = _softmax([sum(a * b for a, b in zip(feats[i], feats[j])) / math.sqrt(d) for j in js])
        at_p = _softmax([math.tanh(graph[i][j]) for j in js])
        prod = [v * p for v, p in zip(at_v, at_p)]
        att = [p / sum(prod) for p in prod]  # element-wise product, renormalised
        out.append([sum(a * feats[j][c] for a, j in zip(att, js)) for c in range(d)])
    return out


def test_group_mfat_two_persons_two_frames_by_hand():
    frames = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [2.0, 0.0]]]  # [t][person] -> feature
    g_s = [[[1.0, 0.5], [0.5, 1.0]], [[1.0, -0.3], [-0.3, 1.0]]]  # [t][i][j]
    f = torch.tensor(frames).transpose(0, 1)[None]  # (1, N=2, T=2, d=2)
    m = _fix(GroupMFAT(2, heads=1, edge_hidden=1))
    out = m(f, torch.tensor(g_s)[None], torch.ones(1, 2, 2, 2, dtype=torch.bool))
    assert out.shape == (1, 2, 2, 2)
    for t in range(2):
        expected = _by_hand(frames[t], g_s[t], lambda i, j: True)
        for n in range(2):
            assert out[0, n, t].tolist() == pytest.approx(expected[n], abs=1e-6)


def test_object_mfat_is_directed_by_hand():
    persons = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [2.0, 0.0]]]  # [n][t] -> feature
    g_t = [[[1.0, 0.0], [0.4, 1.0]], [[1.0, 0.0], [0.2, 1.0]]]  # [n][t][s], lower triangular
    sup = torch.ones(2, 2, dtype=torch.bool).tril().expand(1, 2, 2, 2)
    m = _fix(ObjectMFAT(2, heads=1, edge_hidden=1))
    out = m(torch.tensor(persons)[None], torch.tensor(g_t)[None], sup)
    for n in range(2):
        expected = _by_hand(persons[n], g_t[n], lambda i, j: j <= i)
        for t in range(2):
            assert out[0, n, t].tolist() == pytest.approx(expected[t], abs=1e-6)
        assert out[0, n, 0].tolist() == pytest.approx(persons[n][0])  # frame 0 only hears itself


def test_padded_persons_neither_give_nor_receive():
    torch.manual_seed(0)
    m = GroupMFAT(4, heads=2, edge_hidden=3).eval()
    f = torch.randn(1, 3, 2, 4)
    g = torch.randn(1, 2, 3, 3)
    mask = torch.tensor([True, True, False])
    sup = (mask[:, None] & mask[None, :]).expand(1, 2, 3, 3)
    out = m(f, g, sup)
    f2, g2 = f.clone(), g.clone()
    f2[:, 2] = 1e4 * torch.randn(2, 4)  # garbage in the padded slot
    g2[..., 2, :] = 50.0
    g2[..., :, 2] = -50.0
    out2 = m(f2, g2, sup)
    assert torch.equal(out[0, 2], torch.zeros(2, 4)) and torch.equal(out2[0, 2], torch.zeros(2, 4))
    assert torch.allclose(out[0, :2], out2[0, :2], atol=1e-6)
    small = m(f[:, :2], g[..., :2, :2], sup[..., :2, :2])
    assert torch.allclose(out[0, :2], small[0], atol=1e-6)


def test_keep_attention_maps():
    torch.manual_seed(1)
    m = SGAT(4, heads=2, edge_hidden=4, keep_attention=True)
    sup = torch.ones(3, 3, dtype=torch.bool).tril().expand(1, 2, 3, 3)
    m(torch.randn(1, 2, 3, 4), torch.rand(1, 2, 3, 3), sup)
    maps = m.last_attention
    assert set(maps) == {"visual", "positional", "combined"}
    for v in maps.values():
        assert v.shape == (1, 2, 2, 3, 3)
        assert torch.allclose(v.sum(-1), torch.ones(1, 2, 2, 3), atol=1e-6)
        assert torch.equal(v, v.tril())
    prod = maps["visual"] * maps["positional"]
    assert torch.allclose(maps["combined"], prod / prod.sum(-1, keepdim=True), atol=1e-6)


def test_no_graph_is_plain_attention_and_heads_checked():
    m = SGAT(4, heads=2, edge_hidden=None)
    assert m.edge is None
    out = m(torch.randn(2, 1, 5, 4), None, torch.ones(2, 1, 5, 5, dtype=torch.bool))
    assert out.shape == (2, 1, 5, 4)
    with pytest.raises(ValueError, match="divisible"):
        SGAT(5, heads=2)
