"""Index file format version 2: memory-mapped codes and ids, version-1 files, copy-on-write, corrupt files."""

from __future__ import annotations

import json
import mmap
import zipfile

import numpy as np
import pytest

from stvh.index import IndexFileError, create_index, load_index
from stvh.index.base import DuplicateIdError, InMemoryIndex
from stvh.index.codes import NpzMembers
from stvh.index.numpy_backend import NumpyIndex
from stvh.index.storage import derive_packed


def mapped(a: np.ndarray) -> bool:
    """Does ``a``'s base chain reach a file mapping?"""
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = a.base if isinstance(a, np.ndarray) else None
    return False


def make(backend="numpy", n=300, bits=64, depth=2, mode="all", seed=0, filt=None):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, (n, depth, bits // 8), dtype=np.uint8)
    codes[n // 2:] = codes[:n - n // 2] ^ np.uint8(1)          # near duplicates: ties and close pairs
    index = create_index(backend, bits, depth, mode=mode, filter=filt, meta={"x": 1})
    ids = np.array([f"video{i % 13:04d}/{i:06d}" for i in range(n)])
    index.add(ids, codes, activity=np.arange(n) % 5 - 1, group=np.array([f"g{i % 3}" for i in range(n)]))
    return index, codes, ids.tolist()


@pytest.mark.parametrize("bits", [16, 32, 64, 128])
@pytest.mark.parametrize("depth,mode", [(1, "all"), (3, "all"), (3, "compact")])
def test_round_trip_at_every_k_and_depth(tmp_path, bits, depth, mode):
    filt = np.eye(bits, dtype=np.float32)[::-1].copy() if mode == "compact" else None
    index, codes, ids = make(bits=bits, depth=depth, mode=mode, filt=filt)
    p = tmp_path / "x.idx"
    index.save(p)
    back = load_index(p)
    assert type(back) is NumpyIndex and len(back) == 300 and back.ids == ids and back.meta == {"x": 1}
    for focus in range(1, depth + 1):
        q = codes[:7, focus - 1]
        a, b = index.search(q, 11, focus=focus), back.search(q, 11, focus=focus)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert np.array_equal(back.codes_of(ids[::17], focus), index.codes_of(ids[::17], focus))
    act, grp = back.labels_of(["video0002/000002", "video0000/000299"])
    assert act.tolist() == [1, 3] and grp.tolist() == ["g2", "g2"]
    # every large member starts 64-byte aligned; codes are stored focus by focus
    m = NpzMembers(p, "index", IndexFileError)
    stored = depth if mode == "all" else 1
    assert m.members["codes"][1] == (stored, 300, bits // 8)
    for key in ("codes", "ids/off", "ids/hash", "ids/hash_pos"):
        assert m.members[key][3] % 64 == 0, key


def test_loaded_arrays_are_memory_maps_and_search_works(tmp_path):
    index, codes, ids = make(n=20000, bits=128, depth=2)
    p = tmp_path / "x.idx"
    index.save(p)
    back = load_index(p)
    assert mapped(back.depth_codes(0)) and mapped(back.depth_codes(1))
    t = back._table
    assert all(mapped(a) for a in (t.buf, t.off, t.hkey, t.hpos))
    assert back._activity.dtype == np.int8 and back._group.dtype == np.uint8    # 1 byte each (< 64 KiB: read)
    assert back.depth_codes(1).flags.c_contiguous and not back.depth_codes(1).flags.writeable
    want = NumpyIndex(128, 2)
    want.add(ids, codes)
    a, b = want.search(codes[::997, 1], 5), back.search(codes[::997, 1], 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert back.positions(["video0005/019999", "video0000/000000"]).tolist() == [19999, 0]


def test_version_1_files_still_load(tmp_path):
    # the old layout, written by hand: codes (n, depth, K/8), ids and group as str arrays
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (5, 2, 4), dtype=np.uint8)
    p = tmp_path / "old.idx"
    with open(p, "wb") as fh:
        np.savez(fh, format=np.array("stvh-index"), version=np.array(1), backend=np.array("faiss"),
                 bits=np.array(32), depth=np.array(2), mode=np.array("all"),
                 ids=np.array(["b/1", "a/2", "c/3", "é/4", "d/5"]), codes=codes,
                 activity=np.array([3, -1, 0, 2, 1], np.int64), group=np.array(["x", "", "y", "x", "z"]),
                 meta=np.array(json.dumps({"activity_names": ["p", "q", "r", "s"]})))
    back = load_index(p)
    assert back.backend == "faiss" and back.ids == ["b/1", "a/2", "c/3", "é/4", "d/5"]
    assert np.array_equal(back.codes_of(["é/4", "b/1"], 1), codes[[3, 0], 0])
    ids, dist = back.search(codes[2, 1], 2, focus=2)
    assert ids[0, 0] == "c/3" and dist[0, 0] == 0
    act, grp = back.labels_of(["c/3", "a/2"])
    assert act.tolist() == [0, -1] and grp.tolist() == ["y", ""]
    back.save(p)                                      # re-saved as version 2
    with np.load(p) as z:
        assert int(z["version"]) == 2 and z["codes"].shape == (2, 5, 4)
    again = load_index(p)
    assert again.ids == back.ids and again.labels_of(["d/5"])[1].tolist() == ["z"]
    # a version-1 compact file derives its foci
    f = np.eye(32, dtype=np.float32)[::-1].copy()
    with open(tmp_path / "c.idx", "wb") as fh:
        np.savez(fh, format=np.array("stvh-index"), version=np.array(1), backend=np.array("numpy"),
                 bits=np.array(32), depth=np.array(2), mode=np.array("compact"), ids=np.array(["a", "b"]),
                 codes=codes[:2, 1:], activity=np.array([0, 0]), group=np.array(["", ""]), filter=f)
    c = load_index(tmp_path / "c.idx")
    assert np.array_equal(c.codes_of(["a", "b"], 1), derive_packed(codes[:2, 1], f, 2, 32)[:, 0])


def test_add_and_remove_after_load_copy_then_save_over_the_mapped_file(tmp_path):
    index, codes, ids = make(n=500)
    p = tmp_path / "x.idx"
    index.save(p)
    back = load_index(p)
    first = back.search(codes[:3, 1], 4)
    back.add(["new/1"], codes[7:8], activity=[300], group=["a brand new group"])     # wider activity dtype
    assert not mapped(back.depth_codes(1)) and back._table._extra == ["new/1"]
    assert back.labels_of(["new/1"])[0].tolist() == [300] and back._activity.dtype == np.int16
    back.remove([ids[0], ids[10]])
    assert len(back) == 499 and back.ids[:2] == [ids[1], ids[2]] and back.ids[-1] == "new/1"
    with pytest.raises(DuplicateIdError, match="already in the index: 'new/1'"):
        back.add(np.array(["x/1", "new/1"]), codes[:2])
    back.save(p)                                      # over the file it was mapped from
    again = load_index(p)
    assert again.ids == back.ids and again.labels_of(["new/1"])[1].tolist() == ["a brand new group"]
    a, b = back.search(codes[:5, 0], 9, focus=1), again.search(codes[:5, 0], 9, focus=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # an index still mapped from the replaced file keeps working, and can save over it again
    other = load_index(p)
    other.save(p)
    assert load_index(p).ids == back.ids
    assert first[0].shape == (3, 4)


def test_large_array_adds_refuse_duplicates_like_lists():
    index = create_index("numpy", 32, 1)
    ids = np.array([f"v/{i}" for i in range(5000)])
    codes = np.zeros((5000, 4), np.uint8)
    bad = ids.copy()
    bad[4000] = "v/17"
    with pytest.raises(DuplicateIdError, match="duplicate id 'v/17' in this add"):
        index.add(bad, codes)
    with pytest.raises(ValueError, match="non-empty"):
        index.add(np.array(["a", ""]), codes[:2])
    index.add(ids, codes)
    with pytest.raises(DuplicateIdError, match=r"already in the index: 'v/3', 'v/4999'$"):
        index.add(np.array(["v/3", "w/1", "v/4999"]), codes[:3])
    assert len(index) == 5000 and index.positions(["v/4999"]).tolist() == [4999]


class Hooked(NumpyIndex):
    """An engine that saves one array and records what it gets back."""

    def _extra_arrays(self):
        return {"table": np.arange(len(self) * 100, dtype=np.int64), "small": np.array([7, 8])}

    def _adopt_extra(self, arrays):
        self.adopted = (arrays, self._version)


def test_engine_arrays_are_saved_and_given_back_mapped(tmp_path, monkeypatch):
    import stvh.index.base as base
    monkeypatch.setitem(base._BACKENDS, "numpy", f"{__name__}:Hooked")
    index = Hooked(32, 1)
    index.add([f"v/{i}" for i in range(200)], np.zeros((200, 4), np.uint8))
    index.save(tmp_path / "h.idx")
    with zipfile.ZipFile(tmp_path / "h.idx") as z:
        assert "engine/table.npy" in z.namelist()
    back = load_index(tmp_path / "h.idx")
    arrays, version = back.adopted
    assert sorted(arrays) == ["small", "table"] and version == back._version >= 1
    assert mapped(arrays["table"]) and arrays["table"][-1] == 19999 and arrays["small"].tolist() == [7, 8]
    assert InMemoryIndex._extra_arrays(back) == {}


def test_truncated_or_corrupt_version_2_files_name_the_file(tmp_path):
    index, _, _ = make(n=3000)
    good = tmp_path / "good.idx"
    index.save(good)
    raw = good.read_bytes()
    m = NpzMembers(good, "index", IndexFileError)
    codes_at = m.members["codes"][3]
    cases = {"cut_in_codes.idx": raw[:codes_at + 100], "cut_tail.idx": raw[:-1]}
    bad_local = bytearray(raw)
    bad_local[codes_at - 200:codes_at] = b"\x00" * 200        # the codes member's local and .npy headers
    cases["bad_header.idx"] = bytes(bad_local)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IndexFileError, match=name.replace(".", "\\.")):
            load_index(tmp_path / name)
    # a member cut short inside a well-formed zip
    with np.load(good) as z:
        d = {k: z[k] for k in z.files}
    for name, change in {"short_buf.idx": {"ids/buf": d["ids/buf"][:-3]},
                         "short_hash.idx": {"ids/hash": d["ids/hash"][:10]},
                         "grp.idx": {"group": d["group"].astype(np.float32)}}.items():
        with open(tmp_path / name, "wb") as fh:
            np.savez(fh, **{**d, **change})
        with pytest.raises(IndexFileError, match=name.replace(".", "\\.") + ": ids/buf|ids/hash|group"):
            load_index(tmp_path / name)


def test_cli_prints_time_and_memory(tmp_path):
    import re

    from typer.testing import CliRunner

    from stvh.cli import app
    from stvh.index.codes import CodeSet
    from stvh.index.commands import format_stats

    rng = np.random.default_rng(5)
    cs = CodeSet(ids=np.array([f"v{i // 10}/{i}" for i in range(400)]), bits=32,
                 codes=rng.integers(0, 256, (400, 2, 4), dtype=np.uint8), activity=np.arange(400) % 4)
    cs.save(tmp_path / "codes.npz")
    runner = CliRunner()
    out = runner.invoke(app, ["index", "build", "--codes", str(tmp_path / "codes.npz"),
                              "--out", str(tmp_path / "x.idx")])
    assert out.exit_code == 0, out.output
    for key in ("seconds", "seconds_read", "seconds_add", "seconds_save", "rss_mib", "peak_rss_mib"):
        assert re.search(rf"^{key}: \d+(\.\d+)?$", out.output, re.M), key
    out = runner.invoke(app, ["search", "--index", str(tmp_path / "x.idx"), "--clip", "v3/31", "-k", "2"])
    assert out.exit_code == 0, out.output
    last = out.output.strip().splitlines()[-1]
    assert re.fullmatch(r"400 clips searched in \d+\.\d ms \(index opened in \d+\.\d ms, \d+\.\d\d s in all\); "
                        r"memory: [\d,]+ MiB resident, peak [\d,]+ MiB", last), last
    out = runner.invoke(app, ["search", "--index", str(tmp_path / "x.idx"), "--clip", "v3/31", "-k", "2", "--json"])
    assert len(json.loads(out.output)) == 2                     # --json stays a plain list of rows
    assert format_stats({"clips": 10_000_000, "seconds_search": 0.0031, "seconds_open": 0.0204, "seconds": 0.5,
                         "rss_mib": 1234.4, "peak_rss_mib": None}) == \
        ("10,000,000 clips searched in 3.1 ms (index opened in 20.4 ms, 0.50 s in all); "
         "memory: 1,234 MiB resident, peak ?")
