"""Exact Hamming top-k: every backend equals brute force (ids, distances, ties by insertion order)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stvh.index.short_codes as short_codes
from stvh.index import DuplicateIdError, UnknownIdError, create_index
from stvh.index.faiss_backend import SHORT_MIN_ROWS, FaissIndex, faiss_ties_in_order
from stvh.index.short_codes import ShortCodeTable

BITS = (16, 32, 64, 128)
BACKENDS = ("numpy", "faiss", "faiss-flat", "short")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(db: np.ndarray, queries: np.ndarray, k: int):
    """Independent brute force: full sort by (distance, position)."""
    n = db.shape[0]
    kk = min(k, n)
    pos = np.empty((len(queries), kk), np.int64)
    dis = np.empty((len(queries), kk), np.int64)
    for i, q in enumerate(queries):
        d = np.unpackbits(db ^ q, axis=1).sum(axis=1)
        order = np.lexsort((np.arange(n), d))[:kk]
        pos[i], dis[i] = order, d[order]
    return pos, dis


def backends_for(bits):
    return [b for b in BACKENDS if b != "short" or bits <= 32]


@st.composite
def tie_heavy(draw, bits=None, min_rows=0):
    """Codes drawn from a small pool (many exact duplicates and equal distances)."""
    bits = bits or draw(st.sampled_from(BITS))
    nb = bits // 8
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pool_size = draw(st.integers(1, 6))
    # a pool of codes close to each other: a base code with a few flipped bits
    base = rng.integers(0, 256, nb, dtype=np.uint8)
    flips = rng.random((pool_size, bits)) < draw(st.sampled_from([0.0, 0.05, 0.3, 0.5]))
    pool = base ^ np.packbits(flips, axis=1)
    n = draw(st.integers(min_rows, 150))
    db = pool[rng.integers(0, pool_size, n)]
    nq = draw(st.integers(1, 4))
    queries = np.concatenate([pool[rng.integers(0, pool_size, nq)],
                              rng.integers(0, 256, (1, nb), dtype=np.uint8)])
    k = draw(st.integers(1, n + 5))
    return bits, db, queries, k


def ids_for(n, start=0):
    return [f"v{i // 10}/{i}" for i in range(start, start + n)]


@SETTINGS
@given(tie_heavy())
def test_every_backend_equals_brute_force(case):
    bits, db, queries, k = case
    ids = np.array(ids_for(len(db)), object)
    ref_pos, ref_dis = reference(db, queries, k)
    for backend in backends_for(bits):
        index = create_index(backend, bits, 1)
        index.add(ids, db)
        got_ids, got_dis = index.search(queries, k)
        assert got_ids.shape == ref_pos.shape == got_dis.shape, backend
        assert np.array_equal(got_dis, ref_dis), backend
        assert np.array_equal(got_ids, ids[ref_pos]), backend


@SETTINGS
@given(st.sampled_from([16, 32]).flatmap(lambda b: tie_heavy(bits=b, min_rows=1)), st.sampled_from([0.0, 1.0]))
def test_short_code_table_paths(case, fallback):
    """The bucket-table engine itself, with the full-scan fallback forced on (0) or off (1).

    Only 16- and 32-bit codes and non-empty tables are generated (the engine's domain): every example is checked.
    """
    bits, db, queries, k = case
    assert bits <= 32 and len(db) >= 1
    old = short_codes.FALLBACK_FRACTION
    short_codes.FALLBACK_FRACTION = fallback
    try:
        table = ShortCodeTable(db, bits)
        kk = min(k, len(db))
        pos, dis = table.search(queries, kk)
        ref_pos, ref_dis = reference(db, queries, kk)
        assert np.array_equal(pos, ref_pos) and np.array_equal(dis, ref_dis)
    finally:
        short_codes.FALLBACK_FRACTION = old


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("kind", ["random", "clustered", "sparse"])
def test_short_code_table_large(bits, kind):
    """Bigger tables (dense buckets, multi-radius probes, the hint) against brute force."""
    rng = np.random.default_rng(bits)
    n = 30000
    if kind == "random":
        db = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    elif kind == "clustered":
        centres = rng.integers(0, 2, (8, bits), dtype=np.uint8)
        db = np.packbits(centres[rng.integers(0, 8, n)] ^ (rng.random((n, bits)) < 0.08), axis=1)
    else:  # few rows far apart from the queries: wide probes and the fallback
        n = 500
        db = np.packbits(np.zeros((n, bits), np.uint8) | (rng.random((n, bits)) < 0.05), axis=1)
    queries = np.concatenate([db[rng.integers(0, n, 6)], rng.integers(0, 256, (6, bits // 8), dtype=np.uint8)])
    table = ShortCodeTable(db, bits)
    for k in (1, 50, 300):
        pos, dis = table.search(queries, k)
        ref_pos, ref_dis = reference(db, queries, k)
        assert np.array_equal(dis, ref_dis), k
        assert np.array_equal(pos, ref_pos), k


@SETTINGS
@given(st.sampled_from(BITS), st.integers(0, 2**32 - 1), st.data())
def test_add_remove_then_search(bits, seed, data):
    rng = np.random.default_rng(seed)
    nb = bits // 8
    pool = rng.integers(0, 256, (4, nb), dtype=np.uint8)
    rows_ids: list[str] = []
    rows_codes: list[np.ndarray] = []
    indexes = [create_index(b, bits, 1) for b in backends_for(bits)]
    counter = 0
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        n = data.draw(st.integers(0, 40), label="add")
        new_ids = ids_for(n, counter)
        counter += n
        codes = pool[rng.integers(0, 4, n)]
        for ix in indexes:
            ix.add(new_ids, codes)
        rows_ids += new_ids
        rows_codes += list(codes)
        if rows_ids:
            gone = data.draw(st.lists(st.sampled_from(rows_ids), unique=True, max_size=10), label="remove")
            for ix in indexes:
                ix.remove(gone)
            keep = [i for i, c in enumerate(rows_ids) if c not in set(gone)]
            rows_ids = [rows_ids[i] for i in keep]
            rows_codes = [rows_codes[i] for i in keep]
    db = np.array(rows_codes, np.uint8).reshape(-1, nb)
    queries = np.concatenate([pool, rng.integers(0, 256, (1, nb), dtype=np.uint8)])
    k = data.draw(st.integers(1, 50), label="k")
    ref_pos, ref_dis = reference(db, queries, k)
    for ix in indexes:
        assert len(ix) == len(rows_ids)
        got_ids, got_dis = ix.search(queries, k)
        assert np.array_equal(got_dis, ref_dis), ix.backend
        assert np.array_equal(got_ids, np.array(rows_ids, object)[ref_pos].reshape(ref_pos.shape)), ix.backend


@pytest.mark.parametrize("bits", [16, 32])
def test_auto_switches_engine_and_stays_exact(bits, monkeypatch):
    assert SHORT_MIN_ROWS[bits] >= 1000 and 64 not in SHORT_MIN_ROWS
    monkeypatch.setitem(SHORT_MIN_ROWS, bits, 3000)             # the rule, at a test-sized threshold
    rng = np.random.default_rng(0)
    n = 3000
    db = rng.integers(0, 4, (n, bits // 8), dtype=np.uint8)      # heavy ties
    index = FaissIndex(bits, 1)
    index.add(ids_for(n - 1), db[:-1])
    assert index.engine() == "faiss"
    q = db[:3]
    before = index.search_positions(q, 40)
    index.add(ids_for(1, n - 1), db[-1:])
    assert index.engine() == "short"
    after = index.search_positions(q, 40)
    ref = reference(db, q, 40)
    assert np.array_equal(after[0], ref[0]) and np.array_equal(after[1], ref[1])
    ref0 = reference(db[:-1], q, 40)
    assert np.array_equal(before[0], ref0[0]) and np.array_equal(before[1], ref0[1])
    assert FaissIndex(64, 1).engine(10**7) == "faiss"


def test_faiss_ties_come_in_insertion_order():
    assert faiss_ties_in_order()


def test_multi_focus_search_uses_the_chosen_depth():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (50, 3, 4), dtype=np.uint8)
    for backend in backends_for(32):
        index = create_index(backend, 32, 3)
        index.add(ids_for(50), codes)
        for focus in (1, 2, 3):
            ids, dis = index.search(codes[7, focus - 1], 5, focus=focus)
            ref_pos, ref_dis = reference(codes[:, focus - 1], codes[7:8, focus - 1], 5)
            assert ids[0].tolist() == [ids_for(50)[p] for p in ref_pos[0]]
            assert dis[0].tolist() == ref_dis[0].tolist()
        # default focus = deepest; (q, depth, K/8) queries are sliced at the focus
        assert np.array_equal(index.search(codes[:2], 4)[0], index.search(codes[:2, 2], 4, focus=3)[0])
        assert np.array_equal(index.search(codes[:2], 4, focus=1)[0], index.search(codes[:2, 0], 4, focus=1)[0])


def test_unpacked_codes_and_queries_are_accepted():
    rng = np.random.default_rng(2)
    signs = rng.choice(np.array([-1, 1], np.int8), (20, 2, 16))
    a = create_index("numpy", 16, 2)
    a.add(ids_for(20), signs)
    b = create_index("numpy", 16, 2)
    b.add(ids_for(20), np.packbits(signs > 0, axis=-1))
    for focus in (1, 2):
        r1 = a.search(signs[:3, focus - 1], 6, focus=focus)
        r2 = b.search(np.packbits(signs[:3, focus - 1] > 0, axis=-1), 6, focus=focus)
        assert np.array_equal(r1[0], r2[0]) and np.array_equal(r1[1], r2[1])


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_are_clear(backend):
    bits = 32
    index = create_index(backend, bits, 2)
    codes = np.zeros((3, 2, 4), np.uint8)
    index.add(["a/1", "a/2", "a/3"], codes)
    with pytest.raises(ValueError, match="wrong code length"):
        index.add(["b/1"], np.zeros((1, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        index.add(["b/1"], np.zeros((1, 4), np.uint8))          # depth 2 needs every focus
    with pytest.raises(ValueError, match="must be uint8"):
        index.add(["b/1"], np.zeros((1, 2, 4), np.int16))
    with pytest.raises(ValueError, match="-1 and \\+1"):
        index.add(["b/1"], np.zeros((1, 2, 32), np.int8))
    with pytest.raises(DuplicateIdError, match="already in the index"):
        index.add(["a/2"], codes[:1])
    with pytest.raises(DuplicateIdError, match="in this add"):
        index.add(["b/1", "b/1"], codes[:2])
    with pytest.raises(UnknownIdError, match="b/9"):
        index.remove(["a/1", "b/9"])
    assert len(index) == 3                                       # failed calls change nothing
    with pytest.raises(ValueError, match="unknown focus 3"):
        index.search(codes[0, 0], 2, focus=3)
    with pytest.raises(ValueError, match="unknown focus 0"):
        index.search(codes[0, 0], 2, focus=0)
    for bad_k in (0, -1):
        with pytest.raises(ValueError, match=f"^k must be >= 1, got {bad_k}$"):
            index.search(codes[0, 0], bad_k)
    for bad_k in (2.5, True):
        with pytest.raises(ValueError, match=f"^k must be an integer >= 1, got {bad_k!r}$"):
            index.search(codes[0, 0], bad_k)
    with pytest.raises(ValueError, match="wrong code length"):
        index.search(np.zeros(8, np.uint8), 2)
    with pytest.raises(ValueError, match="code length must be one of"):
        create_index(backend if backend != "short" else "numpy", 24, 1)
    # k larger than the index: every row
    ids, dis = index.search(codes[0, 0], 10)
    assert ids.shape == (1, 3) and ids[0].tolist() == ["a/1", "a/2", "a/3"]


def test_short_backend_rejects_long_codes():
    with pytest.raises(ValueError, match="16- or 32-bit"):
        create_index("short", 64, 1)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown index backend"):
        create_index("annoy", 64, 1)


def test_empty_index_search():
    index = create_index("faiss", 64, 1)
    ids, dis = index.search(np.zeros((2, 8), np.uint8), 5)
    assert ids.shape == (2, 0) and dis.shape == (2, 0)
