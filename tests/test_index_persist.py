"""Saving and loading indexes: round trips, kill-during-save, corrupt files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stvh.index import IndexFileError, create_index, load_index
from stvh.index.base import CodeIndex

BACKENDS = ("numpy", "faiss", "faiss-flat", "short")


def filled(backend, n=60, bits=32, depth=2, seed=0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, (n, depth, bits // 8), dtype=np.uint8)   # ties
    index = create_index(backend, bits, depth, meta={"activity_names": ["x", "y"]})
    index.add([f"v{i % 7}/{i}" for i in range(n)], codes, activity=np.arange(n) % 3 - 1,
              group=[f"g{i % 2}" for i in range(n)])
    return index, codes


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip(tmp_path, backend):
    index, codes = filled(backend)
    index.remove(["v1/1", "v3/10"])
    p = tmp_path / "x.idx"
    index.save(p)
    back = CodeIndex.load(p)
    assert type(back) is type(index) and back.backend == backend
    assert back.ids == index.ids and len(back) == 58 and back.depth == 2 and back.bits == 32
    assert back.meta["activity_names"] == ["x", "y"]
    for focus in (1, 2):
        a, b = index.search(codes[:5, focus - 1], 9, focus=focus), back.search(codes[:5, focus - 1], 9, focus=focus)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    act, grp = back.labels_of(["v2/2", "v0/7"])
    assert act.tolist() == [1, 0] and grp.tolist() == ["g0", "g1"]
    assert [f.name for f in tmp_path.iterdir()] == ["x.idx"]
    # one file format for the in-memory backends: load with another engine
    other = load_index(p, backend="numpy")
    assert np.array_equal(other.search(codes[:5, 1], 9)[0], index.search(codes[:5, 1], 9)[0])


def test_kill_during_save_keeps_the_old_file(tmp_path, monkeypatch):
    index, codes = filled("faiss")
    p = tmp_path / "x.idx"
    index.save(p)
    before = p.read_bytes()
    index.add(["new/1"], codes[:1])

    def boom(*a, **k):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        index.save(p)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert "new/1" not in load_index(p) and len(load_index(p)) == 60
    assert [f.name for f in tmp_path.iterdir()] == ["x.idx"]          # temp file removed

    # killed while writing (half the bytes out): same
    real_savez = np.savez

    def half_then_die(fh, **arrays):
        real_savez(fh, **arrays)
        fh.truncate(fh.tell() // 2)
        raise SystemExit("killed mid-write")
    monkeypatch.setattr(np, "savez", half_then_die)
    with pytest.raises(SystemExit):
        index.save(p)
    monkeypatch.undo()
    assert p.read_bytes() == before and len(load_index(p)) == 60
    assert [f.name for f in tmp_path.iterdir()] == ["x.idx"]


def test_corrupt_files_raise_clear_errors(tmp_path):
    index, _ = filled("faiss")
    good = tmp_path / "good.idx"
    index.save(good)
    raw = good.read_bytes()
    cases = {
        "trunc.idx": raw[: len(raw) // 2],
        "trunc_tail.idx": raw[:-10],
        "junk.idx": np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "empty.idx": b"",
        "text.idx": b"hello world\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IndexFileError, match=name.replace(".", "\\.")):
            load_index(tmp_path / name)
    with pytest.raises(IndexFileError, match="missing.idx: index file not found"):
        load_index(tmp_path / "missing.idx")

    with np.load(good) as z:
        d = {k: z[k] for k in z.files}

    def write(name, **arrays):
        with open(tmp_path / name, "wb") as fh:
            np.savez(fh, **arrays)
        return tmp_path / name

    with pytest.raises(IndexFileError, match="not an stvh index"):
        load_index(write("fmt.idx", **{**d, "format": np.array("stvh-codes")}))
    with pytest.raises(IndexFileError, match="lacks key"):
        load_index(write("nokey.idx", **{k: v for k, v in d.items() if k != "bits"}))
    with pytest.raises(IndexFileError, match="codes must be uint8 of shape"):
        load_index(write("shape.idx", **{**d, "codes": d["codes"][:, :1]}))
    with pytest.raises(IndexFileError, match="ids must have shape"):
        load_index(write("ids.idx", **{**d, "ids": np.array(index.ids)[:5]}))   # a plain str array of ids
    with pytest.raises(IndexFileError, match="duplicate id"):
        load_index(write("dup.idx", **{**d, "ids": np.array(["a"] * len(index))}))
    with pytest.raises(IndexFileError, match="code length must be one of"):
        load_index(write("bits.idx", **{**d, "bits": np.array(40)}))
    with pytest.raises(IndexFileError, match="unknown backend"):
        load_index(write("be.idx", **{**d, "backend": np.array("annoy")}))
    with pytest.raises(IndexFileError, match="newer"):
        load_index(write("ver.idx", **{**d, "version": np.array(99)}))


def test_empty_index_round_trip(tmp_path):
    index = create_index("faiss", 128, 3)
    index.save(tmp_path / "e.idx")
    back = load_index(tmp_path / "e.idx")
    assert len(back) == 0 and back.depth == 3 and back.bits == 128
