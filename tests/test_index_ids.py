"""The compact id table (stvh.index.ids) against a list + dict reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stvh.index import ids as idsmod
from stvh.index.ids import (IdTable, check_new_ids, encode_ids, first_duplicate_encoded, hash_ids, hash_one,
                            hash_segments)


def test_hash_is_fixed_and_the_same_in_python_and_numpy():
    # FNV-1a 64 then splitmix64's finaliser: values fixed forever (files store them)
    ref = {b"a": hash_one(b"a"), b"video0001/000123": hash_one(b"video0001/000123")}
    assert hash_one(b"a") != hash_one(b"b") and hash_one(b"ab") != hash_one(b"ba")
    ids = [f"v{i}/{'x' * (i % 7)}" for i in range(100)] + ["a", "video0001/000123", "é☃"]
    buf, off = encode_ids(ids)
    h = hash_segments(buf, off)                  # numpy path, mixed lengths
    assert h.dtype == np.uint64
    assert [int(x) for x in h] == [hash_one(s.encode()) for s in ids]
    assert int(h[100]) == ref[b"a"] and int(h[101]) == ref[b"video0001/000123"]
    assert np.array_equal(hash_ids(buf, off), h)


def test_hash_one_matches_a_hand_computed_fnv1a():
    # FNV-1a 64 of b"a" is 0xaf63dc4c8601ec8c (the published test vector); the finaliser is applied after
    h = (0xCBF29CE484222325 ^ 0x61) * 0x100000001B3 % 2 ** 64
    assert h == 0xAF63DC4C8601EC8C
    z = h ^ 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2 ** 64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2 ** 64
    assert hash_one(b"a") == z ^ (z >> 31)


def test_unicode_array_is_encoded_like_a_list():
    ids = np.array(["video0001/000001", "b", "é/1", "x\u2603y", "a\x00b"])
    for part in (ids[:2], ids):                  # ASCII fast path, then the fallback
        b1, o1 = encode_ids(part)
        b2, o2 = encode_ids(part.tolist())
        assert np.array_equal(b1, b2) and np.array_equal(o1, o2)
    buf, off = encode_ids(ids[:2])
    assert buf.tobytes() == b"video0001/000001b" and off.tolist() == [0, 16, 17]


def test_first_duplicate_is_the_first_repeat_in_order():
    for ids, want in ((["a", "b", "c", "b", "a"], 3), (["a", "b"], None), (["x", "y", "x", "x"], 2), ([], None)):
        buf, off = encode_ids(ids)
        assert first_duplicate_encoded(buf, off, hash_ids(buf, off)) == want


def test_collisions_are_resolved_by_the_bytes(monkeypatch):
    # every id hashes to the same value: lookups must still be exact
    monkeypatch.setattr(idsmod, "hash_segments", lambda buf, off: np.zeros(off.shape[0] - 1, np.uint64))
    monkeypatch.setattr(idsmod, "hash_one", lambda b: 0)
    ids = ["b", "a", "c", "aa"]
    t = IdTable(*encode_ids(ids))
    assert t.find(["aa", "a", "c", "b", "zz"]).tolist() == [3, 1, 2, 0, -1]
    buf, off = encode_ids(["q", "a", "q"])
    assert check_new_ids(t, buf, off, hash_ids(buf, off))[0] == "q"
    buf, off = encode_ids(["q", "c", "a"])
    assert check_new_ids(t, buf, off, hash_ids(buf, off))[1:] == (["c", "a"], 2)


def test_overlay_then_merge_then_remove():
    t = IdTable(*encode_ids(["v/0", "v/1", "v/2"]))
    t.append(["n/0", "n/1"])                      # small: the overlay
    assert t._extra == ["n/0", "n/1"] and t.n_base == 3
    assert t.get("n/1") == 4 and t.id_at(3) == "n/0" and "n/0" in t and "n/9" not in t
    keep = np.array([True, False, True, False, True])
    t.keep(keep)
    assert t.tolist() == ["v/0", "v/2", "n/1"] and t._extra == []
    assert t.find(["n/1", "v/2", "v/1", "n/0"]).tolist() == [2, 1, -1, -1]
    assert t.ids_at(np.array([[2, 0]])).tolist() == [["n/1", "v/0"]]


def test_large_append_goes_to_the_arrays(monkeypatch):
    monkeypatch.setattr(idsmod, "OVERLAY_MAX", 4)
    t = IdTable()
    t.append(["a", "b"])
    t.append(["c", "d", "e"])                     # over the limit: overlay and new ids merged
    assert t._extra == [] and t.n_base == 5 and t.tolist() == list("abcde")
    assert t.find(list("edcbaz")).tolist() == [4, 3, 2, 1, 0, -1]
    a = t.arrays()
    assert np.all(np.diff(a["hkey"].astype(np.float64)) >= 0) and sorted(a["hpos"].tolist()) == [0, 1, 2, 3, 4]


ID = st.text(alphabet=st.sampled_from(list("ab/é0")), min_size=1, max_size=4)
OPS = st.lists(st.tuples(st.sampled_from(["add", "add_np", "remove"]), st.lists(ID, max_size=6)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(OPS, st.integers(1, 8))
def test_random_add_remove_matches_a_list_and_dict(ops, overlay_max):
    old = idsmod.OVERLAY_MAX
    idsmod.OVERLAY_MAX = overlay_max
    try:
        t, ref = IdTable(), []
        for op, ids in ops:
            if op.startswith("add"):
                new = [i for i in dict.fromkeys(ids) if i not in ref]
                if op == "add":
                    t.append(new)
                else:
                    buf, off = encode_ids(np.array(new, dtype=str) if new else np.zeros(0, "<U1"))
                    h = hash_ids(buf, off)
                    assert check_new_ids(t, buf, off, h) == (None, [], 0)
                    t.append_encoded(buf, off, h)
                ref += new
            else:
                gone = set(ids) & set(ref)
                t.keep(np.array([i not in gone for i in ref], bool))
                ref = [i for i in ref if i not in gone]
            pos = {i: p for p, i in enumerate(ref)}
            assert len(t) == len(ref) and t.tolist() == ref
            probe = ids + ref[:3] + ["zz"]
            assert t.find(probe).tolist() == [pos.get(i, -1) for i in probe]
            assert [t.id_at(p) for p in range(len(ref))] == ref
        a = t.arrays()
        again = IdTable(a["buf"], a["off"])           # rebuilt from the bytes alone: same table
        assert np.array_equal(again.hkey, a["hkey"]) and np.array_equal(again.hpos, a["hpos"].astype(np.int64))
    finally:
        idsmod.OVERLAY_MAX = old


def test_a_large_lookup_merges_the_overlay_first():
    t = IdTable(*encode_ids([f"v/{i}" for i in range(10)]))
    t.append(["n/0", "n/1"])
    assert t.find(["n/1"]).tolist() == [11] and t._extra == ["n/0", "n/1"]      # small: the overlay answers
    probe = [f"v/{i}" for i in range(9, -1, -1)] + ["n/0", "n/1"] + [f"x/{i}" for i in range(40)]
    assert t.find(probe).tolist() == list(range(9, -1, -1)) + [10, 11] + [-1] * 40
    assert t._extra == [] and t.n_base == 12
