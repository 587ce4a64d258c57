"""Stage 1: run the frozen backbone once and cache RoI features (Sec. 4.1).

``extract(data, backbone, out)`` decodes each clip's T frames, runs the CNN
(truncated at stride 32) and RoIAlign 5x5 per person per frame, and stores the
raw ``roi (N, T, C, 5, 5)`` in a :mod:`stvh.data.feature_cache` folder.
Finished shards survive a kill and are skipped when the command is run again;
clips whose inputs changed since (their fingerprint, :mod:`stvh.data.fingerprint`)
are extracted again, and the cache of another dataset is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ..data.errors import DataError
from ..data.feature_cache import CacheError, FeatureCacheWriter
from ..data.fingerprint import VERSION as FINGERPRINT_VERSION
from ..data.fingerprint import clip_fingerprints, combine
from ..data.formats import read_dataset
from ..data.frames import read_frames
from ..data.skipped import write_skipped
from ..models.visual import VisualModule, efficientnet_lite0_weights_path, roi_features, roi_weights
from .pca import Moments, fit_rows, load_pca, save_pca

log = logging.getLogger(__name__)
# Raw RoI features of the PCA sample's batches kept in memory until the fit (beyond: spilled to OUT/.pca-sample-*)
PCA_KEEP_BYTES = 512 << 20


def weights_identity(backbone: str, weights: str | None, seed: int) -> str:
    """A hash of the weights file, or where the weights come from."""
    path = weights or (efficientnet_lite0_weights_path() if backbone == "efficientnet_lite0" else None)
    if path is None:
        return f"random-init-seed{seed}"
    return file_sha256(path)


def _resize(frames: np.ndarray | torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``(T, H, W, 3) uint8`` → ``(T, 3, h, w)`` float in [0, 1], resized when ``size`` is given; a tensor is
    taken as this function's result already (the decode thread resizes ahead, :func:`run_batches`)."""
    if isinstance(frames, torch.Tensor):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x


