"""Feature cache: round trip, resume after a kill, mismatch refused, corrupt shard."""

from __future__ import annotations

import numpy as np
import pytest

from stvh.data.feature_cache import CacheError, CacheMismatch, FeatureCache, FeatureCacheWriter

META = {"backbone": "mobilenet_v3_small", "weights_hash": "abc", "frame_size": [90, 160], "roi_size": 5,
        "channels": 3}


def roi(seed):
    return np.random.default_rng(seed).standard_normal((2, 3, 3, 5, 5)).astype(np.float16)


def test_round_trip_and_shards(tmp_path):
    with FeatureCacheWriter(tmp_path / "f", META, shard_size=2) as w:
        for i in range(5):
            w.add(f"v/{i}", roi(i))
    cache = FeatureCache(tmp_path / "f")
    assert len(cache) == 5 and len(list((tmp_path / "f").glob("shard-*.h5"))) == 3
    np.testing.assert_array_equal(cache["v/3"], roi(3))
    assert cache["v/3"].dtype == np.float16 and "v/4" in cache and "v/9" not in cache
    with pytest.raises(CacheError, match="v/9 is not in the cache"):
        cache.load(["v/9"])


def test_resume_after_kill_keeps_finished_shards(tmp_path):
    w = FeatureCacheWriter(tmp_path / "f", META, shard_size=2)
    for i in range(3):
        w.add(f"v/{i}", roi(i))
    # killed here: clip 2 was pending, never flushed
    w2 = FeatureCacheWriter(tmp_path / "f", META, shard_size=2)
    assert w2.done() == {"v/0", "v/1"}
    w2.add("v/2", roi(2))
    w2.close()
    cache = FeatureCache(tmp_path / "f")
    assert sorted(cache.ids()) == ["v/0", "v/1", "v/2"]
    with pytest.raises(ValueError, match="already"):
        FeatureCacheWriter(tmp_path / "f", META).add("v/0", roi(0))


def test_other_backbone_refused(tmp_path):
    FeatureCacheWriter(tmp_path / "f", META).close()
    with pytest.raises(CacheMismatch, match="backbone is 'mobilenet_v3_small' in the cache but 'resnet18'"):
        FeatureCacheWriter(tmp_path / "f", {**META, "backbone": "resnet18"})
    with pytest.raises(CacheMismatch, match="frame_size"):
        FeatureCache(tmp_path / "f").check(frame_size=[180, 320])


