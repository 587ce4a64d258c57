"""Encoding: a trained run → the codes of every depth for every clip (a CODES file).

Besides the codes, ``encode`` stores the model's activity and action
predictions (``predictions.npz`` beside the codes) for the evaluation, and, for
multi-depth models, the filter matrix F of Sec. 5.4 (Eq. 16-17) of the run:
fitted on the **training split's** codes when training ended (never on test;
``RUN/filter.npz``), so shallower codes can be derived from the deepest one.

``Encoder`` loads a run once and encodes clip records in memory: from a feature
cache, or, for clips without one (another dataset, an upload), by running the
run's backbone with the run's cache settings (frame size, PCA) on the fly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from ..data.atomic import atomic_path
from ..data.clip import UNKNOWN, Clip, ClipDataset
from ..data.feature_cache import FeatureCache
from ..data.skipped import write_skipped
from ..index.codes import CodeSet
from ..models.filter import fit_filter
from .checkpoint import CheckpointError, check_same_model, load_checkpoint, read_run_info
from .config import complete_config
from ..data.formats import detect_format, read_dataset
from .extract import reader_kwargs
from .loop import LoadedData, check_run_cache, epochs_done, load_data, model_from_config, predict, resolve_device
from .tensors import clips_to_tensors


def load_run(run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"):
    """(model in eval mode, config, run info, checkpoint state) of a run folder."""
    run = Path(run)
    info = read_run_info(run)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"--checkpoint must be best or last, got {checkpoint!r}")
    path = run / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.exists():
        path = run / "last.pt"
    state = load_checkpoint(path)
    cfg = complete_config(state["config"])
    run_cfg = run_config(run)
    if run_cfg is not None:  # a checkpoint copied from another run: name it before its shapes clash
        check_same_model(path, cfg, run_cfg)
    model = model_from_config(cfg, len(info["activities"]), len(info["actions"]), info.get("in_channels"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match its configuration ({str(exc)[:160]})") from None
    return model.to(device).eval(), cfg, info, state


def run_config(run: str | Path) -> dict | None:
    """The run's ``config.yaml`` completed with today's defaults, or ``None`` when the run has none."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{path} is corrupt ({str(exc).splitlines()[0]}); it is written by `stvh train`") \
            from None
    try:
        return complete_config(raw)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {str(exc).splitlines()[0]}") from None


def run_filter(run: str | Path, bits: int | None = None) -> np.ndarray | None:
    """The run's filter matrix F ``(K, K)`` (``RUN/filter.npz``), or ``None`` when it has none.

    With ``bits``, an F of another size (the file of another run) is refused naming the file.
    """
    path = Path(run) / "filter.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            f = z["filter"].astype(np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}); delete it to refit F when encoding") from None
    if bits is not None and f.shape != (bits, bits):
        raise CheckpointError(f"{path} holds a {'x'.join(map(str, f.shape))} filter matrix but the run's model has "
                              f"{bits}-bit codes (K x K = {bits}x{bits}); it comes from another run? delete it to "
                              "refit F when encoding")
    return f


