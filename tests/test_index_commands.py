"""`stvh index build` / `stvh search` implementation functions."""

from __future__ import annotations

import numpy as np
import pytest

from stvh.index import CodeFileError, CodeSet, UnknownIdError, load_index
from stvh.index.commands import build_index, format_results, search_index


def codes_file(tmp_path, *, bits=32, depth=3, m=40, filt=True, seed=0):
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1, 1], np.int8), (m, depth, bits))
    signs[1] = signs[0]                                   # an exact twin of clip 0
    perm = np.eye(bits, dtype=np.float32)[rng.permutation(bits)] if filt else None
    cs = CodeSet.from_signs([f"{i // 5}/{i}" for i in range(m)], signs, activity=np.arange(m) % 4 - 1,
                            group=["left", "right"] * (m // 2), split=["train"] * m, filter=perm,
                            meta={"model": "mstvh", "activities": ["spike", "set", "pass"]})
    p = tmp_path / "codes.npz"
    cs.save(p)
    return p, cs


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
@pytest.mark.parametrize("mode", ["all", "compact"])
def test_build_and_search_by_clip(tmp_path, backend, mode):
    cpath, cs = codes_file(tmp_path)
    out = tmp_path / "idx" / "codes.idx"
    summary = build_index(cpath, out, mode=mode, backend=backend)
    assert summary["clips"] == 40 and summary["bits"] == 32 and summary["depth"] == 3
    assert summary["mode"] == mode and summary["bytes_on_disk"] == out.stat().st_size
    if mode == "compact":
        assert summary["storage_bits"] == 40 * 32 + 32 * 32
        assert len(summary["derived_bit_agreement"]) == 3 and summary["derived_bit_agreement"][-1] == 1.0
    else:
        assert summary["storage_bits"] == 40 * 3 * 32
    rows = search_index(out, clip_id="0/0", k=5)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert "0/0" not in [r["clip"] for r in rows]              # the query itself is excluded
    assert rows[0]["clip"] == "0/1" and rows[0]["distance"] == 0 and rows[0]["focus"] == 3
    assert rows[0]["activity"] == 0 and rows[0]["activity_name"] == "spike" and rows[0]["group"] == "right"
    assert all(a["distance"] <= b["distance"] for a, b in zip(rows, rows[1:]))
    rows1 = search_index(out, clip_id="0/0", k=3, focus=1)
    assert rows1[0]["focus"] == 1
    table = format_results(rows)
    assert "0/1" in table and "distance" in table and "spike" in table


def test_search_by_codes_file(tmp_path):
    cpath, cs = codes_file(tmp_path, filt=False)
    out = tmp_path / "x.idx"
    build_index(cpath, out)
    q = CodeSet(ids=["new/1", "new/2"], codes=cs.codes[[3, 7]], bits=32)
    qp = tmp_path / "q.npz"
    q.save(qp)
    rows = search_index(out, codes_file=qp, k=4, focus=2)
    assert [r["query"] for r in rows] == ["new/1"] * 4 + ["new/2"] * 4
    assert rows[0]["clip"] == "0/3" and rows[0]["distance"] == 0 and rows[4]["clip"] == "1/7"
    assert "query" in format_results(rows).splitlines()[1]
    npy = tmp_path / "q.npy"
    np.save(npy, cs.codes[3, 1])
    assert search_index(out, codes_file=npy, k=4, focus=2)[0]["clip"] == "0/3"
    txt = tmp_path / "q.txt"
    txt.write_text("".join("1" if s > 0 else "0" for s in cs.signs(3)[5]) + "\n")
    assert search_index(out, codes_file=txt, k=1)[0]["clip"] == "1/5"
    txt.write_text("0101\n")
    with pytest.raises(CodeFileError, match="q.txt: wrong code length"):
        search_index(out, codes_file=txt)
    np.save(npy, np.zeros(3, np.uint8))
    with pytest.raises(CodeFileError, match="q.npy: .*wrong code length"):
        search_index(out, codes_file=npy)


def test_command_errors(tmp_path):
    cpath, _ = codes_file(tmp_path, filt=False)
    with pytest.raises(CodeFileError, match="codes.npz: compact mode needs the filter"):
        build_index(cpath, tmp_path / "x.idx", mode="compact")
    with pytest.raises(CodeFileError, match="missing.npz: CODES file not found"):
        build_index(tmp_path / "missing.npz", tmp_path / "x.idx")
    build_index(cpath, tmp_path / "x.idx")
    with pytest.raises(ValueError, match="exactly one"):
        search_index(tmp_path / "x.idx")
    with pytest.raises(ValueError, match="exactly one"):
        search_index(tmp_path / "x.idx", clip_id="0/0", codes_file=cpath)
    with pytest.raises(UnknownIdError, match="'9/99' is not in the index"):
        search_index(tmp_path / "x.idx", clip_id="9/99")
    with pytest.raises(ValueError, match="unknown focus 4"):
        search_index(tmp_path / "x.idx", clip_id="0/0", focus=4)
    with pytest.raises(ValueError, match="--uri"):
        build_index(cpath, tmp_path / "y.idx", uri="x.db")
    assert len(load_index(tmp_path / "x.idx")) == 40
    assert format_results([]) == "(no results)"
