"""Multi-focus storage: `all` vs `compact` (filter derivation, Eq. 16-18)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stvh.index import create_index, derive_signs, load_index, pack_codes, storage_bits
from stvh.index.storage import bits_per_clip, compression_ratio, normalise_sign, storage_report


def perm_case(bits, depth, m, seed):
    """Codes whose shallower foci are exactly what a permutation filter derives."""
    rng = np.random.default_rng(seed)
    perm = np.eye(bits, dtype=np.float32)[rng.permutation(bits)]
    deep = rng.choice(np.array([-1, 1], np.int8), (m, bits))
    deep[:, 0], deep[:, 1] = 1, -1                    # never constant: sign((b - mu)/sigma) = b
    signs = np.empty((m, depth, bits), np.int8)
    cur = deep.astype(np.float64)
    signs[:, depth - 1] = deep
    for t in range(depth - 1, 0, -1):
        cur = cur @ perm.T.astype(np.float64)
        signs[:, t - 1] = cur.astype(np.int8)
    return perm, signs


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([16, 32, 64, 128]), st.integers(1, 4), st.integers(1, 60), st.integers(0, 2**31))
def test_compact_equals_all_when_the_filter_reproduces_the_codes(bits, depth, m, seed):
    perm, signs = perm_case(bits, depth, m, seed)
    assert np.array_equal(derive_signs(signs[:, -1], perm, depth), signs)
    ids = [f"v/{i}" for i in range(m)]
    rng = np.random.default_rng(seed + 1)
    for backend in ("numpy", "faiss"):
        full = create_index(backend, bits, depth, mode="all")
        full.add(ids, pack_codes(signs))
        compact = create_index(backend, bits, depth, mode="compact", filter=perm)
        compact.add(ids, pack_codes(signs[:, -1]))             # the deepest code only
        for focus in range(1, depth + 1):
            assert np.array_equal(full.codes_of(ids, focus), compact.codes_of(ids, focus))
            q = pack_codes(signs[rng.integers(0, m, 3), focus - 1])
            a, b = full.search(q, 7, focus=focus), compact.search(q, 7, focus=focus)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_compact_ignores_given_shallow_codes_and_saves_only_the_deepest(tmp_path):
    perm, signs = perm_case(64, 3, 40, 0)
    ids = [f"v/{i}" for i in range(40)]
    noisy = signs.copy()
    noisy[:, :2] *= -1                                          # wrong shallow codes: ignored
    compact = create_index("faiss", 64, 3, mode="compact", filter=perm)
    compact.add(ids, noisy)
    assert np.array_equal(compact.codes_of(ids, 1), pack_codes(signs[:, 0]))
    full = create_index("faiss", 64, 3, mode="all")
    full.add(ids, signs)
    pc, pa = tmp_path / "c.idx", tmp_path / "a.idx"
    compact.save(pc)
    full.save(pa)
    with np.load(pc) as z:
        assert z["codes"].shape == (1, 40, 8) and z["filter"].shape == (64, 64)     # (foci kept, n, K/8)
    with np.load(pa) as z:
        assert z["codes"].shape == (3, 40, 8) and "filter" not in z.files
    back = load_index(pc)
    assert back.mode == "compact"
    for focus in (1, 2, 3):
        assert np.array_equal(back.codes_of(ids, focus), full.codes_of(ids, focus))
    assert compact.storage()["storage_bits"] == 40 * 64 + 64 * 64
    assert full.storage()["storage_bits"] == 40 * 3 * 64


def test_compact_needs_a_filter():
    with pytest.raises(ValueError, match="filter"):
        create_index("numpy", 32, 2, mode="compact")
    with pytest.raises(ValueError, match="unknown storage mode"):
        create_index("numpy", 32, 2, mode="tiny")
    create_index("numpy", 32, 1, mode="compact")                # depth 1: nothing to derive


def test_normalise_sign_and_the_chain():
    x = np.array([[3.0, 1.0, 2.0, 2.0]])                        # mean 2: sign(0) = +1
    assert normalise_sign(x).tolist() == [[1, -1, 1, 1]]
    assert normalise_sign(np.full((1, 4), 5.0)).tolist() == [[1, 1, 1, 1]]  # sigma = 0
    # Eq. 16 chains the real-valued b', not the binarised one
    f = np.array([[1.0, 0.0], [2.0, 1.0]], np.float32)
    b = np.array([[1, -1]], np.int8)
    out = derive_signs(b, f, 3)
    b1 = b @ f.T.astype(np.float64)                             # [1, 1]  -> sigma 0 -> [+1, +1]
    b0 = b1 @ f.T.astype(np.float64)                            # [1, 3]  -> [-1, +1]
    assert out[0, 2].tolist() == [1, -1]
    assert out[0, 1].tolist() == normalise_sign(b1)[0].tolist() == [1, 1]
    assert out[0, 0].tolist() == normalise_sign(b0)[0].tolist() == [-1, 1]


def test_bit_accounting():
    m, k, y = 1000, 64, 4
    assert storage_bits("all", m, k, y) == m * y * k
    assert storage_bits("compact", m, k, y) == m * k + k * k
    assert compression_ratio(m, k, y) == pytest.approx(1 / y + k / (m * y))      # Eq. 18
    assert bits_per_clip("all", k, y) == y * k
    assert bits_per_clip("compact", k, y, m) == pytest.approx(k + k * k / m)
    rep = storage_report("compact", m, k, y)
    assert rep["storage_bits_actual"] == m * k + 32 * k * k
