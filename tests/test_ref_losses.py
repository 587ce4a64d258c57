"""Every loss of Eq. 6-9, 13-17 against a reference written here from the paper's equation.

Shapes are asymmetric on purpose (batch B != code length K != persons N != frames T != classes), so a mean over
the wrong axis or a division by the wrong size changes the value. References use plain Python / numpy loops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stvh.losses import (LossConfig, action_loss, activity_loss, contrastive_loss, cosine_sim_exp,
                         filter_consistency, layer_weights, layered_activity_loss, quantization_loss, recon_loss,
                         total_loss)
from stvh.models.output import ModelOutput


def ce(logits: list[float], k: int) -> float:
    """Cross-entropy of one sample: ``log sum exp(z) - z_k``."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[k]


def ref_quant(h: np.ndarray) -> float:
    """Eq. 7 as a mean over the B^2 pairs: ``exp(|h_i.h_j - b_i.b_j| / K)``, ``b = sign(h)`` with sign(0) = +1."""
    B, K = h.shape
    b = np.where(h >= 0, 1.0, -1.0)
    return sum(math.exp(abs(h[i] @ h[j] - b[i] @ b[j]) / K) for i in range(B) for j in range(B)) / B ** 2


def ref_contrast(a: np.ndarray, h: np.ndarray) -> float:
    """Eq. 8: mean over i of ``log(sum_j [sim(a_i, h_j) + sim(a_j, h_i)] / sim(a_i, h_i))``, sim = exp(cos)."""
    def sim(x, y):
        return math.exp(float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y)))
    B = len(a)
    return sum(math.log(sum(sim(a[i], h[j]) + sim(a[j], h[i]) for j in range(B)) / sim(a[i], h[i]))
               for i in range(B)) / B


def test_quantization_loss_batch_differs_from_code_length():
    rng = np.random.default_rng(1)
    h = rng.uniform(-1.5, 1.5, (3, 5))                     # B = 3, K = 5
    h[1, 2] = 0.0                                          # sign(0) = +1
    got = quantization_loss(torch.tensor(h)).item()
    assert got == pytest.approx(ref_quant(h), rel=1e-9)
    # the transposed batch (B = 5, K = 3) is a different problem with a different value
    assert quantization_loss(torch.tensor(h.T.copy())).item() == pytest.approx(ref_quant(h.T.copy()), rel=1e-9)


def test_quantization_loss_given_codes_and_gradient_only_through_h():
    h = torch.tensor([[0.5, -0.25, 2.0, 1.0], [-1.0, 0.75, 0.5, -0.5]], requires_grad=True)   # B = 2, K = 4
    b = torch.tensor([[1.0, 1.0, -1.0, 1.0], [1.0, -1.0, 1.0, 1.0]], requires_grad=True)
    hn, bn = h.detach().numpy(), b.detach().numpy()
    expected = sum(math.exp(abs(hn[i] @ hn[j] - bn[i] @ bn[j]) / 4) for i in range(2) for j in range(2)) / 4
    loss = quantization_loss(h, b)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert b.grad is None and h.grad.abs().sum() > 0       # the codes are targets (detached)


def test_contrastive_loss_against_eq8():
    rng = np.random.default_rng(2)
    a, h = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))   # B = 3, K = 5
    assert contrastive_loss(torch.tensor(a), torch.tensor(h)).item() == pytest.approx(ref_contrast(a, h), rel=1e-9)
    S = cosine_sim_exp(torch.tensor(a), torch.tensor(h)).numpy()
    cos01 = a[0] @ h[1] / (np.linalg.norm(a[0]) * np.linalg.norm(h[1]))
    assert S[0, 1] == pytest.approx(math.exp(cos01)) and S.shape == (3, 3)


def test_activity_and_action_losses_against_cross_entropy():
    logits = [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -2.0, 3.0], [0.0, 0.2, 0.1, -0.3]]   # B = 3, C = 4
    target = [2, -1, 0]
    got = activity_loss(torch.tensor(logits), torch.tensor(target)).item()
    assert got == pytest.approx((ce(logits[0], 2) + ce(logits[2], 0)) / 2, rel=1e-6)
    rng = np.random.default_rng(4)
    act = rng.normal(size=(2, 3, 5))                                 # B = 2, N = 3, A = 5
    labels = np.array([[4, -1, 1], [0, 2, 3]])
    mask = np.array([[True, True, True], [True, False, True]])
    keep = [(b, n) for b in range(2) for n in range(3) if mask[b, n] and labels[b, n] >= 0]
    expected = sum(ce(list(act[b, n]), labels[b, n]) for b, n in keep) / len(keep)
    got = action_loss(torch.tensor(act), torch.tensor(labels), torch.tensor(mask)).item()
    assert got == pytest.approx(expected, rel=1e-9)
    assert action_loss(torch.tensor(act), torch.full((2, 3), -1), torch.tensor(mask)).item() == 0.0