class Encoder:
    """A run loaded once: ``encode_clips(clips) -> {"codes" (M, depth, K) int8 ±1, "activity" (M,)}``.

    For CNN backbones the features of clips come from ``roi`` (a feature cache's
    arrays) when given, else the run's backbone runs on the clips' frames with
    the settings of the run's cache (backbone, weights, frame size, PCA).
    """

    def __init__(self, run: str | Path, checkpoint: str = "best", device: str = "cpu"):
        self.run = Path(run)
        self.device = resolve_device(device)
        self.model, self.cfg, self.info, self.state = load_run(run, checkpoint, self.device)
        self.activities = tuple(self.info["activities"])
        self.actions = tuple(self.info["actions"])
        self.backbone = self.cfg["model"]["backbone"]
        self._extractor = None
        self.depth = len(self.model.activity_heads)  # one activity head per depth
        self.bits = int(self.cfg["model"]["bits"])

    def extractor(self):
        """The run's backbone + RoIAlign (+ PCA) with its cache's settings, built on first use."""
        if self._extractor is None:
            from .extract import RoIExtractor, weights_identity
            from .pca import load_pca  # noqa: I001

            feats = self.info.get("features")
            if not feats or not Path(feats, "meta.json").is_file():
                raise ValueError(f"run {self.run} was trained on the feature cache {feats}, which is gone; "
                                 "extract features of the new data with the run's config and pass --features")
            meta = FeatureCache(feats).meta
            weights = self.cfg["model"].get("weights")
            seed = int(str(meta["weights_hash"]).rsplit("seed", 1)[1]) if str(meta["weights_hash"]).startswith(
                "random-init") else 0
            if weights_identity(meta["backbone"], weights, seed) != meta["weights_hash"]:
                raise ValueError(f"the run's cache {feats} was made with backbone weights {meta['weights_hash']}, "
                                 "which are not available here; pass --features of a cache made with them")
            projection = load_pca(Path(feats) / "pca.npz") if meta.get("reduction", "none") != "none" else None
            fs = meta.get("frame_size")
            self._extractor = RoIExtractor(meta["backbone"], weights=weights, seed=seed,
                                           frame_size=None if fs == "native" else tuple(fs),
                                           roi_size=int(meta.get("roi_size", 5)), device=self.device,
                                           projection=projection)
        return self._extractor

    def features(self, clips: list[Clip]) -> dict[str, np.ndarray] | None:
        """RoI features of ``clips`` computed from their frames (``None`` for ``backbone: none``)."""
        if self.backbone == "none":
            return None
        missing = [c.id for c in clips if c.frames is None]
        if missing:
            raise ValueError(f"{len(missing)} clips have no frames (first: {missing[0]}); the run's backbone "
                             f"{self.backbone!r} needs them")
        from .extract import video_batches

        ex = self.extractor()
        out: dict[str, np.ndarray] = {}
        for part in video_batches(clips, 4):  # within a video, as `stvh extract`: the same bytes on every engine
            out.update(zip((c.id for c in part), ex(part)))
        return out

    def encode_clips(self, clips: list[Clip], roi: dict[str, np.ndarray] | None = None,
                     batch_size: int = 64) -> dict[str, np.ndarray]:
        """Codes ``(M, depth, K)`` in ±1 (int8), predicted activity of the deepest head ``(M,)``,
        all heads' predictions ``activity_all (M, depth)`` and actions ``(M, N)`` (-1 without an action head)."""
        if roi is None:
            roi = self.features(clips)
        videos: dict[str, list[Clip]] = {}
        for c in clips:
            videos.setdefault(c.video, []).append(c)
        clips = [c for v in videos.values() for c in v]  # video by video (a no-op for readers' order)
        # predicted video by video: the model's floats depend on the batch size, so each clip gets the
        # same batches whichever engine runs it (stvh.train.ray_engine)
        parts = [predict(self.model, clips_to_tensors(v, roi), self.device, batch_size) for v in videos.values()]
        pred = {k: np.concatenate([p[k] for p in parts]) for k in ("codes", "activity", "actions")}
        return {"codes": pred["codes"], "activity": pred["activity"][:, -1], "activity_all": pred["activity"],
                "actions": pred["actions"], "tensors": clips_to_tensors(clips)}


def map_labels(dataset: ClipDataset, activities: tuple[str, ...]) -> dict[str, int]:
    """Map the dataset's activity ids onto the run's vocabulary by name (in place).

    Returns ``{label: clips}`` of labels the run does not know; those clips
    become unlabeled (they can be encoded and searched, not evaluated).
    """
    if tuple(dataset.activities) == tuple(activities):
        return {}
    lookup = {name.lower(): i for i, name in enumerate(activities)}
    unknown: dict[str, int] = {}
    for c in dataset.clips:
        if c.activity == UNKNOWN:
            continue
        name = dataset.activities[c.activity]
        if name.lower() in lookup:
            c.activity = lookup[name.lower()]
        else:
            unknown[name] = unknown.get(name, 0) + 1
            c.activity = UNKNOWN
    dataset.activities = tuple(activities)
    return unknown


