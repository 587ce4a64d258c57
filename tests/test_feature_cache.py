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
