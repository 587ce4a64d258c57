"""The filter matrix of Sec. 5.4 (Eq. 16-18) against references written here.

F is deliberately not symmetric (``F b`` and ``F^T b`` differ) and M != K, so a transposed product or a
standardisation over the wrong axis changes the result.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stvh.models.filter import (FilterMatrix, bit_agreement, compression_ratio, filter_loss, fit_filter,
                                normalise_sign, standardise, storage_bits)


def ref_standardise(x: np.ndarray) -> np.ndarray:
    """Per code vector (row): subtract the mean of its K entries, divide by their population std."""
    return (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)


def sign(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0)


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    K, M = 6, 4
    F = rng.normal(size=(K, K))                                           # not symmetric
    b3 = sign(rng.normal(size=(M, K)))                                    # the deepest stored codes
    fm = FilterMatrix(K).double()
    with torch.no_grad():
        fm.weight.copy_(torch.tensor(F))
    return fm, F, b3


def test_chain_is_eq16_column_form(setup):
    fm, F, b3 = setup
    b2 = (F @ b3.T).T                                                     # b'_(2) = F b_(3), column form
    b1 = (F @ b2.T).T                                                     # b'_(1) = F b'_(2): real, not re-binarised
    chain = fm.chain(torch.tensor(b3), 3)
    assert len(chain) == 2
    np.testing.assert_allclose(chain[0].detach().numpy(), b1, atol=1e-10)   # shallow first
    np.testing.assert_allclose(chain[1].detach().numpy(), b2, atol=1e-10)
    assert not np.allclose(b2, b3 @ F)                                    # F^T would give other codes


def test_derive_is_eq17(setup):
    fm, F, b3 = setup
    b2 = (F @ b3.T).T
    b1 = (F @ b2.T).T
    got = fm.derive(torch.tensor(b3), 3)
    np.testing.assert_array_equal(got[0].numpy(), sign(ref_standardise(b1)))
    np.testing.assert_array_equal(got[1].numpy(), sign(ref_standardise(b2)))
    full = fm.derive(torch.tensor(b3), 3, include_deepest=True)
    assert len(full) == 3 and np.array_equal(full[2].numpy(), b3)
    assert fm.derive(torch.tensor(b3), 1) == []


def test_standardise_and_normalise_sign_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    # row 0: mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5)
    np.testing.assert_allclose(standardise(x)[0].numpy(), np.array([-2, -1, 0, 3]) / np.sqrt(3.5), rtol=1e-6)
    assert standardise(x)[1].tolist() == [0.0, 0.0, 0.0, 0.0]            # constant row: std clamped, no NaN
    assert normalise_sign(x).tolist() == [[-1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]   # sign(0) = +1
    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 8))
    np.testing.assert_allclose(standardise(torch.tensor(y)).numpy(), ref_standardise(y), atol=1e-12)


def test_filter_loss_reference(setup):
    fm, F, b3 = setup
    rng = np.random.default_rng(2)
    stored = [sign(rng.normal(size=b3.shape)), sign(rng.normal(size=b3.shape)), b3]
    b2 = (F @ b3.T).T
    b1 = (F @ b2.T).T
    expected = (((ref_standardise(b1) - stored[0]) ** 2).mean() + ((ref_standardise(b2) - stored[1]) ** 2).mean()) / 2
    got = filter_loss(fm, [torch.tensor(c) for c in stored]).item()
    assert got == pytest.approx(expected, rel=1e-10)
    assert filter_loss(fm, [torch.tensor(b3)]).item() == 0.0


def test_fit_filter_learns_a_known_map():
    # shallower codes are a fixed permutation of the deeper one: F = P reproduces them exactly
    rng = np.random.default_rng(3)
    K = 8
    P = np.eye(K)[rng.permutation(K)]
    b3 = sign(rng.normal(size=(64, K)))
    b2 = (P @ b3.T).T
    b1 = (P @ b2.T).T
    codes = [torch.tensor(c, dtype=torch.float32) for c in (b1, b2, b3)]
    fm = fit_filter(codes, steps=300, lr=0.05)
    assert len(fm.history) == 300 and fm.history[-1] < fm.history[0] / 2
    agree = bit_agreement(fm.derive(codes[2], 3), codes[:2])
    assert min(agree) > 0.95


def test_bit_agreement_and_storage():
    a = [torch.tensor([[1.0, -1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0], [-1.0, -1.0]])]
    b = [torch.tensor([[1, 1, 1, -1]]), torch.tensor([[1, 1], [-1, 1]])]
    assert bit_agreement(a, b) == [0.5, 0.75]
    assert storage_bits(1000, 64, 3) == 1000 * 3 * 64
    assert storage_bits(1000, 64, 3, "compact") == 1000 * 64 + 64 * 64
    assert compression_ratio(1000, 64, 3) == pytest.approx((1000 * 64 + 64 ** 2) / (1000 * 3 * 64))
    assert compression_ratio(1000, 64, 3) == pytest.approx(1 / 3 + 64 / (1000 * 3))
    with pytest.raises(ValueError, match="mode must be 'all' or 'compact'"):
        storage_bits(10, 16, 2, "half")


def test_standardise_uses_the_last_axis_of_any_rank():
    y = np.random.default_rng(4).normal(size=(2, 3, 5))
    np.testing.assert_allclose(standardise(torch.tensor(y)).numpy(),
                               (y - y.mean(-1, keepdims=True)) / y.std(-1, keepdims=True), atol=1e-12)


def test_integer_codes_and_defaults(setup):
    fm, F, b3 = setup
    assert fm.bits == 6 and FilterMatrix(16).bits == 16
    ints = torch.tensor(b3, dtype=torch.int8)                            # stored codes as small integers
    np.testing.assert_allclose(fm.chain(ints, 2)[0].detach().numpy(), (F @ b3.T).T, atol=1e-10)
    codes = [torch.tensor(np.sign(np.random.default_rng(5).normal(size=(8, 4))), dtype=torch.float32)
             for _ in range(2)]
    default = fit_filter(codes)
    assert len(default.history) == 500
    # the default learning rate is 1e-2: the same as giving it
    a, b = fit_filter(codes, steps=4), fit_filter(codes, steps=4, lr=1e-2)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, fit_filter(codes, steps=4, lr=0.05).weight)
