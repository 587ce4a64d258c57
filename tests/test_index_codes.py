"""The CODES file and pack/unpack."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stvh.index import CodeFileError, CodeSet, pack_codes, unpack_codes


@settings(max_examples=50, deadline=None)
@given(st.sampled_from([16, 32, 64, 128]), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(bits, lead, seed):
    rng = np.random.default_rng(seed)
    shape = (lead, 2, bits) if lead else (bits,)
    signs = rng.choice(np.array([-1, 1], np.int8), shape)
    packed = pack_codes(signs)
    assert packed.dtype == np.uint8 and packed.shape == shape[:-1] + (bits // 8,)
    assert np.array_equal(unpack_codes(packed, bits), signs)


def test_bit_order_is_packbits_big_endian():
    s = -np.ones(16, np.int8)
    s[0] = 1      # first code entry -> most significant bit of the first byte
    s[15] = 1
    assert pack_codes(s).tolist() == [0x80, 0x01]
    assert pack_codes(s.astype(np.float32)).tolist() == [0x80, 0x01]
    assert pack_codes(s > 0).tolist() == [0x80, 0x01]


def test_pack_strictness():
    with pytest.raises(ValueError, match="-1 and \\+1"):
        pack_codes(np.zeros(16))
    assert pack_codes(np.linspace(-1, 1, 16), strict=False).tolist() == [0x00, 0xFF]
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_codes(np.ones(12))
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(np.zeros(2, np.int8), 16)
    with pytest.raises(ValueError, match="last dimension 2"):
        unpack_codes(np.zeros(4, np.uint8), 16)


def make_codeset(m=5, depth=3, bits=32, filt=True, seed=0):
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1, 1], np.int8), (m, depth, bits))
    return CodeSet.from_signs(
        [f"v{i}/{i * 10}" for i in range(m)], signs, activity=np.arange(m) % 3 - 1,
        group=["left"] * m, split=["train"] * (m - 1) + ["test"],
        filter=np.eye(bits, dtype=np.float32) if filt else None,
        meta={"model": "mstvh", "seed": 1, "activity_names": ["a", "b"]})


def test_codeset_round_trip(tmp_path):
    cs = make_codeset()
    p = tmp_path / "codes.npz"
    cs.save(p)
    back = CodeSet.load(p)
    assert back.ids.tolist() == cs.ids.tolist()
    assert np.array_equal(back.codes, cs.codes) and back.bits == 32 and back.depth == 3
    assert back.activity.tolist() == [-1, 0, 1, -1, 0]
    assert back.group.tolist() == ["left"] * 5 and back.split.tolist()[-1] == "test"
    assert np.array_equal(back.filter, np.eye(32)) and back.meta["model"] == "mstvh"
    assert np.array_equal(back.signs(2), cs.signs()[:, 1])
    assert [p.name] == [f.name for f in tmp_path.iterdir()]        # no temp files left
    # no pickles inside: loads with allow_pickle=False
    with np.load(p, allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["seed"] == 1
    cs2 = make_codeset(filt=False)
    cs2.save(p)
    assert CodeSet.load(p).filter is None


def test_codeset_validation():
    with pytest.raises(ValueError, match="one of"):
        CodeSet(ids=["a"], codes=np.zeros((1, 1, 3), np.uint8), bits=24)
    with pytest.raises(ValueError, match="shape"):
        CodeSet(ids=["a"], codes=np.zeros((1, 1, 3), np.uint8), bits=32)
    with pytest.raises(ValueError, match="duplicate clip id 'a'"):
        CodeSet(ids=["a", "a"], codes=np.zeros((2, 1, 2), np.uint8), bits=16)
    with pytest.raises(ValueError, match="filter"):
        CodeSet(ids=["a"], codes=np.zeros((1, 2, 2), np.uint8), bits=16, filter=np.eye(8))
    with pytest.raises(ValueError, match="unknown focus"):
        make_codeset().signs(4)


def write_npz(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_codeset_load_errors_name_the_file(tmp_path):
    good = tmp_path / "good.npz"
    make_codeset().save(good)
    raw = good.read_bytes()

    missing = tmp_path / "nope.npz"
    with pytest.raises(CodeFileError, match="nope.npz: CODES file not found"):
        CodeSet.load(missing)

    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CodeFileError, match="trunc.npz: corrupt"):
        CodeSet.load(trunc)

    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CodeFileError, match="junk.npz"):
        CodeSet.load(junk)

    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(CodeFileError, match="empty.npz"):
        CodeSet.load(empty)

    with np.load(good) as z:
        d = {k: z[k] for k in z.files}
    nokey = tmp_path / "nokey.npz"
    write_npz(nokey, **{k: v for k, v in d.items() if k != "split"})
    with pytest.raises(CodeFileError, match="nokey.npz: CODES file lacks key\\(s\\) \\['split'\\]"):
        CodeSet.load(nokey)

    badbits = tmp_path / "badbits.npz"
    write_npz(badbits, **{**d, "bits": np.array(48), "codes": np.zeros((5, 3, 6), np.uint8)})
    with pytest.raises(CodeFileError, match="badbits.npz: code length 48 not supported"):
        CodeSet.load(badbits)

    badshape = tmp_path / "badshape.npz"
    write_npz(badshape, **{**d, "codes": d["codes"][:, :2]})
    with pytest.raises(CodeFileError, match="badshape.npz: codes must be uint8 of shape"):
        CodeSet.load(badshape)

    badids = tmp_path / "badids.npz"
    write_npz(badids, **{**d, "ids": d["ids"][:3]})
    with pytest.raises(CodeFileError, match="badids.npz: ids must have shape"):
        CodeSet.load(badids)

    npy = tmp_path / "arr.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(CodeFileError, match="arr.npy"):
        CodeSet.load(npy)
