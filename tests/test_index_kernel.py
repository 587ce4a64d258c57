"""stvh's C kernel (stvh.index._hamming): exact top-k, ties by position, input checks, fallback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stvh.index import create_index, kernel
from stvh.index.faiss_backend import FaissIndex

_hamming = kernel._hamming
# The extension is part of stvh (built by pip install): when it is missing these tests fail, they do not skip.
# The fallback tests at the end simulate its absence.

BITS = (16, 32, 64, 128)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIMD = ["scalar"] + (["avx2"] if kernel.AVAILABLE and _hamming.simd(True) == "avx2" else [])


_BITS_OF_BYTE = np.array([bin(v).count("1") for v in range(256)], np.int64)


def reference(db: np.ndarray, queries: np.ndarray, k: int):
    """Independent brute force: per-byte bit counts and a full sort by (distance, position)."""
    n = db.shape[0]
    kk = min(k, n)
    pos = np.empty((len(queries), kk), np.int64)
    dis = np.empty((len(queries), kk), np.int32)
    for i, q in enumerate(queries):
        d = _BITS_OF_BYTE[db ^ q].sum(axis=1)
        order = np.lexsort((np.arange(n), d))[:kk]
        pos[i], dis[i] = order, d[order]
    return pos, dis


@pytest.fixture(params=SIMD)
def simd(request):
    """Run a test with the scalar scan and (where the CPU has it) the AVX2 scan."""
    before = _hamming.simd()
    assert _hamming.simd(request.param == "avx2") == request.param
    yield request.param
    _hamming.simd(before == "avx2")


def test_the_extension_is_built():
    assert kernel.AVAILABLE, "stvh.index._hamming is not built: reinstall stvh (pip install -e .) with a C compiler"
    assert kernel.simd() in ("avx2", "scalar")


def knn(db, queries, k):
    return kernel.kernel_topk(db, queries, k)


def check(db, queries, k):
    pos, dis = knn(db, queries, k)
    ref_pos, ref_dis = reference(db, queries, k)
    assert pos.dtype == np.int64 and dis.dtype == np.int32
    assert pos.shape == dis.shape == ref_pos.shape == (len(queries), min(k, len(db)))
    assert np.array_equal(dis, ref_dis)
    assert np.array_equal(pos, ref_pos)


@st.composite
def pools(draw):
    """Codes drawn from a small pool of nearby codes: many duplicates and equal distances."""
    bits = draw(st.sampled_from(BITS))
    nb = bits // 8
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pool_size = draw(st.integers(1, 8))
    base = rng.integers(0, 256, nb, dtype=np.uint8)
    flips = rng.random((pool_size, bits)) < draw(st.sampled_from([0.0, 0.03, 0.2, 0.5]))
    pool = base ^ np.packbits(flips, axis=1)
    n = draw(st.integers(1, 400))
    db = pool[rng.integers(0, pool_size, n)]
    nq = draw(st.integers(1, 5))
    queries = np.concatenate([pool[rng.integers(0, pool_size, nq)],
                              rng.integers(0, 256, (1, nb), dtype=np.uint8)])
    k = draw(st.one_of(st.sampled_from([1, 5, n, n + 3]), st.integers(1, n + 3)))
    return db, queries, k


@SETTINGS
@given(pools(), st.sampled_from(SIMD))
def test_kernel_equals_brute_force(case, mode):
    db, queries, k = case
    before = _hamming.simd()
    try:
        _hamming.simd(mode == "avx2")
        check(db, queries, k)
    finally:
        _hamming.simd(before == "avx2")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("kind", ["random", "pool", "clustered"])
def test_kernel_large(bits, kind, simd):
    """Several row blocks, query chunks, buffer compactions and a ragged vector tail."""
    rng = np.random.default_rng(bits)
    nb = bits // 8
    n = 70_003                                    # > one 64 KiB block for every K; not a multiple of 32
    if kind == "random":
        db = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    elif kind == "pool":
        db = rng.integers(0, 256, (7, nb), dtype=np.uint8)[rng.integers(0, 7, n)]
    else:
        centres = rng.integers(0, 2, (8, bits), dtype=np.uint8)
        db = np.packbits(centres[rng.integers(0, 8, n)] ^ (rng.random((n, bits)) < 0.05), axis=1)
    # 70 queries: two chunks of the batch loop (64 queries each)
    queries = np.concatenate([db[rng.integers(0, n, 40)], rng.integers(0, 256, (30, nb), dtype=np.uint8)])
    full_pos, full_dis = reference(db, queries, 3000)
    for k in (1, 50, 3000):                       # 3000: the buffer (2k + 1024 rows) fills and is compacted
        pos, dis = knn(db, queries, k)
        ref_pos, ref_dis = full_pos[:, :k], full_dis[:, :k]
        assert np.array_equal(dis, ref_dis), k
        assert np.array_equal(pos, ref_pos), k
        one = knn(db, queries[:1], k)             # one query: no blocking
        assert np.array_equal(one[0], ref_pos[:1]) and np.array_equal(one[1], ref_dis[:1])


@pytest.mark.parametrize("bits", BITS)
def test_rows_in_descending_distance(bits, simd):
    """Worst case: every row is closer than the ones before, so the buffer fills and is compacted often."""
    rng = np.random.default_rng(bits + 1)
    nb = bits // 8
    n = 20_000
    query = np.zeros((1, nb), np.uint8)
    db = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    dist = _BITS_OF_BYTE[db].sum(axis=1)
    db = db[np.argsort(-dist, kind="stable")]                    # ties stay in a random order
    for k in (1, 10, 500, 4000):
        check(db, query, k)
        check(db, np.concatenate([query, db[:3]]), k)


def test_large_k_batch(simd):
    """k close to n in a batch: fewer queries per chunk (the buffers hold n rows each)."""
    rng = np.random.default_rng(11)
    n = 100_000
    db = rng.integers(0, 256, (8, 4), dtype=np.uint8)[rng.integers(0, 8, n)]
    queries = np.concatenate([db[:40], rng.integers(0, 256, (30, 4), dtype=np.uint8)])
    check(db, queries, 60_000)


@pytest.mark.parametrize("nbytes", [1, 3, 5, 12, 24])
def test_other_code_sizes(nbytes, simd):
    rng = np.random.default_rng(nbytes)
    pool = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)
    db = pool[rng.integers(0, 5, 3000)] ^ (rng.random((3000, nbytes)) < 0.05).astype(np.uint8)
    queries = np.concatenate([pool, rng.integers(0, 256, (2, nbytes), dtype=np.uint8)])
    for k in (1, 7, 2999, 3000, 3003):
        check(db, queries, k)


def test_k_larger_than_n_and_empty_inputs():
    db = np.array([[1, 0], [0, 0], [1, 0]], np.uint8)
    pos, dis = knn(db, np.zeros((1, 2), np.uint8), 10)          # k > n: n results, no padding
    assert pos.tolist() == [[1, 0, 2]] and dis.tolist() == [[0, 1, 1]]
    pos, dis = knn(db[:0], np.zeros((2, 2), np.uint8), 5)       # empty database
    assert pos.shape == (2, 0) and dis.shape == (2, 0)
    pos, dis = knn(db, np.zeros((0, 2), np.uint8), 5)           # no queries
    assert pos.shape == (0, 3)
    out_p, out_d = np.empty(0, np.int64), np.empty(0, np.int32)
    assert _hamming.knn(b"", b"", 2, 4, out_p, out_d) == 0      # plain bytes work too


def test_plain_buffers():
    db = bytes([0b1111, 0, 0b1, 0b11])
    out_p = bytearray(8 * 2)
    out_d = np.empty(2, np.int32)
    assert _hamming.knn(db, memoryview(b"\x00"), 1, 2, memoryview(out_p).cast("q"), out_d) == 2
    assert np.frombuffer(out_p, np.int64).tolist() == [1, 2] and out_d.tolist() == [0, 1]


def test_input_errors():
    db = np.zeros((10, 8), np.uint8)
    q = np.zeros((2, 8), np.uint8)
    p, d = np.empty((2, 3), np.int64), np.empty((2, 3), np.int32)
    with pytest.raises(ValueError, match="nbytes"):
        _hamming.knn(db, q, 0, 3, p, d)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        _hamming.knn(db, q, 8, 0, p, d)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn(db, q, -1)
    with pytest.raises(ValueError, match="db holds 76 bytes, not a whole number of 8-byte codes"):
        _hamming.knn(db.ravel()[:76], q, 8, 3, p, d)
    with pytest.raises(ValueError, match="queries hold 12 bytes"):
        _hamming.knn(db, q.ravel()[:12], 8, 3, p, d)
    with pytest.raises(ValueError, match=r"out_positions must hold q \* min\(k, n\) = 2 \* 3 int64, got 4"):
        _hamming.knn(db, q, 8, 3, np.empty((2, 2), np.int64), d)
    with pytest.raises(ValueError, match="out_distances must hold"):
        _hamming.knn(db, q, 8, 3, p, np.empty((2, 4), np.int32))
    with pytest.raises(ValueError, match="out_positions must be an int64 buffer"):
        _hamming.knn(db, q, 8, 3, np.empty((2, 3), np.float64), d)
    with pytest.raises(ValueError, match="out_distances must be an int32 buffer"):
        _hamming.knn(db, q, 8, 3, p, np.empty((2, 3), np.uint32))
    with pytest.raises(ValueError, match="out_positions must be an int64 buffer"):
        _hamming.knn(db, q, 8, 3, bytearray(48), d)
    ro = np.empty((2, 3), np.int64)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out_positions must be a C-contiguous, writable buffer"):
        _hamming.knn(db, q, 8, 3, ro, d)
    with pytest.raises(ValueError, match="out_distances must be a C-contiguous, writable buffer"):
        _hamming.knn(db, q, 8, 3, p, b"\x00" * 24)
    with pytest.raises(ValueError, match="db must be a C-contiguous buffer"):
        _hamming.knn(np.zeros((10, 16), np.uint8)[:, ::2], q, 8, 3, p, d)
    with pytest.raises(TypeError, match="queries must be a bytes-like object"):
        _hamming.knn(db, [0] * 16, 8, 3, p, d)
    with pytest.raises(TypeError):
        _hamming.knn(db, q, 8, "3", p, d)
    with pytest.raises(ValueError, match=r"db \(n, nb\) and queries \(q, nb\)"):
        knn(db, np.zeros((2, 4), np.uint8), 3)


# ----------------------------------------------------------------------------- as an index backend

@pytest.mark.parametrize("bits", BITS)
def test_kernel_backend_and_auto_rule(bits):
    rng = np.random.default_rng(7)
    nb = bits // 8
    pool = rng.integers(0, 256, (5, nb), dtype=np.uint8)
    db = pool[rng.integers(0, 5, 500)]
    ids = np.array([f"v/{i}" for i in range(500)], object)
    queries = np.concatenate([pool, rng.integers(0, 256, (2, nb), dtype=np.uint8)])
    for backend in ("kernel", "faiss"):
        index = create_index(backend, bits, 1)
        index.add(ids, db)
        index.remove(["v/3", "v/77"])
        keep = np.ones(500, bool)
        keep[[3, 77]] = False
        got_ids, got_dis = index.search(queries, 40)
        ref_pos, ref_dis = reference(db[keep], queries, 40)
        assert np.array_equal(got_dis, ref_dis), backend
        assert np.array_equal(got_ids, ids[keep][ref_pos]), backend
    auto = FaissIndex(bits, 1)
    assert auto.engine(1000) == "faiss" and auto.engine(1000, detail=True) == "kernel"
    assert FaissIndex(bits, 1).engine(10**9, detail=True) == ("short" if bits <= 32 else "kernel")


def test_auto_uses_faiss_without_the_kernel(monkeypatch):
    monkeypatch.setattr(kernel, "AVAILABLE", False)
    rng = np.random.default_rng(3)
    db = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    index = FaissIndex(64, 1)
    index.add([f"c{i}" for i in range(300)], db)
    assert index.engine(detail=True) == "faiss-flat"
    pos, dis = index.search_positions(db[:4], 9)
    ref = reference(db, db[:4], 9)
    assert np.array_equal(pos, ref[0]) and np.array_equal(dis, ref[1])
    with pytest.raises(ImportError, match="backend 'kernel' needs"):
        create_index("kernel", 64, 1)


def test_missing_extension_falls_back_silently():
    """Without the extension, stvh imports, logs one debug line and searches with FAISS."""
    code = (
        "import logging, sys\n"
        "sys.modules['stvh.index._hamming'] = None\n"        # import of the extension fails
        "logging.basicConfig(level=logging.DEBUG, format='%(name)s %(message)s')\n"
        "import numpy as np\n"
        "from stvh.index import create_index, kernel\n"
        "from stvh.index.faiss_backend import SHORT_MIN_ROWS, SHORT_MIN_ROWS_VS_FAISS\n"
        "assert not kernel.AVAILABLE and kernel.simd() is None\n"
        "assert SHORT_MIN_ROWS == SHORT_MIN_ROWS_VS_FAISS\n"
        "ix = create_index('faiss', 64, 1)\n"
        "ix.add(['a', 'b', 'c'], np.array([[1] * 8, [0] * 8, [0] * 8], np.uint8))\n"
        "print(ix.search(np.zeros(8, np.uint8), 2)[0].tolist(), ix.engine(detail=True))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[['b', 'c']] faiss-flat"
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("stvh.index.kernel")]
    assert len(lines) == 1 and "not available" in lines[0], res.stderr
