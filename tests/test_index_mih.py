"""Multi-index hashing (stvh.index.mih, _mih.c, mih_backend): exactly the scan's answer, in every case.

References: the brute-force numpy scan (stable sort by distance) and the C scan; hand-computed values for
the table plan, the bit assignment, the key tables and the masks.
"""

import numpy as np
import pytest

from stvh.index import create_index
from stvh.index import mih as M
from stvh.index.kernel import kernel_topk
from stvh.index.numpy_backend import brute_force_topk

pytestmark = pytest.mark.skipif(not M.AVAILABLE, reason="stvh's C extensions are not built")


def clustered(n, bits, p, centres=20, seed=0):
    r = np.random.default_rng(seed)
    c = r.integers(0, 2, (centres, bits)).astype(bool)
    return np.packbits(c[r.integers(0, centres, n)] ^ (r.random((n, bits)) < p), axis=1)


def trained_like(n, bits, seed=0):
    """Per-class codes with per-bit flip rates as a trained model's: most bits nearly constant, a few loose."""
    r = np.random.default_rng(seed)
    modes = r.integers(0, 2, (6, bits)).astype(bool)
    rates = np.where(r.random((6, bits)) < 0.8, 0.01, 0.3)
    cls = r.integers(0, 6, n)
    return np.packbits(modes[cls] ^ (r.random((n, bits)) < rates[cls]), axis=1)


def reference(db, q, k, bits):
    return brute_force_topk(db, q, min(k, len(db)), bits)