def encode(run: str | Path, out: str | Path, *, data: str | Path | None = None, features: str | Path | None = None,
           checkpoint: str = "best", device: str = "auto", batch_size: int = 64, skip_bad: bool = False,
           log=print, before_write: Callable[[CodeSet], None] | None = None, engine: str = "local",
           address: str | None = None, workers: int | None = None, threads: int = 1, retries: int = 2,
           progress: bool = False) -> dict:
    """Write the CODES file ``out`` (and ``<out>.predictions.npz``) for every clip of the dataset.

    ``data`` defaults to the run's dataset. Another dataset is read with the run's
    reader options, its labels are mapped onto the run's by name (unknown labels
    are reported and encoded as unlabeled), and, for CNN backbones without
    ``features``, its RoI features are computed from its frames on the fly.
    ``before_write(code_set)`` may refuse the codes (raise) before any file is
    written (``stvh eval`` checks both splits are there).

    ``engine="ray"`` encodes one video per Ray task (:mod:`stvh.train.ray_engine`; ``address``,
    ``workers``, ``threads``, ``retries`` as for ``stvh extract``) with the same codes as the single
    process; a video that fails after its retries is left out of the codes and named in
    ``<out>.failed.csv`` (summary ``failed_videos``).
    """
    enc = Encoder(run, checkpoint, "cpu" if engine == "ray" else device)  # Ray workers run on CPUs
    cfg, info = enc.cfg, enc.info
    own_data = data is None or Path(data).resolve() == Path(info["data"]).resolve()
    data = Path(info["data"]) if data is None else Path(data)
    if features is None and own_data and enc.backbone != "none":
        features = info.get("features")
    if own_data:
        loaded = load_data(cfg, data, features, skip_bad=skip_bad, require_features=False, run=run)
    else:
        loaded = _load_other(cfg, info.get("format"), data, features, skip_bad)
        if loaded.cache_meta is not None:  # features of other data: made with the run's settings?
            check_run_cache(Path(run), info, loaded.cache_meta, features, own_data=False)
    for note in loaded.notes:  # e.g. the run's data changed since training
        log(f"note: {note}")
    dataset, roi = loaded.dataset, loaded.roi
    if not dataset.clips:
        raise ValueError(f"{data}: no clip to encode" + (f" ({len(loaded.without_features)} have no features or "
                                                         "frames)" if loaded.without_features else ""))
    unknown = map_labels(dataset, enc.activities)
    if unknown:
        log(f"note: {sum(unknown.values())} clips have activities the model does not know "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(unknown.items()))}); encoded as unlabeled")
    if loaded.without_features:
        log(f"note: {len(loaded.without_features)} clips have no features or frames and are not encoded "
            f"(first: {loaded.without_features[0]})")
    failures: list = []
    if engine == "ray":
        from .ray_engine import encode_videos

        kept, pred, failures = encode_videos(enc, dataset.clips, roi, batch_size=batch_size, address=address,
                                             workers=workers, threads=threads, retries=retries, progress=progress)
        if not kept:
            raise ValueError(f"every video failed on Ray; first: {failures[0]}")
        dataset.clips = kept
        pred["tensors"] = clips_to_tensors(kept)
    elif engine == "local":
        pred = enc.encode_clips(dataset.clips, roi, batch_size)
    else:
        raise ValueError(f"--engine must be local or ray, got {engine!r}")
    tensors = pred["tensors"]
    codes = pred["codes"]  # (M, depth, K)
    depth = codes.shape[1]
    filt = run_filter(run, codes.shape[2]) if depth > 1 else None
    if filt is None and depth > 1:  # runs trained before F was stored with the run: fit on training rows
        train_rows = np.array([s not in ("test",) for s in tensors.splits])
        per_depth = [torch.from_numpy(codes[train_rows, t].astype(np.float32)) for t in range(depth)]
        torch.manual_seed(int(cfg["seed"]))
        fm = fit_filter(per_depth, steps=int(cfg["filter"]["steps"]), lr=float(cfg["filter"]["lr"]))
        filt = fm.weight.detach().cpu().numpy()
    meta = {"model": cfg["model"]["name"], "run": str(Path(run).resolve()), "seed": cfg["seed"],
            "epoch": epochs_done(enc.state), "activities": list(enc.activities), "actions": list(enc.actions),
            "data": str(data)}
    code_set = CodeSet.from_signs(tensors.ids, codes, activity=tensors.activity.numpy(),
                                  group=np.array(tensors.groups), split=np.array(tensors.splits),
                                  filter=filt, meta=meta)
    if before_write is not None:
        before_write(code_set)
    out = Path(out)
    code_set.save(out)
    with atomic_path(predictions_path(out)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(tensors.ids), activity_pred=pred["activity_all"], action_pred=pred["actions"],
                     action_true=tensors.actions.numpy(), mask=tensors.mask.numpy())
    if skip_bad:
        write_skipped(skipped_path(out), dataset.skipped)
    if failures or failed_path(out).exists():
        write_skipped(failed_path(out), failures)  # rewritten by every run: what failed this time
    return {"codes": str(out), "clips": len(code_set), "bits": code_set.bits, "depth": depth,
            "filter": filt is not None, "unknown_labels": unknown,
            "without_features": len(loaded.without_features), "skipped": len(dataset.skipped), "engine": engine,
            "failed_videos": sorted(e.clip for e in failures)}


def _load_other(cfg: dict, run_format: str | None, data: Path, features, skip_bad: bool) -> LoadedData:
    """Another dataset for a trained run: its format is detected; the run's reader options apply only when
    the format is the run's. Without ``features`` a CNN run computes features from the frames later."""
    fmt = detect_format(data)
    same = fmt == (cfg["data"]["format"] or run_format)
    d = cfg["data"] if same else {**cfg["data"], "reader": {}, "window": None, "n_max": None}
    other = {**cfg, "data": {**d, "format": fmt}}
    if features is not None or cfg["model"]["backbone"] == "none":
        return load_data(other, data, features, skip_bad=skip_bad, require_features=False)
    dataset = read_dataset(data, fmt, skip_bad=skip_bad, **reader_kwargs(other))
    without = [c.id for c in dataset.clips if c.frames is None]
    dataset.clips = [c for c in dataset.clips if c.frames is not None]
    return LoadedData(dataset, None, None, without)


def predictions_path(codes_path: str | Path) -> Path:
    p = Path(codes_path)
    return p.with_name(p.name.removesuffix(".npz") + ".predictions.npz")


def failed_path(codes_path: str | Path) -> Path:
    """``CODES.failed.csv``: the videos the Ray engine could not encode (skipped.csv's columns)."""
    p = Path(codes_path)
    return p.with_name(p.name.removesuffix(".npz") + ".failed.csv")


def skipped_path(codes_path: str | Path) -> Path:
    p = Path(codes_path)
    return p.with_name(p.name.removesuffix(".npz") + ".skipped.csv")