class RoIExtractor:
    """The frozen backbone + RoIAlign of a cache, as one callable over clips.

    ``extractor(clips) -> list of roi (N, T, C', s, s)`` (C' = PCA channels
    when a projection is set). Shared by ``stvh extract`` and by on-the-fly
    encoding of clips that have no cache (``stvh encode --data``, the service).
    """

    def __init__(self, backbone: str, *, weights: str | None = None, frame_size=None, roi_size: int = 5,
                 device: str | torch.device = "cpu", seed: int = 0, projection=None):
        torch.manual_seed(seed)
        # d = d_v = 1: extraction never runs the learnable RoI embedding, whose default size (a 512x512x27
        # 3-D convolution) took longer to initialise than a batch of clips; the backbone is built first, so
        # a randomly initialised one draws the same numbers as before
        self.module = VisualModule(backbone=backbone, weights=weights, roi_size=roi_size, d=1,
                                   d_v=1).to(device).eval()
        self.frame_size = tuple(frame_size) if frame_size else None
        self.device = torch.device(device)
        self.projection = projection  # (mean, components, explained) or None

    @torch.no_grad()
    def maps(self, clips, frames: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The backbone work for clips of one frame size: ``(maps (B*T, C, H', W'), boxes (B, T, N, 4),
        image sizes (B, 2))``."""
        x = torch.stack([_resize(f, self.frame_size) for f in frames]).to(self.device)
        boxes = torch.from_numpy(np.stack([c.boxes for c in clips])).to(self.device)
        image_size = torch.tensor([c.image_size for c in clips], dtype=torch.float32, device=self.device)
        return self.module.feature_maps(x).contiguous(), boxes, image_size

    @torch.no_grad()
    def rois(self, fmap: torch.Tensor, boxes: torch.Tensor, image_size: torch.Tensor, projection=None) -> np.ndarray:
        """RoI features ``(B, N, T, C', s, s)`` of :meth:`maps`' result; with ``projection`` (mean,
        components, ...) the maps are projected first: RoIAlign is linear with weights summing to the
        same value for every channel, so ``comps @ (roi(F) - mean) == roi(comps @ F) - comps @ mean``
        (to float32 rounding), and C' = k channels are interpolated instead of C."""
        s = self.module.roi_size
        if projection is None:
            return roi_features(fmap, boxes, image_size, s).cpu().numpy()
        comps = torch.from_numpy(np.ascontiguousarray(projection[1], dtype=np.float32)).to(fmap.device)  # (k, C)
        mean = torch.from_numpy(np.asarray(projection[0], dtype=np.float32)).to(fmap.device)  # (C,)
        g = torch.matmul(comps, fmap.flatten(2)).view(fmap.shape[0], -1, *fmap.shape[2:])  # (B*T, k, H', W')
        roi = roi_features(g, boxes, image_size, s)  # (B, N, T, k, s, s)
        return (roi - (comps @ mean)[:, None, None]).cpu().numpy()

    def raw(self, clips, frames: list[np.ndarray]) -> np.ndarray:
        """Unprojected RoI features ``(B, N, T, C, s, s)`` of clips of one frame size."""
        return self.rois(*self.maps(clips, frames))

    def groups(self, clips, frames: list[np.ndarray]) -> list[tuple[list[int], tuple]]:
        """``[(indices of the clips of one frame size, their maps)]``: one backbone call per frame size."""
        out = []
        for size in sorted({c.image_size for c in clips}):
            idx = [i for i, c in enumerate(clips) if c.image_size == size]
            out.append((idx, self.maps([clips[i] for i in idx], [frames[i] for i in idx])))
        return out

    def finish(self, clips, groups, projection=None) -> list[np.ndarray]:
        """Per clip features from :meth:`groups`' maps, padded persons zeroed."""
        out: list[np.ndarray | None] = [None] * len(clips)
        for idx, maps in groups:
            for i, r in zip(idx, self.rois(*maps, projection)):
                r[~clips[i].mask] = 0  # padded persons carry no features
                out[i] = r
        return out

    def __call__(self, clips, frames: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Features of ``clips`` (decoded here unless ``frames`` are given), padded persons zeroed."""
        frames = [read_frames(c.frames) for c in clips] if frames is None else frames
        return self.finish(clips, self.groups(clips, frames), self.projection)


def reader_kwargs(cfg: dict) -> dict:
    """Reader options of a config's ``data`` section (window, n_max and ``data.reader``)."""
    d = cfg["data"]
    kwargs = dict(d.get("reader") or {})
    if d.get("n_max") is not None:
        kwargs["n_max"] = d["n_max"]
    if d.get("window") is not None:
        kwargs["window"] = tuple(d["window"])
    return kwargs


def extract_with_config(cfg: dict, data: str | Path, out: str | Path, **options) -> dict:
    """``stvh extract --config``: backbone, weights, frame size, PCA, reader options and seed from ``cfg``.

    ``options`` (e.g. ``batch_clips``, ``device``, ``progress``, ``skip_bad``) go to :func:`extract`;
    the config decides everything that makes the cache's identity, so ``stvh train`` with the same
    config accepts the cache.
    """
    ext, m = cfg["extract"], cfg["model"]
    if m["backbone"] == "none":
        raise ValueError("model.backbone is 'none' in the config (box geometry only): there is nothing to extract; "
                         "set model.backbone (e.g. efficientnet_lite0) or train without --features")
    return extract(data, m["backbone"], out, weights=m.get("weights"), format=cfg["data"]["format"],
                   frame_size=tuple(ext["frame_size"]) if ext.get("frame_size") else None, pca=ext.get("pca"),
                   seed=int(cfg["seed"]), reader=reader_kwargs(cfg), **options)


def extract(data: str | Path, backbone: str, out: str | Path, *, weights: str | None = None,
            format: str | None = None, frame_size: tuple[int, int] | None = None, batch_clips: int = 4,
            roi_size: int = 5, device: str = "cpu", seed: int = 0, progress: bool = True,
            skip_bad: bool = False, pca: int | None = None, pca_clips: int = 24, reader: dict | None = None,
            engine: str = "local", address: str | None = None, workers: int | None = None, threads: int = 1,
            retries: int = 2) -> dict:
    """Extract and cache RoI features of every clip with frames; returns a summary.

    ``pca=k`` stores the RoI channels projected on their top-k principal
    directions (fitted on ``pca_clips`` training-split clips; see
    :mod:`stvh.train.pca`) instead of the raw C channels. The backbone runs
    once per clip: the sample's batches are kept raw (:func:`_pca_projection`)
    and written projected once the fit is done. Clips without frames
    are counted (``no_frames``); with ``skip_bad`` an undecodable clip is
    skipped, counted and listed in ``OUT/skipped.csv``.

    Clips are batched within their video (:func:`video_batches`), so a clip's
    features do not depend on the engine. ``engine="ray"`` sends one task per
    video to a Ray cluster (``address``; default a local one with ``workers``
    processes of ``threads`` torch threads, :mod:`stvh.train.ray_engine`); this
    process plans, fits the PCA and alone writes the cache. A video that still
    fails after ``retries`` more tries is listed in ``OUT/failed.csv`` (summary
    ``failed_videos``) and the other videos go on.
    """
    dataset = read_dataset(data, format, skip_bad=skip_bad, **(reader or {}))
    clips = [c for c in dataset.clips if c.frames is not None]
    if not clips:
        raise ValueError(f"{data}: none of the {len(dataset.clips)} clips has frames to extract features from "
                         "(tracks-only data: train with model.backbone=none instead)")
    skipped = list(dataset.skipped)
    extractor = RoIExtractor(backbone, weights=weights, frame_size=frame_size, roi_size=roi_size, device=device,
                             seed=seed)
    sizes = {c.image_size for c in clips}
    if pca is not None and not 0 < pca <= extractor.module.in_channels:  # before the sample's backbone work
        raise ValueError(f"--pca {pca}: {backbone} gives {extractor.module.in_channels} channels; keep 1 to "
                         f"{extractor.module.in_channels} of them (extract.pca in a config)")

    fingerprints = clip_fingerprints(clips, data)  # stat calls only: no frame is decoded here
    meta = {"backbone": backbone, "weights_hash": weights_identity(backbone, weights, seed),
            "frame_size": list(frame_size) if frame_size else "native", "roi_size": roi_size,
            "channels": pca or extractor.module.in_channels, "backbone_channels": extractor.module.in_channels,
            "reduction": f"pca{pca}" if pca else "none", "dataset": str(Path(data).resolve()),
            "frames_per_clip": sorted({c.num_frames for c in clips}), "fingerprint_version": FINGERPRINT_VERSION,
            "image_sizes": sorted(list(s) for s in sizes)}
    writer = FeatureCacheWriter(out, meta)  # refuses a cache of another backbone, frame size, PCA or T
    synced = writer.sync(data, fingerprints)  # refuses another dataset's cache; drops changed clips
    if synced["unrecorded"]:
        log.warning("%s recorded no fingerprints of its inputs (made by an older stvh): its %d clips are "
                    "extracted again", out, len(synced["unrecorded"]))
    if engine not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, got {engine!r}")
    changed = set(synced["changed"])
    todo = [c for c in clips if c.id not in writer.done()]
    batches = video_batches(todo, batch_clips)  # the main loop's batches; the PCA sample is made of some
    t0 = time.time()
    first: list[BatchResult] = []  # the PCA sample's batches, extracted by the fit: written first
    if pca is not None:
        if writer.done() and not (Path(out) / "pca.npz").is_file():
            raise CacheError("pca.npz is missing, but the cached clips were projected with it; delete the "
                             "folder and extract again", path=out)
        extractor.projection, first, batches = _pca_projection(Path(out), batches, pca, pca_clips, extractor,
                                                               skip_bad)
        writer.update_meta(pca_explained=float(extractor.projection[2].sum()),
                           pca_sha256=file_sha256(Path(out) / "pca.npz"))
    frames_done = extracted = re_extracted = 0
    failed: list[DataError] = []
    work = [c for b in batches for c in b]
    bar = tqdm(total=len(todo), desc="extract", unit="clip", disable=not progress)
    if engine == "ray":
        from .ray_engine import extract_videos
        # a worker batches a video's clips again (video_batches): the PCA sample took whole batches out of
        # it, all full but perhaps the last, so the batches left are cut the same way
        rest = extract_videos(extractor, work, batch_clips=batch_clips, skip_bad=skip_bad, address=address,
                              workers=workers, threads=threads, retries=retries)
    else:
        rest = run_batches(extractor, batches, skip_bad)
    results = itertools.chain(first, rest)
    try:
        for res in results:
            for c, r in res.features:
                writer.add(c.id, r, fingerprints[c.id])
            skipped.extend(res.skipped)
            if res.failure is not None:
                failed.append(res.failure)
            frames_done += res.frames
            extracted += len(res.features)
            re_extracted += sum(c.id in changed for c, _ in res.features)
            bar.update(res.planned)
            bar.set_postfix(clips_per_s=f"{bar.n / max(time.time() - t0, 1e-9):.2f}")
    finally:
        bar.close()
        writer.close()  # keep every finished clip, also after Ctrl-C or an error
        close = getattr(rest, "close", None)
        if close is not None:
            close()  # the Ray engine shuts down the cluster it started
    stored = writer.stored_fingerprints()
    writer.update_meta(clips=len(stored), dataset_fingerprint=combine({c: str(f) for c, f in stored.items()}))
    seconds = time.time() - t0
    if skip_bad:
        write_skipped(Path(out) / "skipped.csv", skipped)
    if failed or (Path(out) / "failed.csv").exists():
        write_skipped(Path(out) / "failed.csv", failed)  # rewritten by every run: what failed this time
    return {"features": str(out), "backbone": backbone, "clips": len(dataset.clips), "cached": len(stored),
            "extracted": extracted, "resumed": len(clips) - len(todo), "re_extracted": re_extracted,
            "dropped": len(synced["dropped"]),
            "no_frames": len(dataset.clips) - len(clips), "seconds": round(seconds, 2),
            "clips_per_s": round(extracted / seconds, 2) if seconds > 0 and extracted else None,
            "frames_per_s": round(frames_done / seconds, 2) if seconds > 0 and extracted else None,
            "channels": pca or extractor.module.in_channels, "skipped": len(skipped), "engine": engine,
            "failed_videos": sorted({e.clip for e in failed if e.clip})}


class BatchResult(NamedTuple):
    """What one batch (local engine) or one video (Ray engine) gave: ``planned`` clips were asked for;
    ``features`` ``[(clip, roi (N, T, C, s, s))]``; ``skipped`` the clips ``--skip-bad`` dropped;
    ``frames`` decoded; ``failure``: the video's error after its retries (``None``: it ran)."""

    planned: int
    features: list
    skipped: list
    frames: int
    failure: DataError | None = None


def video_batches(clips, batch_clips: int) -> list[list]:
    """``clips`` grouped by video (first-seen order), each video cut into batches of ``batch_clips``.

    The backbone's float results depend on the batch size (1 vs 4 clips differ in the last bits on one
    thread), so both engines batch within a video: a clip's bytes are the same whichever engine ran it.
    """
    videos: dict[str, list] = {}
    for c in clips:
        videos.setdefault(c.video, []).append(c)
    return [v[i:i + batch_clips] for v in videos.values() for i in range(0, len(v), batch_clips)]


def decode_batch(group, skip_bad: bool) -> tuple[list, list[np.ndarray], list[DataError]]:
    """``(clips kept, their frames (T, H, W, 3), skipped errors)``: an undecodable clip raises, or with
    ``skip_bad`` is skipped."""
    keep, frames, skipped = [], [], []
    for c in group:
        try:
            frames.append(read_frames(c.frames))
            keep.append(c)
        except DataError as err:
            if not skip_bad:
                raise
            err.clip = err.clip or c.id
            skipped.append(err)
    return keep, frames, skipped


def extract_batch(extractor: RoIExtractor, group, skip_bad: bool, decoded=None) -> BatchResult:
    """Decode (unless ``decoded``, :func:`decode_batch`'s result, is given) and extract one batch."""
    keep, frames, skipped = decode_batch(group, skip_bad) if decoded is None else decoded
    feats = list(zip(keep, extractor(keep, frames))) if keep else []
    return BatchResult(len(group), feats, skipped, sum(len(f) for f in frames))


def map_batch(extractor: RoIExtractor, group, skip_bad: bool, decoded=None) -> BatchResult:
    """:func:`extract_batch` up to the maps: ``features`` is ``[(clips kept, RoIExtractor.groups(...))]``."""
    keep, frames, skipped = decode_batch(group, skip_bad) if decoded is None else decoded
    feats = [(keep, extractor.groups(keep, frames))] if keep else []
    return BatchResult(len(group), feats, skipped, sum(len(f) for f in frames))


def _decode_resized(extractor: RoIExtractor, group, skip_bad: bool):
    """:func:`decode_batch` with the frames resized as the backbone takes them (the same numbers as in
    the main thread: the resize works frame by frame)."""
    keep, frames, skipped = decode_batch(group, skip_bad)
    size = getattr(extractor, "frame_size", None)
    return keep, [_resize(f, size) for f in frames], skipped


def run_batches(extractor: RoIExtractor, batches: list[list], skip_bad: bool, work=None):
    """``work`` (default :func:`extract_batch`) of each batch in order, the next batch's frames decoded and
    resized in a thread meanwhile (JPEG decoding and torch release the GIL: on a second core it hides behind
    the backbone)."""
    if not batches:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="stvh-decode") as pool:
        ahead = pool.submit(_decode_resized, extractor, batches[0], skip_bad)
        for i, group in enumerate(batches):
            decoded = ahead.result()  # a decoding error is raised here, in order
            if i + 1 < len(batches):
                ahead = pool.submit(_decode_resized, extractor, batches[i + 1], skip_bad)
            yield (work or extract_batch)(extractor, group, skip_bad, decoded)


def file_sha256(path: Path) -> str:
    """``sha256:<16 hex digits>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def _sample_batches(batches: list[list], n_clips: int) -> list[int]:
    """Indices (ascending) of the batches whose training clips make the PCA sample: spread evenly over the
    batches holding training clips (all batches when none does), until they hold ``n_clips`` of them."""
    train = [i for i, b in enumerate(batches) if any(c.split != "test" for c in b)]
    cands = train or list(range(len(batches)))
    per_batch = sum(_fit_clip_count(batches[i], bool(train)) for i in cands) / max(len(cands), 1)
    step = max(int(len(cands) // max(n_clips / max(per_batch, 1e-9), 1)), 1)
    spread = cands[::step]
    chosen, n = [], 0
    for i in spread + [i for i in cands if i not in set(spread)]:
        if n >= n_clips:
            break
        chosen.append(i)
        n += _fit_clip_count(batches[i], bool(train))
    return sorted(chosen)


def _fit_clip_count(batch, train_only: bool) -> int:
    return sum(c.split != "test" for c in batch) if train_only else len(batch)


class _Kept:
    """Raw features of the sample's batches until the fit is done: in memory up to ``limit`` bytes, beyond
    that each clip's array in a ``.npy`` file of a temporary folder inside ``out`` (removed by :meth:`close`)."""

    def __init__(self, out: Path, limit: int):
        self.out, self.limit, self.held, self.spill = out, limit, 0, None

    def keep(self, r: np.ndarray):
        if self.held + r.nbytes <= self.limit:
            self.held += r.nbytes
            return r
        if self.spill is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.spill = Path(tempfile.mkdtemp(prefix=".pca-sample-", dir=self.out))
        path = self.spill / f"{len(list(self.spill.iterdir()))}.npy"
        np.save(path, r)
        return path

    @staticmethod
    def get(item) -> np.ndarray:
        return np.load(item) if isinstance(item, Path) else item

    def close(self) -> None:
        if self.spill is not None:
            shutil.rmtree(self.spill, ignore_errors=True)


def _pca_projection(out: Path, batches: list[list], k: int, n_clips: int, extractor: RoIExtractor, skip_bad: bool,
                    keep_bytes: int | None = None):
    """``(projection, sample results, batches left)``: ``out/pca.npz`` loaded, or fitted on real persons of
    ``n_clips`` training-split clips.

    A fit runs the sample's whole batches (:func:`_sample_batches`) as the main loop would, keeps their raw
    features (:class:`_Kept`, ``keep_bytes`` in memory, default :data:`PCA_KEEP_BYTES`), fits, and returns
    them projected: each clip goes through the backbone once, with the same bytes as from the main loop.
    """
    path = out / "pca.npz"
    if path.exists():
        mean, comps, ratio = load_pca(path)
        if comps.shape[0] != k:
            raise ValueError(f"{path} keeps {comps.shape[0]} channels, not {k}; use another --out folder")
        return (mean, comps, ratio), [], batches
    chosen = _sample_batches(batches, n_clips)
    train_only = any(c.split != "test" for i in chosen for c in batches[i])
    for stale in out.glob(".pca-sample-*"):  # left by a killed fit (the command holds the --out lock)
        shutil.rmtree(stale, ignore_errors=True)
    kept = _Kept(out, PCA_KEEP_BYTES if keep_bytes is None else keep_bytes)
    s = extractor.module.roi_size
    try:
        results, moments, n = [], Moments(), 0
        for res in run_batches(extractor, [batches[i] for i in chosen], skip_bad, work=map_batch):
            for clips, groups in res.features:
                held = []
                for idx, (fmap, boxes, size) in groups:
                    weights = roi_weights(boxes, size, fmap.shape[-2:], s)  # (B, T, N, s, s, P)
                    maps = fmap.flatten(2).view(len(idx), -1, *fmap.flatten(2).shape[1:])  # (B, T, C, P)
                    for j, i in enumerate(idx):
                        c = clips[i]
                        if n < n_clips and (c.split != "test" or not train_only):
                            if c.mask.any():  # fit_rows' rows: real persons, every frame, every second cell
                                w = weights[j][:, torch.from_numpy(c.mask).to(weights.device)][:, :, ::2, ::2]
                                moments.add(maps[j], w.reshape(w.shape[0], -1, w.shape[-1]))
                            n += 1
                    held.append((idx, (kept.keep(fmap.cpu().numpy()), boxes, size)))  # the maps wait for the fit
                results.append(res._replace(features=[(clips, held)]))
        if not n:
            raise ValueError("no clip of the PCA sample could be decoded (--pca needs frames)")
        mean, comps, ratio = moments.fit(k)
        del moments
        out.mkdir(parents=True, exist_ok=True)
        save_pca(path, mean, comps, ratio)
        log.info("PCA %d -> %d channels keeps %.1f%% of the variance", comps.shape[1], k, 100 * ratio.sum())
        projected = []
        for res in results:  # the main loop's computation on the same maps: the same bytes
            feats = []
            for clips, held in res.features:
                groups = [(idx, (torch.from_numpy(kept.get(f)).to(extractor.device), b, sz))
                          for idx, (f, b, sz) in held]
                feats.extend(zip(clips, extractor.finish(clips, groups, (mean, comps, ratio))))
            projected.append(res._replace(features=feats))
    finally:
        kept.close()
    left = [b for i, b in enumerate(batches) if i not in set(chosen)]
    return (mean, comps, ratio), projected, left