def test_corrupt_shard_and_missing_meta(tmp_path):
    with FeatureCacheWriter(tmp_path / "f", META) as w:
        w.add("v/0", roi(0))
    shard = next((tmp_path / "f").glob("shard-*.h5"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CacheError, match="shard-00000.h5.*corrupt"):
        FeatureCache(tmp_path / "f")
    with pytest.raises(CacheError, match="meta.json missing"):
        FeatureCache(tmp_path)


def test_tiny_values_are_kept_in_float32(tmp_path):
    tiny = (roi(1).astype(np.float32) * 1e-8)
    with FeatureCacheWriter(tmp_path / "f", META) as w:
        w.add("v/0", tiny)
        w.add("v/1", roi(2))
    cache = FeatureCache(tmp_path / "f")
    assert cache["v/0"].dtype == np.float32 and np.array_equal(cache["v/0"], tiny)
    assert cache["v/1"].dtype == np.float16


def fill(path, fps: dict, shard_size=2):
    """A cache of clips ``v/i`` whose roi is ``roi(i)``, recorded with ``fps[id]``, made for dataset /d."""
    w = FeatureCacheWriter(path, {**META, "dataset": "/d"}, shard_size=shard_size)
    for cid, fp in fps.items():
        w.add(cid, roi(int(cid[2:])), fp)
    w.close()
    return w


def test_sync_removes_changed_and_gone_clips_and_keeps_the_others_bit_for_bit(tmp_path):
    fill(tmp_path / "f", {f"v/{i}": f"fp{i}" for i in range(5)})  # shards: 0 (v/0, v/1) 1 (v/2, v/3) 2 (v/4)
    w = FeatureCacheWriter(tmp_path / "f", META, shard_size=2)
    now = {"v/0": "fp0", "v/1": "NEW", "v/4": "fp4"}  # v/1 edited; v/2, v/3 gone from the dataset
    res = w.sync("/d", now)
    assert (res["changed"], res["dropped"], res["unrecorded"]) == (["v/1"], ["v/2", "v/3"], [])
    assert w.done() == {"v/0", "v/4"}
    assert sorted(p.name for p in (tmp_path / "f").glob("shard-*.h5")) == ["shard-00000.h5", "shard-00002.h5"]
    w.add("v/1", roi(11), "NEW")
    w.close()  # a new shard after the last one, never over a remaining one
    cache = FeatureCache(tmp_path / "f")
    assert sorted(p.name for p in (tmp_path / "f").glob("shard-*.h5"))[-1] == "shard-00003.h5"
    assert cache.fingerprints() == now
    np.testing.assert_array_equal(cache["v/1"], roi(11))
    for i in (0, 4):
        np.testing.assert_array_equal(cache[f"v/{i}"], roi(i))


def test_sync_refuses_another_datasets_cache_and_accepts_a_moved_one(tmp_path):
    fps = {f"v/{i}": f"fp{i}" for i in range(4)}
    fill(tmp_path / "f", fps)
    w = FeatureCacheWriter(tmp_path / "f", META)
    with pytest.raises(CacheMismatch, match=r"holds features of /d \(4 clips, fingerprint \w+\), not of /e"):
        w.sync("/e", {"v/0": "x", "v/1": "y", "v/2": "fp2", "v/3": "z"})  # 1 of 4 unchanged: other data
    with pytest.raises(CacheMismatch, match="holds features of /d"):
        w.sync("/e", {"v/0": "fp0", "v/1": "fp1", "v/2": "fp2"})  # a part of it: v/3 would be lost
    assert len(FeatureCache(tmp_path / "f")) == 4
    res = w.sync("/e", {**fps, "v/3": "edited", "v/9": "new"})  # moved, then one clip edited, one added
    assert res["changed"] == ["v/3"] and FeatureCache(tmp_path / "f").meta["dataset"] == "/e"


def test_old_cache_without_fingerprints_is_extracted_again(tmp_path):
    fill(tmp_path / "f", {"v/0": None, "v/1": None})
    cache = FeatureCache(tmp_path / "f")
    assert cache.fingerprints() == {"v/0": None, "v/1": None}
    assert cache.check_inputs({"v/0": "a", "v/1": "b"}, "/d") == ["v/0", "v/1"]  # unknown: said, not refused
    res = FeatureCacheWriter(tmp_path / "f", META).sync("/d", {"v/0": "a", "v/1": "b"})
    assert res["changed"] == res["unrecorded"] == ["v/0", "v/1"] and len(FeatureCache(tmp_path / "f")) == 0


def test_check_inputs_names_the_cache_the_data_and_the_first_changed_clip(tmp_path):
    fill(tmp_path / "f", {"v/0": "a", "v/1": "b", "v/2": "c"})
    cache = FeatureCache(tmp_path / "f")
    assert cache.check_inputs({"v/0": "a", "v/1": "b", "v/7": "q"}, "/d") == []  # v/7 not cached: not checked
    with pytest.raises(CacheMismatch) as err:
        cache.check_inputs({"v/0": "a", "v/1": "B", "v/2": "C"}, "/x")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'f'}: feature cache mismatch: 2 of 3 cached clips")
    assert "first: v/1" in msg and "(the cache was extracted from /d)" in msg and "stvh extract --data /x" in msg


def test_other_T_refused_but_unrecorded_T_accepted(tmp_path):
    FeatureCacheWriter(tmp_path / "f", {**META, "frames_per_clip": [10]}).close()
    with pytest.raises(CacheMismatch, match=r"frames_per_clip is \[10\] in the cache but \[5\] now \(T: data.window"):
        FeatureCacheWriter(tmp_path / "f", {**META, "frames_per_clip": [5]})
    FeatureCacheWriter(tmp_path / "g", META).close()  # an older cache records no T
    FeatureCacheWriter(tmp_path / "g", {**META, "frames_per_clip": [5]}).close()
