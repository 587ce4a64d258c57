"""Packing, unpacking and the numpy Hamming engine at every code length, against references written here.

References count bits with Python's ``bin(x).count("1")`` and sort with ``sorted(key=(distance, position))``;
databases are tie-heavy and, for the top-k, large enough (> 2 x 8192 rows) to take the sampled-threshold path.
"""

from __future__ import annotations

import numpy as np
import pytest

from stvh.index import CodeSet, create_index, pack_codes, unpack_codes
from stvh.index import numpy_backend as nb
from stvh.index.codes import check_bits

BITS = (16, 32, 64, 128)


def ref_pack(signs: np.ndarray) -> list[int]:
    """Bytes of one code: entry 8 i + j is bit 7 - j of byte i (most significant first); +1 -> 1."""
    return [sum(1 << (7 - j) for j in range(8) if signs[8 * i + j] > 0) for i in range(len(signs) // 8)]


def ref_distance(a: np.ndarray, b: np.ndarray) -> int:
    return sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b))


@pytest.mark.parametrize("bits", BITS)
def test_pack_and_unpack_every_length(bits):
    rng = np.random.default_rng(bits)
    signs = rng.choice(np.array([-1, 1], np.int8), (3, 2, bits))
    packed = pack_codes(signs)
    assert packed.shape == (3, 2, bits // 8)
    for i in range(3):
        for d in range(2):
            assert packed[i, d].tolist() == ref_pack(signs[i, d])
    back = unpack_codes(packed, bits)
    assert back.dtype == np.int8 and np.array_equal(back, signs)
    reals = signs * rng.uniform(0.1, 2.0, signs.shape)
    assert np.array_equal(pack_codes(reals, strict=False), packed)
    assert np.array_equal(pack_codes(signs > 0), packed)


def test_pack_asymmetric_pattern_by_hand():
    s = np.array([1, -1, -1, -1, -1, -1, 1, 1] + [-1, 1, -1, 1, -1, -1, -1, -1])
    assert pack_codes(s).tolist() == [0b10000011, 0b01010000]
    assert unpack_codes(np.array([0b10000011, 0b01010000], np.uint8), 16).tolist() == s.tolist()
    assert pack_codes(np.array([0.0] * 8), strict=False).tolist() == [0]     # 0 is not > 0: bit 0
    with pytest.raises(ValueError, match=r"found 0\.5"):
        pack_codes(np.array([1, -1, 1, 0.5, 1, 1, 1, 1]))
    with pytest.raises(ValueError, match="bool"):
        pack_codes(np.array(["a"] * 8))
    with pytest.raises(ValueError, match="at least one dimension"):
        pack_codes(np.array(1))


def test_check_bits():
    assert [check_bits(b) for b in BITS] == list(BITS)
    for bad in (8, 24, 256, 16.5, "x", None):
        with pytest.raises(ValueError, match="code length must be one of"):
            check_bits(bad)


def test_codeset_signs_by_focus():
    signs = np.stack([np.full((2, 16), v, np.int8) for v in (-1, 1, -1)], axis=1)   # (M=2, Y=3, K=16)
    signs[1, 2, :3] = 1
    cs = CodeSet.from_signs(["a/1", "a/2"], signs)
    assert cs.depth == 3 and len(cs) == 2 and cs.bits == 16
    assert np.array_equal(cs.signs(), signs)
    assert np.array_equal(cs.signs(3), signs[:, 2]) and np.array_equal(cs.signs(2), signs[:, 1])
    assert cs.codes[1, 2].tolist() == [0b11100000, 0]


@pytest.mark.parametrize("bits", BITS)
def test_popcount_words_and_distances(bits):
    rng = np.random.default_rng(bits + 1)
    db = rng.integers(0, 256, (50, bits // 8), dtype=np.uint8)
    q = rng.integers(0, 256, bits // 8, dtype=np.uint8)
    words = nb.as_words(db)
    assert words.shape == ((50,) if bits <= 64 else (50, 2))
    got = nb.hamming_to_all(words, nb.as_words(q[None])[0])
    assert got.tolist() == [ref_distance(row, q) for row in db]
    vals = rng.integers(0, 2 ** 63, 20, dtype=np.uint64)
    assert nb.popcount(vals).tolist() == [bin(int(v)).count("1") for v in vals]
    with pytest.raises(ValueError, match="unsupported code size 3 bytes"):
        nb.as_words(np.zeros((2, 3), np.uint8))


def ref_topk(dist: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(dist)), key=lambda j: (int(dist[j]), j))[:k]


@pytest.mark.parametrize("n", [5, 40, 20000])
def test_counting_topk_ties_in_position_order(n):
    rng = np.random.default_rng(n)
    bits = 16
    dist = rng.integers(3, 9, n).astype(np.uint8)      # 6 distinct values: heavy ties, lower bound 3
    for k in (1, 4, min(n, 37), n):
        pos, d = nb.counting_topk(dist, k, bits)
        assert pos.tolist() == ref_topk(dist, k), k
        assert d.tolist() == dist[pos].tolist()
    pos, _ = nb.counting_topk(dist, 7, bits, lo=3)
    assert pos.tolist() == ref_topk(dist, 7)
    pos, d = nb.counting_topk(dist, 0, bits)
    assert pos.shape == (0,) and d.shape == (0,) and pos.dtype == np.int64


@pytest.mark.parametrize("bits", BITS)
def test_numpy_index_every_length(bits):
    rng = np.random.default_rng(bits + 2)
    pool = rng.integers(0, 256, (6, bits // 8), dtype=np.uint8)
    db = pool[rng.integers(0, 6, 300)] ^ (rng.random((300, bits // 8)) < 0.03).astype(np.uint8)
    queries = np.concatenate([pool[:3], rng.integers(0, 256, (1, bits // 8), dtype=np.uint8)])
    pos, dis = nb.brute_force_topk(db, queries, 25, bits)
    for i, q in enumerate(queries):
        dist = np.array([ref_distance(row, q) for row in db])
        assert pos[i].tolist() == ref_topk(dist, 25)
        assert dis[i].tolist() == sorted(dist.tolist())[:25]
    index = create_index("numpy", bits, 1)
    ids = [f"v/{i}" for i in range(300)]
    index.add(ids, db)
    got_ids, got_dis = index.search(queries, 25)
    assert got_ids.tolist() == [[ids[p] for p in row] for row in pos] and np.array_equal(got_dis, dis)


def test_codeset_one_focus_and_focus_checks():
    signs = np.array([[1, -1] * 8, [-1] * 16], np.int8)                # (M=2, K=16): one focus
    cs = CodeSet.from_signs(["a/1", "a/2"], signs)
    assert cs.depth == 1 and cs.codes.shape == (2, 1, 2)
    assert np.array_equal(cs.signs(1), signs)
    for bad in (True, 0, 2, 1.0, "1"):
        with pytest.raises(ValueError, match=r"^unknown focus .*: this code set has foci 1\.\.1$"):
            cs.signs(bad)
    with pytest.raises(ValueError, match="code length 0 is not a positive multiple of 8"):
        pack_codes(np.ones((2, 0)))


def test_popcount_lookup_table_path_and_dtypes(monkeypatch):
    vals = np.array([0, 1, 0xFF, 0xF0F0, 0xFFFF_FFFF, 2 ** 63 + 5], np.uint64)
    expected = [bin(int(v)).count("1") for v in vals]
    monkeypatch.setattr(nb, "_HAS_BITWISE_COUNT", False)                  # numpy < 2: the 256-entry table
    got = nb.popcount(vals[::-1][::-1])                                   # a non-contiguous view is fine
    assert got.dtype == np.uint8 and got.tolist() == expected
    assert nb.popcount(np.array([0xABCD], np.uint16)).tolist() == [bin(0xABCD).count("1")]
    # bytes given as wider integers are taken as bytes
    assert np.array_equal(nb.as_words(np.array([[1, 2], [3, 4]], np.int64)),
                          nb.as_words(np.array([[1, 2], [3, 4]], np.uint8)))
    pos, dis = nb.brute_force_topk(np.array([[1, 2], [3, 4]], np.uint8), np.array([[1, 2]], np.uint8), 2, 16)
    assert pos.dtype == np.int64 and dis.dtype == np.int32 and dis.tolist() == [[0, 3]]


def test_counting_topk_when_the_sampled_guess_is_too_low():
    """Every 4th row (the sample) is at distance 0, the rest at 8 or 16: the k-th distance is above the
    sampled guess, so the threshold is raised step by step until k rows are selected."""
    n, bits, k = 40000, 16, 15000
    dist = np.full(n, 8, np.uint8)
    dist[::4] = 0
    dist[1::8] = 16
    pos, d = nb.counting_topk(dist, k, bits)
    assert pos.tolist() == ref_topk(dist, k)
    assert d.tolist() == [0] * 10000 + [8] * 5000
    pos, d = nb.counting_topk(dist, n - 3, bits)                     # reaches the last distance, 16
    assert pos.tolist() == ref_topk(dist, n - 3) and int(d[-1]) == 16