KINDS = {
    "uniform": lambda n, bits, s: np.random.default_rng(s).integers(0, 256, (n, bits // 8), dtype=np.uint8),
    "clustered05": lambda n, bits, s: clustered(n, bits, 0.05, seed=s),
    "clustered15": lambda n, bits, s: clustered(n, bits, 0.15, seed=s),
    "trained": lambda n, bits, s: trained_like(n, bits, seed=s),
    "duplicates": lambda n, bits, s: clustered(n, bits, 0.0, centres=5, seed=s),
}


@pytest.mark.parametrize("bits", [64, 128])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tables_return_exactly_the_scan(bits, kind):
    db = KINDS[kind](3000, bits, 1)
    q = np.concatenate([db[:7], KINDS[kind](9, bits, 2)])      # stored rows (self at 0) and fresh ones
    t = M.MIHTables.build(db, bits)
    for k in (1, 3, 50, 3000, 5000):
        want = reference(db, q, k, bits)
        for budget in (None, 10 ** 12, 1):                     # default, never falls back, always falls back
            pos, dist, stats = t.search(db, q, k, budget=budget)
            assert np.array_equal(pos, want[0]) and np.array_equal(dist, want[1]), (k, budget)
            assert pos.dtype == np.int64 and dist.dtype == np.int32
        assert stats["fallback"] == len(q)                      # budget 1 sent every query to the scan


@pytest.mark.parametrize("sizes", [[10], [12, 12], [9, 9, 9], [16] * 4, [21] * 6])
def test_any_table_count_and_partial_bit_coverage_stay_exact(sizes):
    db = trained_like(2000, 128, seed=3)
    q = trained_like(12, 128, seed=4)
    t = M.MIHTables.build(db, 128, sizes=sizes)                 # 10 to 126 of the 128 bits in the tables
    assert list(t.sizes) == sizes
    pos, dist, _ = t.search(db, q, 40, budget=10 ** 12)
    want = reference(db, q, 40, 128)
    assert np.array_equal(pos, want[0]) and np.array_equal(dist, want[1])


def test_ties_come_in_position_order_across_buckets():
    # 600 copies of one code and 600 of a code one bit away: the k-th distance is shared by hundreds of rows
    a = np.zeros(8, np.uint8)
    b = a.copy()
    b[7] = 1
    db = np.stack([a, b] * 600)
    t = M.MIHTables.build(db, 64)
    pos, dist, _ = t.search(db, b[None], 700, budget=10 ** 12)
    assert pos[0, :600].tolist() == list(range(1, 1200, 2))    # the 600 copies of b first, in order
    assert pos[0, 600:].tolist() == list(range(0, 200, 2)) and set(dist[0, 600:]) == {1}


def test_rows_appended_after_the_build_are_scanned_and_merged():
    db = clustered(4000, 64, 0.05, seed=5)
    t = M.MIHTables.build(db[:2500], 64)
    q = clustered(10, 64, 0.05, seed=6)
    for k in (5, 60):
        pos, dist, _ = t.search(db, q, k, budget=10 ** 12)
        want = reference(db, q, k, 64)
        assert np.array_equal(pos, want[0]) and np.array_equal(dist, want[1])
    assert t.stale(2500 + 4097) and not t.stale(2500 + 4096)


def test_threads_give_the_same_answer():
    db = clustered(5000, 128, 0.1, seed=7)
    q = clustered(37, 128, 0.1, seed=8)
    t = M.MIHTables.build(db, 128)
    one = t.search(db, q, 25, threads=1)
    two = t.search(db, q, 25, threads=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    s1, s2 = kernel_topk(db, q, 25, 1), kernel_topk(db, q, 25, 3)
    assert np.array_equal(s1[0], s2[0]) and np.array_equal(s1[1], s2[1])
    assert np.array_equal(s1[0], one[0])


def test_plan_sizes_by_hand():
    assert M.plan_sizes(1_000_000, 64) == [16, 16, 16, 16]      # log2 1M = 20 -> 4 tables of 64/4 bits
    assert M.plan_sizes(10_000_000, 64) == [22, 21, 21]         # log2 10M = 23 -> 3 tables
    assert M.plan_sizes(100_000_000, 64) == [22, 21, 21]        # 26.6 -> capped at 24 -> 3 tables
    assert M.plan_sizes(100_000_000, 128) == [24, 24, 24, 24]   # at most 4 tables: 96 of 128 bits
    assert M.plan_sizes(1_000_000, 128) == [20, 20, 20, 20]
    assert M.plan_sizes(10, 64) == [8, 8, 8, 8]                 # at least 8 bits a table
    with pytest.raises(ValueError, match="64- or 128-bit"):
        M.plan_sizes(1000, 32)


def test_assign_bits_spreads_the_variable_bits():
    # bits 0..3 vary (p = 0.5), 4..63 constant: each of 4 tables of 2 bits gets one varying bit
    r = np.random.default_rng(0)
    x = np.zeros((1000, 64), bool)
    x[:, :4] = r.random((1000, 4)) < 0.5
    sets = M.assign_bits(np.packbits(x, axis=1), 64, [2, 2, 2, 2])
    assert sorted(int(s[s < 4][0]) for s in sets) == [0, 1, 2, 3]
    assert all(len(s) == 2 and (s < 4).sum() == 1 for s in sets)


def test_key_luts_and_masks_against_direct_bit_reading():
    r = np.random.default_rng(1)
    codes = r.integers(0, 256, (50, 16), dtype=np.uint8)
    sets = [np.array([0, 9, 127]), np.array([5, 64, 100, 101])]
    lut = M.key_luts(sets, 16)
    bits = np.unpackbits(codes, axis=1)
    for j, s in enumerate(sets):
        direct = sum(bits[:, i].astype(np.uint32) << t for t, i in enumerate(s))
        via = np.bitwise_or.reduce(lut[j][np.arange(16), codes], axis=1)
        assert np.array_equal(via, direct)
    masks = M.bit_masks(sets, 128)
    x = codes[0]
    for j, s in enumerate(sets):      # popcount of x & mask = number of set bits of x among the set's bits
        words = np.frombuffer(x.tobytes(), np.uint64)
        got = sum(bin(int(w & m)).count("1") for w, m in zip(words, masks[j]))
        assert got == int(bits[0, s].sum())


def test_query_keys_match_the_build_keys():
    db = clustered(500, 64, 0.1, seed=9)
    t = M.MIHTables.build(db, 64)
    k = t.query_keys(db)
    for j in range(len(t.sizes)):       # every row sits in the bucket of its own key
        off, pos = t.offsets[j], t.positions[j]
        for i in (0, 17, 499):
            assert i in pos[off[k[i, j]]:off[k[i, j] + 1]]


def test_c_functions_refuse_bad_buffers():
    from stvh.index import _mih
    db = clustered(100, 64, 0.1)
    t = M.MIHTables.build(db, 64)
    q = db[:2]
    with pytest.raises(ValueError, match="8 or 16 bytes"):
        _mih.search(db, 4, t.sizes, t._masks, tuple(t.offsets), tuple(t.positions), t.query_keys(q), q, 5, 100, 1,
                    np.empty((2, 5), np.int64), np.empty((2, 5), np.int32), np.empty(2, np.int64))
    with pytest.raises(ValueError, match="exceeds"):
        _mih.search(db, 8, t.sizes, t._masks, tuple(t.offsets), tuple(t.positions), t.query_keys(q), q, 101, 100, 1,
                    np.empty((2, 101), np.int64), np.empty((2, 101), np.int32), np.empty(2, np.int64))
    with pytest.raises(ValueError, match="a key is >= 2"):
        _mih.build(np.array([0, 300], np.uint32), 8, np.empty(257, np.uint32), np.empty(2, np.uint32))
    with pytest.raises(ValueError, match="wrong size"):
        _mih.search(db, 8, t.sizes, t._masks, tuple(t.offsets[:-1]) + (t.offsets[0][:5],), tuple(t.positions),
                    t.query_keys(q), q, 5, 100, 1, np.empty((2, 5), np.int64), np.empty((2, 5), np.int32),
                    np.empty(2, np.int64))
    with pytest.raises(ValueError, match="64- or 128-bit|not 64-bit"):
        M.MIHTables.build(db[:, :4], 64)


def test_build_is_a_stable_counting_sort():
    from stvh.index import _mih
    keys = np.array([3, 1, 3, 0, 1, 3], np.uint32)
    off, pos = np.empty(5, np.uint32), np.empty(6, np.uint32)
    _mih.build(keys, 2, off, pos)
    assert off.tolist() == [0, 1, 3, 3, 6]
    assert pos.tolist() == [3, 1, 4, 0, 2, 5]


@pytest.mark.parametrize("bits", [64, 128])
def test_mih_backend_with_removals_appends_and_saved_tables(bits, tmp_path):
    db = trained_like(4000, bits, seed=11)
    ids = [f"v{i // 100}/{i % 100:03d}" for i in range(len(db))]
    ref = create_index("numpy", bits, 1)
    idx = create_index("mih", bits, 1)
    for x in (ref, idx):
        x.add(ids, db)
    q = trained_like(15, bits, seed=12)

    def same(k):
        a, b = ref.search(q, k), idx.search(q, k)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])

    same(10)
    same(4000)
    for x in (ref, idx):
        x.remove(ids[::3])
    same(30)
    for x in (ref, idx):
        x.add([f"new/{i}" for i in range(5000)], trained_like(5000, bits, seed=13))
    same(30)                                                    # past 1/8 appended: tables rebuilt
    extra = idx._extra_arrays()
    assert bool(extra["mih0_use"]) and int(extra["mih0_n"]) == len(idx)
    clone = create_index("mih", bits, 1)
    clone.add(idx.ids, idx.depth_codes(0))
    clone._adopt_extra(extra)
    assert clone.mih_tables(0).n == len(idx)
    a, b = clone.search(q, 30), ref.search(q, 30)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_auto_backend_measures_and_falls_back_to_the_scan(monkeypatch):
    from stvh.index import mih_backend
    monkeypatch.setattr(mih_backend, "MIN_ROWS", 1000)
    tight = create_index("faiss", 64, 1)
    tight.add([f"a/{i}" for i in range(20000)], clustered(20000, 64, 0.02, centres=50, seed=1))
    loose = create_index("faiss", 64, 1)
    loose.add([f"b/{i}" for i in range(20000)], KINDS["uniform"](20000, 64, 2))
    assert loose.engine() == "faiss" and loose.mih_tables(0) is None   # uniform codes: the scan
    ref = create_index("numpy", 64, 1)
    ref.add(tight.ids, tight.depth_codes(0))
    q = clustered(10, 64, 0.02, centres=50, seed=1)
    a, b = tight.search(q, 20), ref.search(q, 20)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="threads"):
        tight.threads = 0
    tight.threads = 2
    assert tight.threads == 2
    a2 = tight.search(q, 20)
    assert np.array_equal(a[0], a2[0])


