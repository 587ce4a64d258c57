"""`stvh extract --pca`: every clip goes through the backbone once (the PCA sample's features are kept, then
projected), with the same cache bytes as when the sample had been elsewhere or the run had been resumed."""

from __future__ import annotations

import functools
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from stvh.data.feature_cache import FeatureCache
from stvh.train import extract as ex

OPTS = dict(progress=False, frame_size=(90, 160), pca=4, batch_clips=2, seed=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2 videos x 6 clips of 3 frames (90x160)."""
    from stvh.data.synth import generate

    root = tmp_path_factory.mktemp("onepass")
    generate(root / "data", matches=2, clips_per_match=6, frames=3, size=(90, 160), progress=False, seed=3)
    return root / "data"


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    """A PCA run fitted on 2 clips (one or two batches of the sample, the others from the main loop)."""
    out = tmp_path_factory.mktemp("full") / "feats"
    r = ex.extract(data, "efficientnet_lite0", out, pca_clips=2, **OPTS)
    assert (r["extracted"], r["cached"], r["channels"]) == (12, 12, 4)
    return out


def differing(a, b) -> list[str]:
    """Clip ids whose cached arrays differ (dtype, shape or bytes) between caches ``a`` and ``b``."""
    ca, cb = FeatureCache(a), FeatureCache(b)
    assert sorted(ca.ids()) == sorted(cb.ids())
    la, lb = ca.load(ca.ids()), cb.load(ca.ids())
    return [i for i in la if la[i].dtype != lb[i].dtype or la[i].tobytes() != lb[i].tobytes()]


def test_each_clip_goes_through_the_backbone_once_with_pca(data, tmp_path, monkeypatch):
    seen: list[str] = []
    maps = ex.RoIExtractor.maps  # the backbone work

    def counting(self, clips, frames):
        seen.extend(c.id for c in clips)
        return maps(self, clips, frames)

    monkeypatch.setattr(ex.RoIExtractor, "maps", counting)
    r = ex.extract(data, "efficientnet_lite0", tmp_path / "f", pca_clips=3, **OPTS)
    ids = sorted(FeatureCache(tmp_path / "f").ids())
    assert r["extracted"] == 12 and len(ids) == 12
    assert sorted(seen) == ids  # each clip once: the sample's clips were not run again after the fit
    assert FeatureCache(tmp_path / "f")[ids[0]].shape[2] == 4


def test_sample_clips_get_the_bytes_of_the_main_loop(data, full, tmp_path):
    """Only pca.npz of the first run: every clip through the main loop with that projection, same bytes."""
    out = tmp_path / "f"
    out.mkdir()
    shutil.copy(full / "pca.npz", out / "pca.npz")
    r = ex.extract(data, "efficientnet_lite0", out, pca_clips=2, **OPTS)
    assert r["extracted"] == 12
    assert differing(full, out) == []


def test_a_killed_pca_run_resumes_to_the_same_bytes(data, full, tmp_path, monkeypatch):
    out = tmp_path / "f"
    # shards of 2 clips (one batch each); the run is killed when the main loop reaches its 3rd batch
    monkeypatch.setattr(ex, "FeatureCacheWriter", functools.partial(ex.FeatureCacheWriter, shard_size=2))
    calls = []
    batch = ex.extract_batch

    def dying(extractor, group, skip_bad, decoded=None):
        if extractor.projection is not None:
            calls.append(group)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return batch(extractor, group, skip_bad, decoded)

    monkeypatch.setattr(ex, "extract_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        ex.extract(data, "efficientnet_lite0", out, pca_clips=2, **OPTS)
    held = len(FeatureCache(out))
    assert 4 <= held < 12 and not list(out.glob(".pca-sample-*"))
    monkeypatch.setattr(ex, "extract_batch", batch)
    r = ex.extract(data, "efficientnet_lite0", out, pca_clips=2, **OPTS)
    assert (r["resumed"], r["extracted"]) == (held, 12 - held)
    assert (out / "pca.npz").read_bytes() == (full / "pca.npz").read_bytes()
    assert differing(full, out) == []


def test_kept_features_spill_to_a_temporary_folder_that_is_removed(data, full, tmp_path, monkeypatch):
    spilled = []
    close = ex._Kept.close

    def closing(self):
        spilled.append(sorted(p.name for p in self.spill.iterdir()) if self.spill else None)
        close(self)

    monkeypatch.setattr(ex, "PCA_KEEP_BYTES", 0)  # nothing in memory: every kept clip goes to disk
    monkeypatch.setattr(ex._Kept, "close", closing)
    out = tmp_path / "f"
    (out / ".pca-sample-stale").mkdir(parents=True)  # left by a killed run
    ex.extract(data, "efficientnet_lite0", out, pca_clips=2, **OPTS)
    assert spilled and spilled[0] and spilled[0][0] == "0.npy"
    assert not list(out.glob(".pca-sample-*"))
    assert differing(full, out) == []


def test_sample_batches_spread_over_training_batches():
    t, x = SimpleNamespace(split="train"), SimpleNamespace(split="test")
    batches = [[t, t], [x, x], [t, x], [t, t], [t]]
    # training batches 0, 2, 3, 4 hold 1.5 training clips each: 3 clips -> every 2nd batch: 0 and 3
    assert ex._sample_batches(batches, 3) == [0, 3]
    # 5 clips: 0 and 3 hold 4, then the others in order: 2
    assert ex._sample_batches(batches, 5) == [0, 2, 3]
    assert ex._sample_batches(batches, 1) == [0]
    assert ex._sample_batches([[x], [x, x]], 2) == [0, 1]  # no training clip: every clip counts


def test_fit_rows_take_real_persons_and_every_second_cell():
    roi = np.arange(3 * 2 * 4 * 5 * 5, dtype=np.float32).reshape(3, 2, 4, 5, 5)  # (N, T, C, s, s)
    mask = np.array([True, False, True])  # (N,): person 1 is padding
    rows = ex.fit_rows(roi, mask)
    assert rows.shape == (2 * 2 * 9, 4)
    # first row: person 0, frame 0, cell (0, 0): channel values 0, 25, 50, 75
    assert rows[0].tolist() == [0, 25, 50, 75]
    # second row: cell (0, 2)
    assert rows[1].tolist() == [2, 27, 52, 77]
    # the last row: person 2, frame 1, cell (4, 4)
    last = roi[2, 1, :, 4, 4]
    assert rows[-1].tolist() == last.tolist()
    assert not np.isin(roi[1], rows).any()


def test_the_next_batch_is_decoded_while_the_backbone_runs(monkeypatch):
    import threading

    from stvh.data.errors import DataError

    decoded_1 = threading.Event()
    events = []

    def read_frames(path):
        if path == "bad":
            raise DataError("unreadable frame", path=path)
        events.append(("decode", path, threading.current_thread().name.startswith("stvh-decode")))
        if path == "b1":
            decoded_1.set()
        return np.zeros((2, 1, 1, 3), np.uint8)

    def backbone(clips, frames):
        # batch 0 waits until batch 1 was decoded: without the read-ahead thread this would time out
        assert clips[0].frames != "b0" or decoded_1.wait(10)
        events.append(("extract", clips[0].frames, False))
        return [np.zeros(1) for _ in clips]

    monkeypatch.setattr(ex, "read_frames", read_frames)
    clip = lambda f: SimpleNamespace(id=f, frames=f)  # noqa: E731
    batches = [[clip("b0")], [clip("b1")], [clip("bad")], [clip("b3")]]
    got = ex.run_batches(backbone, batches, skip_bad=False)
    assert [r.features[0][0].id for r in (next(got), next(got))] == ["b0", "b1"]
    with pytest.raises(DataError, match="unreadable frame"):
        next(got)  # the bad batch's error, in its turn
    assert events == [("decode", "b0", True), ("decode", "b1", True), ("extract", "b0", False),
                      ("extract", "b1", False)]
    skipped = list(ex.run_batches(backbone, batches, skip_bad=True))
    assert [len(r.features) for r in skipped] == [1, 1, 0, 1] and len(skipped[2].skipped) == 1


def test_storage_dtype_keeps_float32_exactly_when_float16_would_lose_values():
    from stvh.data.feature_cache import to_storage_dtype

    base = np.linspace(-3, 6, 200, dtype=np.float32)
    assert to_storage_dtype(base).dtype == np.float16
    for bad in (70000.0, -65520.0, np.nan, np.inf):
        x = base.copy()
        x[7] = bad
        assert to_storage_dtype(x).dtype == np.float32, bad
    x = base.copy()
    x[7] = -65519.0  # rounds to -65504 in float16: kept in float16
    assert to_storage_dtype(x).dtype == np.float16
    tiny = base.copy()
    tiny[:3] = 1e-9  # 3 of 200 nonzero values underflow: more than 1 %
    assert to_storage_dtype(tiny).dtype == np.float32
    tiny[1:3] = 1.0  # 1 of 200: float16
    assert to_storage_dtype(tiny).dtype == np.float16
    assert to_storage_dtype(np.zeros((0, 3), np.float32)).dtype == np.float16


def test_new_lzf_shards_and_old_gzip_shards_read_together(tmp_path):
    import h5py

    from stvh.data.feature_cache import FeatureCacheWriter

    meta = {"backbone": "b", "weights_hash": "w", "frame_size": "native", "roi_size": 5, "channels": 3}
    a = np.arange(2 * 3 * 3 * 5 * 5, dtype=np.float16).reshape(2, 3, 3, 5, 5)
    with FeatureCacheWriter(tmp_path / "f", meta, shard_size=1) as w:
        w.add("v/0", a)
        w.add("v/1", a + 1)
    old = tmp_path / "f" / "shard-00000.h5"
    with h5py.File(old, "r") as fh:
        assert fh["v|0"].compression == "lzf" and fh["v|0"].shuffle
    with h5py.File(old, "w") as fh:  # as an older stvh wrote it
        fh.create_dataset("v|0", data=a * 2, chunks=a.shape, compression="gzip", compression_opts=1, shuffle=True)
    got = FeatureCache(tmp_path / "f").load(["v/0", "v/1"])
    assert got["v/0"].tobytes() == (a * 2).tobytes() and got["v/1"].tobytes() == (a + 1).tobytes()


def test_project_hand_computed():
    from stvh.train.pca import project

    roi = np.zeros((2, 1, 2, 1, 2), np.float32)  # (N, T, C, s, s): 2 persons, 2 channels, 2 cells
    roi[0, 0, :, 0, 0] = [3, 1]
    roi[0, 0, :, 0, 1] = [1, 5]
    roi[1] = 7
    mean = np.array([1, 1], np.float32)
    comps = np.array([[1, 0], [0.5, -1]], np.float32)  # (k, C)
    out = project(roi, mean, comps, np.array([True, False]))
    assert out.shape == (2, 1, 2, 1, 2)
    # cell (0,0): x - mean = (2, 0) -> (2, 1); cell (0,1): (0, 4) -> (0, -4); person 1 is padding: 0
    assert out[0, 0, :, 0, :].tolist() == [[2, 0], [1, -4]]
    assert not out[1].any()


def test_pca_wider_than_the_backbone_is_refused_before_any_work(data, tmp_path, monkeypatch):
    monkeypatch.setattr(ex.RoIExtractor, "raw", lambda *a: pytest.fail("the backbone ran"))
    with pytest.raises(ValueError, match=r"--pca 2000: efficientnet_lite0 gives 1280 channels; keep 1 to 1280"):
        ex.extract(data, "efficientnet_lite0", tmp_path / "f", **{**OPTS, "pca": 2000})
    assert not (tmp_path / "f").exists()


def test_projection_does_not_depend_on_numpy_blas_threads():
    # Ray runs its workers with one BLAS thread; the driver has as many as cores: numpy's float32 matmul
    # gave other last bits there, so `--engine ray` caches differed from the single process. The product
    # now runs in torch on the torch thread count both engines set.
    from threadpoolctl import threadpool_limits

    from stvh.train.pca import project

    rng = np.random.default_rng(0)
    roi = rng.standard_normal((12, 10, 1280, 5, 5)).astype(np.float32)
    mean = rng.standard_normal(1280).astype(np.float32)
    comps = rng.standard_normal((64, 1280)).astype(np.float32)
    with threadpool_limits(1, "blas"):
        one = project(roi, mean, comps)
    with threadpool_limits(2, "blas"):
        two = project(roi, mean, comps)
    assert one.tobytes() == two.tobytes()
    ref = np.einsum("kc,ntcij->ntkij", comps.astype(np.float64), roi.astype(np.float64) - mean[:, None, None])
    np.testing.assert_allclose(one, ref, rtol=1e-4, atol=1e-3)
