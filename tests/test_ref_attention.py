"""SGAT (Eq. 4) and its MFAT uses (Eq. 11) against a loop reference written from the equation.

The reference computes the two softmaxes AT_v and AT_p separately over each receiver's allowed senders,
multiplies them element-wise and renormalises (the documented reading of ``AT_v (x) AT_p``), then applies
the map to ``W1 f`` head by head. Shapes: B = 2, S = 3, L = 4, d = 6, 2 heads of 3 channels; the supports
are irregular and one receiver has no sender at all.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stvh.models.attention import SGAT, GroupMFAT, ObjectMFAT


def softmax_over(x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax of one row over the allowed entries; 0 elsewhere (all zeros when nothing is allowed)."""
    out = np.zeros_like(x)
    if allowed.any():
        e = np.exp(x[allowed] - x[allowed].max())
        out[allowed] = e / e.sum()
    return out


def ref_sgat(m: SGAT, f: np.ndarray, graph: np.ndarray | None, support: np.ndarray):
    """Loop reference of Eq. 4 over ``f (B, S, L, d)``; returns the output and the three maps (B, S, H, L, L)."""
    W1, W2, W3 = (lin.weight.detach().double().numpy() for lin in (m.w1, m.w2, m.w3))
    B, S, L, d = f.shape
    H, C = m.heads, d // m.heads
    out = np.zeros_like(f)
    maps = {k: np.zeros((B, S, H, L, L)) for k in ("visual", "positional", "combined")}
    if graph is not None:
        w_in = m.edge.inner.weight.detach().double().numpy()[:, 0]       # (hidden,)
        b_in = m.edge.inner.bias.detach().double().numpy()               # (hidden,)
        w_out = m.edge.weight.weight.detach().double().numpy()           # (H, hidden)
    for b in range(B):
        for s in range(S):
            x = f[b, s]                                                  # (L, d)
            q, k, v = x @ W2.T, x @ W3.T, x @ W1.T
            for h in range(H):
                cs = slice(h * C, (h + 1) * C)
                for i in range(L):
                    allowed = support[b, s, i]
                    lv = np.array([q[i, cs] @ k[j, cs] / math.sqrt(C) for j in range(L)])
                    if graph is not None:
                        lp = np.array([w_out[h] @ np.tanh(w_in * graph[b, s, i, j] + b_in) for j in range(L)])
                    else:
                        lp = np.zeros(L)
                    at_v, at_p = softmax_over(lv, allowed), softmax_over(lp, allowed)
                    prod = at_v * at_p
                    comb = prod / prod.sum() if prod.sum() > 0 else prod
                    maps["visual"][b, s, h, i], maps["positional"][b, s, h, i] = at_v, at_p
                    maps["combined"][b, s, h, i] = comb
                    out[b, s, i, cs] = comb @ v[:, cs]
    return out, maps


def make_inputs(seed=0, B=2, S=3, L=4, d=6):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(B, S, L, d))
    graph = rng.uniform(-1, 1, (B, S, L, L))
    support = rng.random((B, S, L, L)) < 0.6
    support[..., np.arange(L), np.arange(L)] = True                       # most receivers see themselves
    support[0, 1, 2] = False                                             # one receiver sees nothing
    support[1, 2] = np.tril(np.ones((L, L), bool))                       # a directed (G_T-like) block
    return f, graph, support


def build(cls=SGAT, **kw):
    torch.manual_seed(3)
    m = cls(6, heads=2, edge_hidden=5, keep_attention=True, **kw).double()
    with torch.no_grad():                                                # a visible positional term
        m.edge.inner.weight.mul_(3.0)
        m.edge.weight.weight.mul_(3.0)
    return m


def test_sgat_matches_eq4_reference():
    m = build()
    f, graph, support = make_inputs()
    got = m(torch.tensor(f), torch.tensor(graph), torch.tensor(support)).detach().numpy()
    ref, maps = ref_sgat(m, f, graph, support)
    np.testing.assert_allclose(got, ref, atol=1e-10)
    for name in ("visual", "positional", "combined"):
        np.testing.assert_allclose(m.last_attention[name].numpy(), maps[name], atol=1e-10, err_msg=name)
    assert np.all(got[0, 1, 2] == 0.0)                                   # a receiver without senders
    assert not np.allclose(maps["visual"], maps["positional"])           # both terms matter


def test_sgat_without_graph_is_plain_masked_attention():
    torch.manual_seed(4)
    m = SGAT(6, heads=3, edge_hidden=None, keep_attention=True).double()
    f, _, support = make_inputs(seed=1)
    got = m(torch.tensor(f), None, torch.tensor(support)).detach().numpy()
    ref, maps = ref_sgat(m, f, None, support)
    np.testing.assert_allclose(got, ref, atol=1e-10)
    np.testing.assert_allclose(m.last_attention["combined"].numpy(), maps["visual"], atol=1e-10)


def test_object_and_group_mfat_attend_over_the_right_axis():
    f, _, _ = make_inputs(seed=2, B=2, S=3, L=4)                          # f as (B, N=3, T=4, d)
    rng = np.random.default_rng(5)
    g_t, sup_t = rng.uniform(0, 1, (2, 3, 4, 4)), np.broadcast_to(np.tril(np.ones((4, 4), bool)), (2, 3, 4, 4))
    g_s, sup_s = rng.uniform(-1, 1, (2, 4, 3, 3)), rng.random((2, 4, 3, 3)) < 0.7
    sup_s[..., np.arange(3), np.arange(3)] = True
    om = build(ObjectMFAT)
    got = om(torch.tensor(f), torch.tensor(g_t), torch.tensor(sup_t.copy())).detach().numpy()
    np.testing.assert_allclose(got, ref_sgat(om, f, g_t, sup_t)[0], atol=1e-10)
    gm = build(GroupMFAT)
    got = gm(torch.tensor(f), torch.tensor(g_s), torch.tensor(sup_s)).detach().numpy()   # (B, N, T, d)
    ref = ref_sgat(gm, f.transpose(0, 2, 1, 3), g_s, sup_s)[0].transpose(0, 2, 1, 3)      # persons per frame
    assert got.shape == (2, 3, 4, 6)
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_heads_must_divide_d():
    with pytest.raises(ValueError, match="d=6 is not divisible by heads=4"):
        SGAT(6, heads=4)


def test_defaults_and_parameters():
    m = SGAT(16)
    assert m.heads == 8 and m.edge.inner.out_features == 16 and m.edge.weight.out_features == 8
    assert m.keep_attention is False and m.last_attention is None
    # Eq. 4 has no biases; a bias on W or on the keys would only add a constant per receiver row
    assert all(lin.bias is None for lin in (m.w1, m.w2, m.w3, m.edge.weight))
    assert sum(p.numel() for p in m.parameters()) == 3 * 16 * 16 + (16 + 16) + 16 * 8
    f = torch.randn(1, 1, 3, 16)
    m(f, torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3, dtype=torch.bool))
    assert m.last_attention is None                                      # nothing kept unless asked


def test_sgat_with_edges_runs_without_a_graph():
    """A module built with edge weights, called with graph=None, is plain masked attention."""
    m = build()
    f, _, support = make_inputs(seed=6)
    got = m(torch.tensor(f), None, torch.tensor(support)).detach().numpy()
    np.testing.assert_allclose(got, ref_sgat(m, f, None, support)[0], atol=1e-10)


def test_edge_logits_default_width():
    from stvh.models.attention import EdgeLogits

    e = EdgeLogits(3)
    assert e.inner.out_features == 16 and e.weight.in_features == 16 and e.weight.out_features == 3