def test_recon_loss_against_eq13():
    rng = np.random.default_rng(5)
    recon, target = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))   # B, N, T, r all different
    mask = np.array([[True, False, True], [False, True, False]])
    terms = [((recon[b, n, t] - target[b, n, t]) ** 2).sum() / 5
             for b in range(2) for n in range(3) if mask[b, n] for t in range(4)]
    got = recon_loss(torch.tensor(recon), torch.tensor(target), torch.tensor(mask)).item()
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    assert recon_loss(torch.tensor(recon), torch.tensor(target), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_layered_activity_loss_three_depths():
    logits = [[[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]], [[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]],
              [[-2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]]                  # depth 3, B = 2, C = 3
    y = [1, 2]
    per_depth = [(ce(lg[0], 1) + ce(lg[1], 2)) / 2 for lg in logits]
    got = layered_activity_loss([torch.tensor(lg) for lg in logits], torch.tensor(y)).item()
    assert got == pytest.approx(sum((t + 1) / 6 * v for t, v in enumerate(per_depth)), rel=1e-6)
    got = layered_activity_loss([torch.tensor(lg) for lg in logits], torch.tensor(y), (0.5, 0.3, 0.2)).item()
    assert got == pytest.approx(0.5 * per_depth[0] + 0.3 * per_depth[1] + 0.2 * per_depth[2], rel=1e-6)
    assert layer_weights(4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="3 layer weights for 2 depths"):
        layer_weights(2, (0.2, 0.3, 0.5))


def ref_standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)


def test_filter_consistency_against_eq17():
    rng = np.random.default_rng(6)
    derived = [rng.normal(size=(3, 4)), rng.normal(size=(3, 4))]          # depth 3: two derived codes
    h = [rng.normal(size=(3, 4)) for _ in range(3)]
    h[0][0, 0] = 0.0                                                     # sign(0) = +1
    per_depth = [((ref_standardise(x) - np.where(t >= 0, 1.0, -1.0)) ** 2).mean() for x, t in zip(derived, h)]
    got = filter_consistency([torch.tensor(x) for x in derived], [torch.tensor(t) for t in h]).item()
    assert got == pytest.approx(np.mean(per_depth), rel=1e-9)


def _output() -> ModelOutput:
    g = torch.Generator().manual_seed(7)
    h = [torch.randn(3, 8, generator=g).tanh() for _ in range(2)]            # depth 2, B = 3, K = 8
    return ModelOutput(h=h, b=[x.sign() for x in h], activity_logits=[torch.randn(3, 4, generator=g) for _ in h],
                       action_logits=torch.randn(3, 2, 5, generator=g), recon=torch.randn(3, 2, 6, 7, generator=g),
                       recon_target=torch.randn(3, 2, 6, 7, generator=g), contrast=torch.randn(3, 8, generator=g),
                       mask=torch.tensor([[True, True], [True, False], [False, True]]),
                       derived=[torch.randn(3, 8, generator=g)])


def test_total_loss_uses_every_weight_once():
    out = _output()
    y, act = torch.tensor([0, 3, 1]), torch.tensor([[0, 4], [2, -1], [1, 1]])
    cfg = LossConfig(acty=0.7, action=0.3, quant=0.11, contrast=0.23, recon=0.05, filter=0.13,
                     layer_weights=(0.4, 0.6))
    t = total_loss(out, y, act, cfg)
    acty = 0.4 * activity_loss(out.activity_logits[0], y) + 0.6 * activity_loss(out.activity_logits[1], y)
    action = action_loss(out.action_logits, act, out.mask)
    quant = (quantization_loss(out.h[0]) + quantization_loss(out.h[1])) / 2
    contrast = contrastive_loss(out.contrast, out.h[1])                      # the deepest code
    recon = recon_loss(out.recon, out.recon_target, out.mask)
    filt = filter_consistency(out.derived, out.h)
    for name, ref in [("acty", acty), ("action", action), ("quant", quant), ("contrast", contrast),
                      ("recon", recon), ("filter", filt)]:
        assert t[name].item() == pytest.approx(ref.item(), rel=1e-6), name
    assert t["cls"].item() == pytest.approx(0.7 * acty.item() + 0.3 * action.item(), rel=1e-6)
    expected = (0.7 * acty + 0.3 * action + 0.11 * quant + 0.23 * contrast + 0.05 * recon + 0.13 * filt).item()
    assert t["total"].item() == pytest.approx(expected, rel=1e-6)
    # a weight of 0 removes exactly its term
    t0 = total_loss(out, y, act, LossConfig(acty=0.0, action=0.0, quant=0.11, contrast=0.0, recon=0.0))
    assert set(t0) == {"quant", "total"} and t0["total"].item() == pytest.approx(0.11 * quant.item(), rel=1e-6)
    # no mask in the output: every person is real
    out.mask = None
    t1 = total_loss(out, y, act, LossConfig(acty=0.0, action=1.0, quant=0.0, contrast=0.0, recon=0.0))
    full = action_loss(out.action_logits, act, torch.ones(3, 2, dtype=torch.bool))
    assert t1["total"].item() == pytest.approx(full.item(), rel=1e-6)


def test_quantization_loss_casts_integer_codes_before_the_product():
    # int8 codes of 130 bits: b_i . b_i = 130 overflows int8 unless the codes are cast to h's dtype first
    h = torch.full((2, 130), 0.5, dtype=torch.float64)
    h[1, :65] = -0.5
    b = torch.ones(2, 130, dtype=torch.int8)
    b[1, :65] = -1
    bn = b.double().numpy()
    hn = h.numpy()
    expected = sum(math.exp(abs(hn[i] @ hn[j] - bn[i] @ bn[j]) / 130) for i in range(2) for j in range(2)) / 4
    assert quantization_loss(h, b).item() == pytest.approx(expected, rel=1e-9)


def test_total_loss_without_classification_terms_at_depth_one():
    out = _output()
    out.h, out.b, out.activity_logits = out.h[:1], out.b[:1], out.activity_logits[:1]
    t = total_loss(out, torch.tensor([0, 3, 1]), torch.tensor([[0, 4], [2, -1], [1, 1]]),
                   LossConfig(acty=0.0, action=0.0, quant=0.0, contrast=0.23, recon=0.0))
    assert set(t) == {"contrast", "total"}
    assert t["total"].item() == pytest.approx(0.23 * contrastive_loss(out.contrast, out.h[0]).item(), rel=1e-6)
