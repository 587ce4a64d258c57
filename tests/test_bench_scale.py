"""benchmarks/scale.py: its code draws, trained-code statistics and the exact FAISS multi-hash wrapper."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bernoulli_rows_are_distinct_sorted_and_at_the_rate(scale):
    rng = np.random.default_rng(1)
    rows = scale.bernoulli_rows(rng, 200_000, 0.2)
    assert np.all(np.diff(rows) > 0) and rows[0] >= 0 and rows[-1] < 200_000
    assert abs(len(rows) - 40_000) < 5 * np.sqrt(200_000 * 0.2 * 0.8)
    assert len(scale.bernoulli_rows(rng, 1000, 0.0)) == 0
    assert np.array_equal(scale.bernoulli_rows(rng, 7, 1.0), np.arange(7))


def test_flip_bits_flips_each_bit_at_its_own_rate_in_packbits_order(scale):
    rng = np.random.default_rng(2)
    block = np.zeros((100_000, 8), np.uint8)
    rates = np.zeros(64)
    rates[0], rates[9] = 0.5, 0.1                 # bit 0 = 0x80 of byte 0, bit 9 = 0x40 of byte 1
    scale.flip_bits(rng, block, np.arange(50_000, 100_000), rates)
    bits = np.unpackbits(block, axis=1)
    assert not bits[:50_000].any()                # rows not given are untouched
    mean = bits[50_000:].mean(axis=0)
    assert abs(mean[0] - 0.5) < 0.015 and abs(mean[9] - 0.1) < 0.01
    assert mean[np.setdiff1d(np.arange(64), [0, 9])].max() == 0
    assert np.all(block[50_000:, 1] & ~np.uint8(0x40) == 0)


def test_smaller_draws_are_prefixes_and_queries_differ(scale):
    a = scale.draw_codes("p05", 900, 64, seed=3, chunk=300)
    b = scale.draw_codes("p05", 600, 64, seed=3, chunk=300)
    assert np.array_equal(a[:600], b)
    q = scale.draw_queries("p05", 600, 64, seed=3)
    assert not np.array_equal(q, b)
    c = scale.draw_codes("p05", 600, 64, seed=4, chunk=300)
    assert not np.array_equal(b, c)


def test_clustered_codes_lie_at_rate_p_from_a_shared_centre(scale):
    centres = scale.kind_model("p15", 64, seed=5)
    db = scale.draw_codes("p15", 4000, 64, seed=5, chunk=4000)
    d = np.bitwise_count(db[:, None, :] ^ centres[None]).sum(-1).min(axis=1)    # (4000,) to nearest centre
    assert abs(d.mean() - 0.15 * 64) < 0.4


def test_measure_stats_takes_the_deepest_code_majority_of_train_and_flips_of_held_out(scale, tmp_path):
    deep = np.zeros((7, 64), np.uint8)
    deep[[0, 1], 0] = 1                         # class 0 train: bit 0 set in 2 of 3 -> majority bit 0 = 1
    deep[3, 5] = 1                              # class 0 held-out clip 3: bit 0 clear (flip), bit 5 set (flip)
    deep[4, 0] = 1                              # class 0 held-out clip 4: equals the majority
    deep[5:, 63] = 1                            # class 1: train clip 5, held-out clip 6, both with bit 63
    codes = np.stack([np.packbits(np.ones_like(deep), axis=1), np.packbits(deep, axis=1)], axis=1)
    path = tmp_path / "codes.npz"
    np.savez(path, codes=codes, bits=np.array(64), activity=np.array([0, 0, 0, 0, 0, 1, 1]),
             split=np.array(["train", "train", "train", "test", "val", "train", "test"]),
             meta=np.array(json.dumps({"activities": ["a", "b"], "model": "mstvh"})))
    s = scale.measure_stats(path)
    a, b = s["classes"]
    assert (a["name"], a["clips"], a["held_out"], b["held_out"]) == ("a", 5, 2, 1)
    assert a["majority"] == "8000000000000000" and b["majority"] == "0000000000000001"
    assert [i for i, f in enumerate(a["flips"]) if f] == [0, 5] and a["flips"][0] == 1 and a["flips"][5] == 1
    assert sum(b["flips"]) == 0
    summ = scale.stats_summary(s)
    assert summ["min_distance_between_majorities"] == 2 and summ["bits_never_flipped"] == 126


def test_cell_filter(scale):
    assert scale.selected(["trained/64"], "trained", 64, 1_000_000)
    assert not scale.selected(["trained/64"], "trained", 128, 1_000_000)
    assert scale.selected(["p15"], "p15", 128, 100_000_000)
    assert scale.selected(["p15/128/100M"], "p15", 128, 100_000_000)
    assert not scale.selected(["p15/128/10M"], "p15", 128, 100_000_000)
    assert scale.parse_n("10M") == 10_000_000 and scale.parse_n("200k") == 200_000


def test_faiss_multihash_made_exact_matches_the_scan(scale):
    pytest.importorskip("faiss")
    from stvh.index import kernel
    if not kernel.AVAILABLE:
        pytest.skip("stvh's C kernel is not built")
    rng = np.random.default_rng(6)
    pool = rng.integers(0, 256, (40, 8), dtype=np.uint8)
    tied = pool[rng.integers(0, 40, 20_000)]                 # many exact duplicates: ties at the k-th distance
    near = scale.draw_codes("p05", 20_000, 64, seed=6, chunk=20_000)
    uniform = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
    fallbacks = []
    one_off = pool[:10].copy()
    one_off[:, 0] ^= 1                                       # 1 bit from 500 duplicates each
    for db, queries in ((tied, one_off), (near, scale.draw_queries("p05", 20, 64, seed=6)),
                        (uniform, uniform[:5] ^ np.uint8(3))):
        for k in (1, 50):
            mh = scale.FaissMHExact(db, 64, k)
            want = kernel.kernel_topk(db, queries, k)
            for i in range(len(queries)):
                pos, dist = mh.search(queries[i:i + 1])
                assert np.array_equal(pos[0], want[0][i]) and np.array_equal(dist[0], want[1][i])
            fallbacks.append(mh.notes["fallback"] / mh.notes["queries"])
    assert fallbacks[:2] == [0, 0] and fallbacks[2] < 0.5   # certified by probing alone (mostly)
    assert fallbacks[5] == 1                                 # uniform, k = 50: the flat index answered


def test_hamming_of_result_ids(scale):
    db = np.array([[0, 0], [255, 0], [1, 3]], np.uint8)
    d = scale.hamming(db, np.array([2, -1, 1]), np.array([1, 1], np.uint8))
    assert d[0] == 1 and d[1] > 128 and d[2] == 8


def test_bad_input_is_one_error_line_with_status_2(scale, tmp_path, capsys):
    bad = tmp_path / "codes.npz"
    np.savez(bad, codes=np.zeros((3, 1, 8), np.uint8), bits=np.array(64), activity=np.zeros(3, int))   # no split
    with pytest.raises(SystemExit) as exc:
        scale.main(["--measure-from", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {bad}:") and "split" in err[0]
    with pytest.raises(SystemExit) as exc:
        scale.main(["--sizes", "1X"])
    assert exc.value.code == 2 and "argument --sizes: invalid size value: '1X'" in capsys.readouterr().err