def test_mih_backend_refuses_short_codes():
    with pytest.raises(ValueError, match="64- or 128-bit"):
        create_index("mih", 32, 1)


@pytest.mark.parametrize("backend", ["mih", "faiss"])
def test_tables_saved_with_the_index_are_mapped_back_not_rebuilt(backend, tmp_path, monkeypatch):
    from stvh.index import load_index, mih_backend
    monkeypatch.setattr(mih_backend, "MIN_ROWS", 1000)
    monkeypatch.setattr(mih_backend, "KEEP_IF", 1e9)           # keep the tables whatever the timing says
    monkeypatch.setattr(M, "FALLBACK_SHARE", 100.0)             # and a budget no sample query runs out of
    db = trained_like(6000, 64, seed=21)
    idx = create_index(backend, 64, 2)
    idx.add([f"m/{i}" for i in range(len(db))], np.stack([db, db[::-1]], axis=1))
    q = trained_like(9, 64, seed=22)
    before = [idx.search(q, 25, focus=f) for f in (1, 2)]      # builds the tables of both foci
    idx.save(tmp_path / "i.npz")
    built = []
    monkeypatch.setattr(M.MIHTables, "build", classmethod(lambda cls, *a, **k: built.append(1)))
    again = load_index(tmp_path / "i.npz")
    after = [again.search(q, 25, focus=f) for f in (1, 2)]
    assert built == []                                          # both foci answered from the saved tables
    assert all(isinstance(again._mih_cache()[d][0], M.MIHTables) for d in (0, 1))
    for (a, da), (b, db_) in zip(before, after):
        assert np.array_equal(a, b) and np.array_equal(da, db_)
    ref = create_index("numpy", 64, 2)
    ref.add(again.ids, np.stack([db, db[::-1]], axis=1))
    r = ref.search(q, 25, focus=2)
    assert np.array_equal(r[0], after[1][0]) and np.array_equal(r[1], after[1][1])


def test_damaged_saved_tables_are_never_read_through_and_are_rebuilt(caplog):
    db = trained_like(3000, 64, seed=31)
    ids = [f"d/{i}" for i in range(len(db))]
    idx = create_index("mih", 64, 1)
    idx.add(ids, db)
    q = trained_like(6, 64, seed=32)
    want = idx.search(q, 20)
    extra = {k: np.array(v) for k, v in idx._extra_arrays().items()}
    extra["mih0_pos0"][:] = len(db) + 7                         # every position points past the rows
    extra["mih0_off1"][1:-1] = len(db) + 100                     # every bucket of table 1 ends past n
    for damaged in ("mih0_pos0", "mih0_off1"):
        clone = create_index("mih", 64, 1)
        clone.add(ids, db)
        good = {k: np.array(v) for k, v in idx._extra_arrays().items()}
        good[damaged] = extra[damaged]
        clone._adopt_extra(good)
        caplog.clear()
        with caplog.at_level("WARNING"):
            got = clone.search(q, 20)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert "damaged index file" in caplog.text
    t = M.MIHTables.build(db, 64)
    t.positions[0][:] = len(db) + 7
    with pytest.raises(ValueError, match="rebuild the index"):
        t.search(db, q, 20, budget=10 ** 12)
