"""Milvus backend against Milvus Lite (skipped when pymilvus / milvus-lite are not installed).

One Milvus Lite server (a local process per .db file) serves the whole module:
a keeper index holds it open and the teardown closes it.
"""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pymilvus") is None or importlib.util.find_spec("milvus_lite") is None,
    reason="pymilvus / milvus-lite not installed (pip install 'stvh[milvus]')")

_names = itertools.count()


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    from stvh.index import create_index
    path = str(tmp_path_factory.mktemp("milvus") / "test.db")
    keeper = create_index("milvus", 16, 1, uri=path, collection="keeper", overwrite=True)
    yield path
    keeper.close()


def new_index(uri, bits, depth=1, **kw):
    from stvh.index import create_index
    return create_index("milvus", bits, depth, uri=uri, collection=f"c{next(_names)}", overwrite=True, **kw)


def reference(db, queries, k):
    n = db.shape[0]
    out = []
    for q in queries:
        d = np.unpackbits(db ^ q, axis=1).sum(axis=1)
        order = np.lexsort((np.arange(n), d))[:k]
        out.append((order, d[order]))
    return out


@pytest.mark.parametrize("bits", [16, 32, 64, 128])
def test_equals_brute_force_with_ties(uri, bits):
    rng = np.random.default_rng(bits)
    nb = bits // 8
    pool = rng.integers(0, 256, (5, nb), dtype=np.uint8)
    n = 250
    db = pool[rng.integers(0, 5, n)]
    ids = np.array([f"v{i // 10}/{i}" for i in range(n)], object)
    index = new_index(uri, bits, 2)
    try:
        index.add(ids, np.stack([db[::-1], db], axis=1), activity=np.arange(n) % 3, group=["g"] * n)
        assert len(index) == n
        queries = np.concatenate([pool[:3], rng.integers(0, 256, (1, nb), dtype=np.uint8)])
        for k in (1, 7, 60, 249, 300):
            got_ids, got_dis = index.search(queries, k, focus=2)
            for i, (pos, dis) in enumerate(reference(db, queries, k)):
                assert got_dis[i].tolist() == dis.tolist(), k
                assert got_ids[i].tolist() == ids[pos].tolist(), k
            got_ids, got_dis = index.search(queries, k, focus=1)
            for i, (pos, dis) in enumerate(reference(db[::-1], queries, k)):
                assert got_ids[i].tolist() == ids[pos].tolist(), k
    finally:
        index.close()


def test_add_remove_ties_beyond_the_limit(uri, monkeypatch):
    import stvh.index.milvus_backend as mb
    from stvh.index import DuplicateIdError, UnknownIdError
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (3, 4), dtype=np.uint8)
    db = pool[rng.integers(0, 3, 300)]
    ids = [f"a/{i}" for i in range(300)]
    index = new_index(uri, 32)
    try:
        index.add(ids[:200], db[:200])
        index.add(ids[200:], db[200:])
        index.remove(ids[:50:3])
        with pytest.raises(DuplicateIdError, match="already in the index"):
            index.add(["a/60"], db[:1])
        with pytest.raises(DuplicateIdError, match="in this add"):
            index.add(["b/1", "b/1"], db[:2])
        with pytest.raises(UnknownIdError, match="'a/0'"):
            index.remove(["a/0"])
        with pytest.raises(ValueError, match="unknown focus 2"):
            index.search(db[0], 3, focus=2)
        with pytest.raises(ValueError, match="wrong code length"):
            index.search(np.zeros(2, np.uint8), 3)
        keep = [i for i in range(300) if i not in set(range(0, 50, 3))]
        monkeypatch.setattr(mb, "MAX_LIMIT", 24)        # force the pos-filtered tie fetches
        for k in (5, 20):
            got_ids, got_dis = index.search(pool, k)
            for i, (pos, dis) in enumerate(reference(db[keep], pool, k)):
                assert got_dis[i].tolist() == dis.tolist()
                assert got_ids[i].tolist() == [ids[keep[p]] for p in pos]
        assert len(index) == 300 - 17
        assert "a/0" not in index and "a/1" in index
        assert np.array_equal(index.codes_of(["a/1", "a/299"]), db[[1, 299]])
    finally:
        index.close()


def test_manifest_round_trip_and_compact(uri, tmp_path):
    from stvh.index import IndexFileError, load_index
    from stvh.index.codes import pack_codes
    rng = np.random.default_rng(3)
    perm = np.eye(16, dtype=np.float32)[rng.permutation(16)]
    deep = rng.choice(np.array([-1, 1], np.int8), (40, 16))
    deep[:, 0], deep[:, 1] = 1, -1
    index = new_index(uri, 16, 2, mode="compact", filter=perm)
    name = index.collection
    index.add([f"c/{i}" for i in range(40)], pack_codes(deep))
    shallow = pack_codes((deep.astype(np.float64) @ perm.T).astype(np.int8))
    assert np.array_equal(index.codes_of(["c/3"], 1), shallow[3:4])
    p = tmp_path / "m.idx"
    index.save(p)
    index.add(["c/late"], pack_codes(deep[:1]))          # after the manifest was written
    index.close()
    back = load_index(p)
    try:
        assert back.backend == "milvus" and back.mode == "compact" and back.collection == name
        assert len(back) == 41
        back.add(["c/later"], pack_codes(deep[:1]))        # positions continue after c/late
        ids, dis = back.search(shallow[0], 3, focus=1)
        assert ids[0].tolist() == ["c/0", "c/late", "c/later"] and dis[0].tolist() == [0, 0, 0]
    finally:
        back.close()
    with np.load(p) as z:
        bad = {k: z[k] for k in z.files}
    bad["collection"] = np.array("does_not_exist")
    with open(tmp_path / "bad.idx", "wb") as fh:
        np.savez(fh, **bad)
    with pytest.raises(IndexFileError, match="not found"):
        load_index(tmp_path / "bad.idx", uri=uri)


def test_build_and_search_commands(uri, tmp_path):
    from stvh.index import CodeSet
    from stvh.index.commands import build_index, search_index
    rng = np.random.default_rng(5)
    signs = rng.choice(np.array([-1, 1], np.int8), (30, 1, 64))
    signs[2] = signs[0]
    CodeSet.from_signs([f"m/{i}" for i in range(30)], signs).save(tmp_path / "codes.npz")
    summary = build_index(tmp_path / "codes.npz", tmp_path / "m.idx", backend="milvus", uri=uri,
                          collection="cmd")
    assert summary["backend"] == "milvus" and summary["clips"] == 30
    rows = search_index(tmp_path / "m.idx", clip_id="m/0", k=3)
    assert rows[0]["clip"] == "m/2" and rows[0]["distance"] == 0 and len(rows) == 3
