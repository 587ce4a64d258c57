"""Filter matrix (Sec. 5.4, Eq. 16-18)."""

from __future__ import annotations

import math

import pytest
import torch

from stvh.models.filter import (FilterMatrix, bit_agreement, compression_ratio, filter_loss, fit_filter,
                                normalise_sign, standardise, storage_bits)
from stvh.models.heads import binarize



def test_sign_of_zero_is_plus_one():
    assert binarize(torch.tensor([0.0, -0.0, 1e-9, -1e-9, -2.0])).tolist() == [1, 1, 1, -1, -1]


def test_normalise_sign_by_hand():
    x = torch.tensor([[3.0, 1.0, -1.0, 1.0], [0.0, 0.0, 4.0, 0.0]])
    # row 0: mean 1, population std sqrt(2) -> (2, 0, -2, 0)/sqrt(2) -> signs (+, +(0), -, +(0))
    # row 1: mean 1, std sqrt(3) -> (-1, -1, 3, -1)/sqrt(3)
    assert standardise(x)[0].tolist() == pytest.approx([math.sqrt(2), 0, -math.sqrt(2), 0], abs=1e-6)
    assert normalise_sign(x).tolist() == [[1, 1, -1, 1], [-1, -1, 1, -1]]


def test_derive_chain_by_hand():
    fm = FilterMatrix(3)
    F = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 3.0]])
    with torch.no_grad():
        fm.weight.copy_(F)
    b3 = torch.tensor([[1.0, -1.0, 1.0]])
    # Eq. 16, column form: b'_2 = F b_3 = (1 - 2, 1, 3) = (-1, 1, 3); b'_1 = F b'_2 = (-1 + 2, -1, 9) = (1, -1, 9)
    b2, b1 = fm.chain(b3, 3)[::-1]
    assert b2.tolist() == [[-1.0, 1.0, 3.0]] and b1.tolist() == [[1.0, -1.0, 9.0]]
    # Eq. 17: (-1, 1, 3) has mean 1 -> (-, +(0), +); (1, -1, 9) has mean 3 -> (-, -, +)
    d1, d2 = fm.derive(b3, 3)
    assert d2.tolist() == [[-1.0, 1.0, 1.0]] and d1.tolist() == [[-1.0, -1.0, 1.0]]
    full = fm.derive(b3, 3, include_deepest=True)
    assert len(full) == 3 and torch.equal(full[-1], b3)


def test_filter_loss_by_hand():
    fm = FilterMatrix(4)  # identity
    deep = torch.tensor([[1.0, 1.0, -1.0, -1.0]])  # mean 0, std 1: standardised = itself
    shallow = torch.tensor([[1.0, -1.0, -1.0, -1.0]])  # differs in one bit by 2 -> MSE 4 / 4
    assert filter_loss(fm, [shallow, deep]).item() == pytest.approx(1.0)
    assert filter_loss(fm, [deep, deep]).item() == pytest.approx(0.0, abs=1e-7)


def test_fit_filter_recovers_a_permutation():
    torch.manual_seed(0)
    K, M = 16, 64
    deep = binarize(torch.randn(M, K))
    perm = torch.randperm(K)
    mid = deep[:, perm]  # b_(2) = P b_(3)
    shallow = mid[:, perm]  # b_(1) = P b_(2)
    fm = fit_filter([shallow, mid, deep], steps=150, lr=0.05)
    assert fm.history[-1] < 0.5 * fm.history[0]
    agree = bit_agreement(fm.derive(deep, 3), [shallow, mid])
    assert min(agree) > 0.95


def test_storage_and_compression_ratio():
    assert storage_bits(1000, 64, 3, "all") == 192000
    assert storage_bits(1000, 64, 3, "compact") == 68096  # 64000 + 64^2
    cr = compression_ratio(1000, 64, 3)
    assert cr == pytest.approx(68096 / 192000)
    assert cr == pytest.approx(1 / 3 + 1 / (1000 * (3 / 64)))  # second line of Eq. 18
    with pytest.raises(ValueError):
        storage_bits(1, 1, 1, "other")
