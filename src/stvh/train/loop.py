"""The training loop (Sec. 4.6 / 5.3): readable in one sitting.

``fit(cfg, data_dir, features, out)`` trains any registry model on a dataset,
selects the checkpoint on a validation part of the train split (never on
test), and writes a run folder::

    RUN/config.yaml       resolved configuration
    RUN/run.json          dataset, features, label vocabularies, seed
    RUN/metrics.csv       one row per epoch (losses, val metrics, lr); epochs count from 1
    RUN/last.pt           model, optimizer, scheduler, epoch, RNG state, config
    RUN/best.pt           the checkpoint with the best validation score
    RUN/filter.npz        the filter matrix F (Sec. 5.4) fitted on the training codes of best.pt
    RUN/skipped.csv       with ``skip_bad``: every skipped input (file, line, kind, message)

``fit(..., resume=True)`` continues after a kill and ends with the same
weights as an uninterrupted run of the same seed: the shuffling of epoch e is
drawn from ``(seed, e)`` and the RNG state is stored at every epoch's end.
Multi-GPU: launch with ``torchrun --nproc_per_node G -m stvh.cli train ...``;
each process takes every G-th batch index and rank 0 writes the run folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import losses as L
from ..data.atomic import atomic_path, write_text_atomic
from ..data.clip import ClipDataset, side_ids
from ..data.feature_cache import CacheError, CacheMismatch, FeatureCache
from ..data.fingerprint import clip_fingerprints, data_identity
from ..data.formats import read_dataset
from ..data.skipped import write_skipped
from ..eval.metrics import map_at_k, mca
from ..models import build
from ..locks import output_lock
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import dump_config
from ..models.filter import fit_filter
from .augment import Augment, augment_batch
from .schedule import Schedule, step_budget
from .tensors import ClipTensors, clips_to_tensors, limit_per_class, partition, partition_notes

MSTVH_LIKE = ("mstvh", "mstvh_bd", "mstvh_ed")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_device(name: str, flag: str = "--device") -> str:
    """``name`` when this machine has that device, else ``ValueError`` (one line naming ``flag``).

    Accepted: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (N < the number of GPUs), ``mps``; a CUDA build
    of torch without a GPU has no ``cuda``. Used by extract, encode, eval, serve (and train's config).
    """
    from .config import DEVICE_RE, devices_here

    here = devices_here()
    if name in here:
        return name
    if not DEVICE_RE.match(str(name)):
        raise ValueError(f"{flag} {name}: not a device; use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda") and "cuda" in here:
        n = sum(d.startswith("cuda:") for d in here)
        raise ValueError(f"{flag} {name}: this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})")
    kind, sep = ("CUDA" if name.startswith("cuda") else "MPS"), (" " if flag.startswith("--") else "=")
    raise ValueError(f"{flag} {name}: no {kind} device here; use {flag}{sep}cpu")


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """The torch device of ``name`` (``auto``: CUDA when there is one), checked by :func:`check_device`."""
    check_device(name, flag)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def loss_config(cfg: dict) -> L.LossConfig:
    lc = cfg["loss"]
    recon = lc["recon"]
    if recon is None:
        recon = 0.01 if cfg["model"]["name"] in MSTVH_LIKE else 0.0
    # w_(tau) of Eq. 14 weigh M-STVH's per-depth heads; STVH has one code and one head (Eq. 6): no weights
    lw = tuple(lc["layer_weights"]) if lc["layer_weights"] and cfg["model"]["name"] in MSTVH_LIKE else None
    return L.LossConfig(acty=lc["acty"], action=lc["action"], quant=lc["quant"], contrast=lc["contrast"],
                        recon=recon, layer_weights=lw, filter=lc.get("filter", 0.0), visual=lc.get("visual", 0.0),
                        side=lc.get("side", 0.0))


def model_from_config(cfg: dict, num_activities: int, num_actions: int, in_channels: int | None):
    m = cfg["model"]
    kwargs = dict(bits=m["bits"], depth=m["depth"], d=m["d"], num_activities=num_activities,
                  num_actions=num_actions, heads=m["heads"], dropout=m["dropout"], backbone=m["backbone"],
                  d_v=m["d_v"], weights=m["weights"], train_backbone=m["train_backbone"], hash_norm=m["hash_norm"])
    if m["geometry"]:
        kwargs["geometry"] = True
    for key, paper in (("pooling", "paper"), ("tracks", "raw"), ("geometry_units", "image")):
        if m.get(key, paper) != paper:  # extensions: passed only when not the paper's setting
            kwargs[key] = m[key]
    if m["name"] in MSTVH_LIKE:
        kwargs["recon_from"] = m["recon_from"]
        if m.get("shared_bits", 0):
            kwargs["shared_bits"] = m["shared_bits"]
        if m.get("shared_bits_middle", 0):
            kwargs["shared_bits_middle"] = m["shared_bits_middle"]
        if cfg["loss"].get("filter", 0.0) > 0 and m["depth"] > 1:
            kwargs["joint_filter"] = True  # F of Sec. 5.4 trained with the model
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return build(m["name"], **kwargs)


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``epochs_done`` finished epochs are saved in ``run/last.pt``."""

    def __init__(self, run: Path, epochs_done: int, epochs: int):
        self.run, self.epochs_done, self.epochs = run, epochs_done, epochs
        super().__init__(f"interrupted during epoch {epochs_done + 1}/{epochs}; {epochs_done} finished epoch(s) "
                         f"saved in {run / 'last.pt'}")


@dataclass
class LoadedData:
    """A dataset, its cached RoI features and what was left out."""

    dataset: ClipDataset
    roi: dict | None
    in_channels: int | None
    without_features: list[str] = field(default_factory=list)  # clip ids with no cached features
    cache_meta: dict | None = None  # meta.json of the feature cache (None without one)
    identity: dict = field(default_factory=dict)  # data root, clip count and fingerprint of every clip read
    notes: list[str] = field(default_factory=list)  # what the caller should tell the user

    def __iter__(self):  # ``dataset, roi, in_channels = load_data(...)``
        return iter((self.dataset, self.roi, self.in_channels))


def check_cache_matches(cache: FeatureCache, cfg: dict) -> None:
    """Refuse a cache whose backbone, PCA or frame size disagree with the config (one line naming both)."""
    m, ext = cfg["model"], cfg["extract"]
    want = {"backbone": m["backbone"],
            "reduction": f"pca{ext['pca']}" if ext.get("pca") else "none",
            "frame_size": list(ext["frame_size"]) if ext.get("frame_size") else "native"}
    for key, value in want.items():
        have = cache.meta.get(key)
        if have != value:
            where = "model.backbone" if key == "backbone" else "extract.pca" if key == "reduction" else "extract.frame_size"
            raise CacheMismatch(f"{key} is {have!r} in the cache but {value!r} in the config ({where}); extract "
                                f"again with `stvh extract --config CONFIG` or set {where} to match", path=cache.path)


def _t_source(cfg: dict) -> str:
    """The config key that sets T (frames per clip) for this config, for messages."""
    d = cfg["data"]
    if (d.get("reader") or {}).get("frames_per_clip") is not None:
        return f"data.reader.frames_per_clip={d['reader']['frames_per_clip']}"
    if d.get("window") is not None:
        return f"data.window={list(d['window'])}"
    return "data.window or data.reader.frames_per_clip"


def check_cache_fits_data(cache: FeatureCache, dataset: ClipDataset, data_dir, cfg: dict,
                          roi: dict | None = None) -> list[str]:
    """Refuse a cache whose T or clip inputs differ from the dataset as read with ``cfg``; returns notes.

    Before features are loaded: T against the cache's recorded T (naming the config key), then each
    cached clip's fingerprint against the dataset's (:meth:`FeatureCache.check_inputs`). With ``roi``
    (caches of older versions record neither): the arrays' persons and frames against the clips.
    """
    held = [c for c in dataset.clips if c.id in cache]
    if roi is not None:
        for c in held:
            n, t = roi[c.id].shape[:2]
            if (n, t) != tuple(c.boxes.shape[1::-1]):
                key = _t_source(cfg) if t != c.num_frames else "data.n_max"
                raise CacheMismatch(f"clip {c.id} has {n} persons x {t} frames in the cache but "
                                    f"{c.boxes.shape[1]} x {c.num_frames} as the data is read ({key}); set the key "
                                    f"as it was for `stvh extract`, or extract again", path=cache.path)
        return []
    cached_t = cache.meta.get("frames_per_clip")
    data_t = sorted({c.num_frames for c in held})
    if cached_t is not None and held and data_t != cached_t:
        raise CacheMismatch(f"the cache holds clips of T={','.join(map(str, cached_t))} frames, but {data_dir} is "
                            f"read with T={','.join(map(str, data_t))} ({_t_source(cfg)}); set it as it was for "
                            "`stvh extract`, or extract a cache with this T into another --out", path=cache.path)
    unrecorded = cache.check_inputs(clip_fingerprints(held, data_dir), data_dir)
    if unrecorded:
        return [f"the feature cache {cache.path} records no fingerprints of its inputs for {len(unrecorded)} clips "
                "(made by an older stvh), so they are not checked against the data; run `stvh extract` with the "
                "same --data and --out to re-extract them"]
    return []


def load_data(cfg: dict, data_dir: str | Path, features: str | Path | None, *, skip_bad: bool = False,
              require_features: bool | None = None, run: str | Path | None = None,
              resume: bool = False) -> LoadedData:
    """Read the dataset and (for CNN backbones) its cached RoI features.

    Clips without cached features (e.g. no frames on disk) are left out and
    listed in ``without_features``, unless ``require_features`` (default:
    ``data.require_features``) makes that an error. The cache must fit the
    config and the data (:func:`check_cache_fits_data`). With ``run`` (a run
    folder whose data this is), data and cache are checked against its
    ``run.json`` first (:func:`check_run_data`, :func:`check_run_cache`).
    """
    d = cfg["data"]
    kwargs = dict(d.get("reader") or {})
    if d["n_max"] is not None:
        kwargs["n_max"] = d["n_max"]
    if d["window"] is not None:
        kwargs["window"] = tuple(d["window"])
    backbone = cfg["model"]["backbone"]
    if backbone == "none" and features is not None:
        raise ValueError(f"--features {features} given but model.backbone is 'none' (box geometry only); "
                         "set model.backbone to the cache's backbone or drop --features")
    if backbone != "none" and features is None:
        raise ValueError(f"model.backbone {backbone!r} needs --features: run `stvh extract --data {data_dir} --out "
                         "FEATS` first (with the same --config, if any) and give --features FEATS, or set "
                         "model.backbone=none (box geometry only)")
    dataset = read_dataset(data_dir, d["format"], skip_bad=skip_bad, **kwargs)
    identity = data_identity(dataset, data_dir)
    info = json.loads((Path(run) / "run.json").read_text(encoding="utf-8")) if run is not None else None
    notes = check_run_data(Path(run), info, identity, data_dir, resume=resume) if info is not None else []
    if backbone == "none":
        return LoadedData(dataset, None, None, identity=identity, notes=notes)
    cache = FeatureCache(features)
    if info is not None:
        check_run_cache(Path(run), info, cache.meta, features)
    check_cache_matches(cache, cfg)
    notes += check_cache_fits_data(cache, dataset, data_dir, cfg)  # before anything is written
    missing = [c.id for c in dataset.clips if c.id not in cache]
    if missing:
        if require_features is None:
            require_features = bool(d.get("require_features", False))
        framed = [c.id for c in dataset.clips if c.id not in cache and c.frames is not None]
        stale = (f"{len(framed)} of them have frames (first: {framed[0]}): the cache predates them or its "
                 f"extraction stopped early; run `stvh extract --data {data_dir} --out {cache.path}` to add them"
                 if framed else "")
        if require_features or len(missing) == len(dataset.clips):
            raise CacheError(f"{len(missing)} of {len(dataset.clips)} clips have no cached features (first: "
                             f"{missing[0]}); " + ("none is in this cache: was it extracted from another dataset?"
                                                   if len(missing) == len(dataset.clips) else stale or
                                                   "clips without frames cannot be extracted; set "
                                                   "data.require_features=false to train on the others"),
                             path=cache.path)
        if stale:
            notes.append(stale)
        dataset.clips = [c for c in dataset.clips if c.id in cache]
    roi = cache.load([c.id for c in dataset.clips])
    check_cache_fits_data(cache, dataset, data_dir, cfg, roi)
    return LoadedData(dataset, roi, int(cache.meta["channels"]), missing, cache.meta, identity, notes)


# What a run records of its cache (run.json "cache") and checks again on resume and encode.
RUN_CACHE_KEYS = ("backbone", "weights_hash", "frame_size", "roi_size", "channels", "reduction", "pca_sha256",
                  "frames_per_clip")


def run_inputs(loaded: LoadedData, features) -> dict:
    """The run.json fields naming the run's data (root, clips, fingerprint) and cache (path and identity)."""
    out = dict(loaded.identity)
    if loaded.cache_meta is not None:
        meta = loaded.cache_meta
        out["cache"] = {"path": str(Path(features).resolve()), "dataset": meta.get("dataset"),
                        "dataset_fingerprint": meta.get("dataset_fingerprint"),
                        **{k: meta[k] for k in RUN_CACHE_KEYS if k in meta}}
    return out


def check_run_data(run: Path, info: dict, identity: dict, data_dir, *, resume: bool) -> list[str]:
    """Check the data (:func:`stvh.data.fingerprint.data_identity`) against ``RUN/run.json``; returns notes.

    Data whose fingerprint differs is refused on ``resume`` (training would go on with other data
    than its first epochs saw) and is a note otherwise (encode, eval: the codes are of the data
    as it is now). Runs made before fingerprints existed are not checked (a note).
    """
    if "data_fingerprint" not in info:
        return [f"{run} records no fingerprint of its data (made by an older stvh); the data is not checked"]
    if identity["data_fingerprint"] == info["data_fingerprint"]:
        return []
    what = (f"--data {data_dir} is not the data {run} was trained on ({info.get('data')})"
            if identity["data"] != info.get("data") else f"the data {data_dir} changed since {run} was trained")
    detail = (f"{info.get('data_clips')} clips, fingerprint {info['data_fingerprint']} then; "
              f"{identity['data_clips']} clips, fingerprint {identity['data_fingerprint']} now")
    if resume:
        raise ValueError(f"{what} ({detail}); resume with the data it was trained on, or train a new run "
                         "(another --out)")
    return [f"{what} ({detail}); the codes are of the data as it is now"]


def check_run_cache(run: Path, info: dict, meta: dict, features, own_data: bool = True) -> None:
    """Refuse a cache made with other settings (backbone, weights, PCA, ...; T for the run's own data)
    than the cache the run was trained on, or with another channel count than its model takes."""
    was = info.get("cache") or {}
    for key in RUN_CACHE_KEYS if own_data else RUN_CACHE_KEYS[:-1]:
        if key in was and key in meta and was[key] != meta[key]:
            raise CacheMismatch(f"{key} is {meta[key]!r} in this cache but {was[key]!r} in the cache {run} was "
                                f"trained on ({was.get('path')}); give --features of a cache made with the run's "
                                "settings", path=features)
    if info.get("in_channels") is not None and meta.get("channels") != info["in_channels"]:
        raise CacheMismatch(f"the cache has {meta.get('channels')} channels but the model of {run} takes "
                            f"{info['in_channels']}; give --features of a cache made with the run's settings",
                            path=features)


def has_action_labels(clips) -> bool:
    """True when some real person of ``clips`` has an action label (MOT data has none)."""
    return any(bool((c.actions[c.mask] >= 0).any()) for c in clips)


def _forward(model, batch):
    return model(batch["boxes"], batch["mask"], batch["image_size"], roi=batch.get("roi"))


@torch.no_grad()
def predict(model, data: ClipTensors, device, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Codes of every depth ``(M, depth, K)`` in ±1, activity and action predictions."""
    model.eval()
    codes, acty, actions = [], [], []
    for start in range(0, len(data), batch_size):
        batch = data.batch(torch.arange(start, min(start + batch_size, len(data))), device)
        out = _forward(model, batch)
        codes.append(torch.stack(out.b, dim=1).cpu())
        acty.append(torch.stack([lg.argmax(-1) for lg in out.activity_logits], dim=1).cpu())
        if out.action_logits.shape[-1]:
            actions.append(out.action_logits.argmax(-1).cpu())
        else:  # no action head (data without action labels)
            actions.append(torch.full(batch["mask"].shape, -1, dtype=torch.int64))
    return {"codes": torch.cat(codes).to(torch.int8).numpy(), "activity": torch.cat(acty).numpy(),
            "actions": torch.cat(actions).numpy()}


def validate(model, val: ClipTensors, train: ClipTensors, device, with_map: bool = True,
             visual: bool = False) -> dict[str, float]:
    """Validation accuracy of the deepest head and, with ``with_map``, mAP@10 of the deepest code
    (val queries, train database; encoding the train clips costs about a third of an epoch).

    With ``visual``, also visual-focus mAP@10 (relevant = same group) of the shallowest code
    (``val_visual@10``), of the one derived by the model's F when it trains one
    (``val_visual_derived@10``), and ``val_both``: the mean of the activity and visual figures. A model
    with one code (STVH) has no visual-focus code: its ``val_both`` is the activity figure alone (scoring
    its activity code on visual focus rewards the first epochs, whose codes still mostly hold appearance).
    """
    pv = predict(model, val, device)
    yv = val.activity.numpy()
    out = {"val_mca": mca(yv, pv["activity"][:, -1])}
    if with_map or visual:
        pt = predict(model, train, device)
        yt = train.activity.numpy()
        q, db = yv >= 0, yt >= 0  # unlabelled clips are neither queries nor database
        out["val_map@10"] = map_at_k(pv["codes"][q, -1], yv[q], pt["codes"][db, -1], yt[db], 10)
    if visual:
        gv, gt = np.asarray(val.groups), np.asarray(train.groups)
        scores = [out["val_map@10"]]
        out["val_visual@10"] = map_at_k(pv["codes"][:, 0], gv, pt["codes"][:, 0], gt, 10)
        if pv["codes"].shape[1] > 1:  # one code (STVH) is the activity code: recorded, not scored
            scores.append(out["val_visual@10"])
        fm = getattr(model, "filter", None)
        if fm is not None:
            def first(codes):  # the shallowest code derived from the deepest by F (Eq. 16-17)
                return fm.derive(torch.from_numpy(codes[:, -1].astype(np.float32)).to(fm.weight.device),
                                 codes.shape[1])[0].cpu().numpy()
            out["val_visual_derived@10"] = map_at_k(first(pv["codes"]), gv, first(pt["codes"]), gt, 10)
            scores.append(out["val_visual_derived@10"])
        out["val_both"] = float(np.mean(scores))
    return out


def _rewrite_metrics(path: Path, keep_epochs: int) -> None:
    """Drop metric rows of epochs that a resumed run will redo."""
    if not path.exists():
        return
    rows = list(csv.DictReader(path.open()))
    kept = [r for r in rows if int(r["epoch"]) <= keep_epochs]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    write_text_atomic(path, buf.getvalue())


def _append_metrics(path: Path, row: dict) -> None:
    """Add one row, rewriting the file atomically (a full disk never leaves half a row)."""
    old = path.read_text() if path.exists() else ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(row))
    if not old:
        writer.writeheader()
    writer.writerow(row)
    write_text_atomic(path, old + buf.getvalue())


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(out / "tensorboard"))


def epochs_done(state: dict) -> int:
    """Finished epochs recorded in a checkpoint (runs before 1-based numbering stored the 0-based index)."""
    return int(state["epoch"]) if state.get("epoch_base") == 1 else int(state["epoch"]) + 1


def training_finished(state: dict, cfg: dict) -> bool:
    """True when the checkpoint's run trained to its end (its last epoch, or an early stop: ``train.patience``)."""
    if "finished" in state:
        return bool(state["finished"])
    return epochs_done(state) >= cfg["train"]["epochs"]  # runs saved before the flag


def no_train_split_message(data_dir, dataset: ClipDataset) -> str:
    have = ", ".join(f"{k or 'not in any split'}: {v}" for k, v in dataset.splits().items()) or "no clips"
    unlisted = dataset.splits().get("", 0)
    return (f"{data_dir}: the dataset has no training clips (clips per split: {have}); mark clips as train/test "
            "in DATA/splits.json ({\"train\": [\"video\", ...], \"test\": [...]}, video names or video/clip ids)"
            + (" or in a split column of DATA/clips.csv" if dataset.format == "mot" else "")
            + (f", or set data.unlisted=train to train on the {unlisted} clips in no split" if unlisted else ""))


def _save_filter(model, train: ClipTensors, device, cfg: dict, path: Path) -> None:
    """Store F (Sec. 5.4, Eq. 16-17) with the run: the model's own when it trained one
    (``loss.filter > 0``), else fitted on the training clips' codes of ``model`` (the paper)."""
    if getattr(model, "filter", None) is not None:
        fm = model.filter
    else:
        codes = predict(model, train, device)["codes"]  # (M, depth, K)
        per_depth = [torch.from_numpy(codes[:, t].astype(np.float32)) for t in range(codes.shape[1])]
        torch.manual_seed(int(cfg["seed"]))
        fm = fit_filter(per_depth, steps=int(cfg["filter"]["steps"]), lr=float(cfg["filter"]["lr"]))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, filter=fm.weight.detach().cpu().numpy())


def fit(cfg: dict, data_dir: str | Path, features: str | Path | None, out: str | Path, **options) -> dict:
    """:func:`train_run` holding the run folder's write lock (``stvh.locks``; re-entrant, so ``stvh train``,
    which locks it before checking ``--out``, and ``stvh demo`` / ``ablate`` share this one entry)."""
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun rank 0 writes the run folder
        return train_run(cfg, data_dir, features, out, **options)
    log = options.get("log", print)
    with output_lock(out, "stvh train", note=lambda line: log(f"note: {line}")):
        return train_run(cfg, data_dir, features, out, **options)


def train_run(cfg: dict, data_dir: str | Path, features: str | Path | None, out: str | Path,
              resume: bool = False, progress: bool = True, stop_after: int | None = None,
              skip_bad: bool = False, log=print) -> dict:
    """Train; returns a summary (best epoch and score, run folder).

    ``stop_after`` ends the run after that many epochs of this call (used to
    test resuming; a kill does the same). Epochs count from 1 everywhere
    (progress bars, metrics.csv, run.json, checkpoints). Ctrl-C raises
    :class:`TrainingInterrupted` after the last finished epoch was saved.
    """
    out = Path(out)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(cfg["train"]["device"], flag="train.device")
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    seed = int(cfg["seed"])
    seed_everything(seed)

    loaded = load_data(cfg, data_dir, features, skip_bad=skip_bad,  # resume: the data its first epochs saw
                       run=out if resume and (out / "run.json").is_file() else None, resume=resume)
    dataset, roi, in_channels = loaded
    unlisted = cfg["data"].get("unlisted", "ignore")
    parts = partition(dataset.clips, cfg["data"]["val_fraction"], seed, unlisted)
    if not parts["train"]:
        raise ValueError(no_train_split_message(data_dir, dataset))
    parts["train"], unused = limit_per_class(parts["train"], cfg["data"].get("train_per_class"), seed)
    if not any(c.activity >= 0 for c in parts["train"]):
        raise ValueError(f"{data_dir}: no training clip has an activity label; label them (e.g. an activity "
                         "column in clips.csv) or encode this data with a model trained elsewhere "
                         "(`stvh encode --run RUN --data DATA`)")
    train = clips_to_tensors(parts["train"], roi)
    val = clips_to_tensors(parts["val"], roi) if parts["val"] else None

    lcfg = loss_config(cfg)
    one_video = bool(lcfg.visual) and len({c.group for c in parts["train"]}) < 2  # no other video to tell apart
    if one_video:
        lcfg.visual = 0.0
    if lcfg.side:
        lcfg.sides = tuple(int(s) for s in side_ids(dataset.activities))
    notes = partition_notes(parts, cfg["data"]["val_fraction"], unlisted)
    if one_video:
        notes.append("the training clips come from one video: loss.visual (same-video contrast) is off")
    if unused:
        notes.append(f"data.train_per_class={cfg['data']['train_per_class']}: training on {len(parts['train'])} "
                     f"train clips, {len(unused)} left out (validation and test parts unchanged)")
    action_head = has_action_labels(parts["train"])
    actions = list(dataset.actions) if action_head else []
    if not action_head:  # Eq. 6's L_action and Eq. 8's GCN (fed by predicted actions) have nothing to learn from
        lcfg.action, lcfg.contrast = 0.0, 0.0
        notes.append("no person action labels: the action head, L_action and L_CON are off")
    if loaded.without_features:
        notes.append(f"{len(loaded.without_features)} clips have no cached features (no frames?) and are left out; "
                     f"training on the {len(dataset.clips)} that have them")
    if dataset.skipped:
        notes.append(f"{len(dataset.skipped)} bad inputs skipped (--skip-bad); listed in {out / 'skipped.csv'}")
    notes += loaded.notes

    model = model_from_config(cfg, len(dataset.activities), len(actions), in_channels).to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    t = cfg["train"]
    if t["select"] not in ("val_map@10", "val_mca", "val_both"):
        raise ValueError(f"train.select must be val_map@10, val_mca or val_both, got {t['select']!r}")
    aug = augmentation(cfg, dataset)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t["lr"],
                           weight_decay=t["weight_decay"], foreach=True)  # one kernel per step, not per tensor
    batches = math.ceil(len(train) / t["batch_size"]) // (world if world > 1 else 1)
    steps = step_budget(t.get("steps"), t.get("steps_per_video"), len(set(train.groups)))
    sched = Schedule(t["lr"], t["lr_steps"], t["epochs"], batches, steps, t.get("patience"))

    start_epoch, best = 0, {"epoch": 0, "score": -math.inf}
    if resume and (out / "last.pt").exists():
        state = load_checkpoint(out / "last.pt")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:  # another model's checkpoint: one line naming it
            raise CheckpointError(f"checkpoint {out / 'last.pt'} does not match the run's model "
                                  f"({str(exc).splitlines()[-1].strip()[:160]}); start a new --out instead") from None
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state.get("schedule"), epochs_done(state))
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, best = epochs_done(state), dict(state["best"])
        if state.get("epoch_base") != 1:
            best["epoch"] += 1
    elif rank == 0:
        if (out / "last.pt").exists():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_config(cfg))
        write_text_atomic(out / "run.json", json.dumps({
            "data": str(Path(data_dir).resolve()), "features": str(Path(features).resolve()) if features else None,
            "format": dataset.format, "activities": list(dataset.activities), "actions": actions,
            "action_head": action_head, "in_channels": in_channels, "seed": seed,
            "splits": {k: len(v) for k, v in parts.items()},
            "clips_without_features": len(loaded.without_features), "skipped": len(dataset.skipped),
            "notes": notes, "torch": torch.__version__, **run_inputs(loaded, features)}, indent=2))
        (out / "metrics.csv").unlink(missing_ok=True)
    if rank == 0 and skip_bad:
        write_skipped(out / "skipped.csv", dataset.skipped)
    if rank == 0:
        _rewrite_metrics(out / "metrics.csv", start_epoch)
        for note in notes:
            log(f"note: {note}")
    tb = _tensorboard(out) if rank == 0 else None

    epochs_run = 0
    try:
        for epoch in range(start_epoch + 1, sched.epochs + 1):  # 1-based
            if sched.finished or (stop_after is not None and epochs_run >= stop_after):
                break
            for group in opt.param_groups:
                group["lr"] = sched.lr
            row = _train_epoch(net, model, train, val, opt, lcfg, t, device, seed, epoch, rank, world,
                               progress, aug, sched.epochs)
            epochs_run += 1
            sched.after_epoch(epoch, float(row["score"]))
            if rank != 0:
                continue
            improved = row["score"] >= best["score"]  # ties go to the later epoch
            if improved:
                best = {"epoch": epoch, "score": float(row["score"])}
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
                     "finished": sched.finished, "epoch": epoch, "epoch_base": 1, "best": best, "config": cfg,
                     "rng": {"torch": torch.get_rng_state()}}
            if improved:
                save_checkpoint(out / "best.pt", state)
            save_checkpoint(out / "last.pt", state)
            _append_metrics(out / "metrics.csv", row)
            if tb is not None:
                for k, v in row.items():
                    if k != "epoch":
                        tb.add_scalar(k, v, epoch)
            if progress:
                shown = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith(("loss_total", "val_")))
                tqdm.write(f"epoch {epoch}/{sched.epochs}: {shown} ({row['seconds']:.1f}s)")
                if sched.finished and epoch < sched.epochs:
                    tqdm.write(f"early stop after epoch {epoch}: no gain over {t['patience']} epochs of the last "
                               f"learning-rate stage (train.patience); best epoch {best['epoch']}")
    except KeyboardInterrupt:
        raise TrainingInterrupted(out, start_epoch + epochs_run, sched.epochs) from None
    finally:
        if tb is not None:
            tb.close()
    if (rank == 0 and getattr(model, "depth", 1) > 1 and sched.finished and (out / "best.pt").exists()
            and (epochs_run or not (out / "filter.npz").exists())):  # a kill before F was saved: save it now
        model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
        _save_filter(model, train, device, cfg, out / "filter.npz")
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"run": str(out), "best_epoch": best["epoch"], "best_score": best["score"],
            "epochs_run": epochs_run, "notes": notes, "skipped": len(dataset.skipped)}


def augmentation(cfg: dict, dataset: ClipDataset) -> Augment:
    """``train.augment`` with the dataset's label mirrors (``l_x`` <-> ``r_x``) for flips."""
    a = cfg["train"].get("augment") or {}
    return Augment(flip=a.get("flip", 0.0), jitter=a.get("jitter", 0.0), pan=a.get("pan", 0.0),
                   drop=a.get("drop", 0.0), mirror_activity=torch.from_numpy(dataset.mirrored("activities")),
                   mirror_action=torch.from_numpy(dataset.mirrored("actions")))


def _train_epoch(net, model, train: ClipTensors, val, opt, lcfg, t: dict, device, seed: int, epoch: int,
                 rank: int, world: int, progress: bool, aug: Augment | None = None, epochs: int | None = None) -> dict:
    """One pass over the training clips (epoch is 1-based); returns the metrics.csv row."""
    net.train()
    g = torch.Generator().manual_seed(seed * 100003 + epoch - 1)
    g_aug = torch.Generator().manual_seed(seed * 100003 + epoch - 1 + 7919 * (rank + 1))  # resumable draws
    perm = torch.randperm(len(train), generator=g)
    batches = [perm[i:i + t["batch_size"]] for i in range(0, len(perm), t["batch_size"])]
    if world > 1:  # every process must run the same number of steps (gradients are all-reduced)
        batches = batches[:len(batches) // world * world][rank::world]
    sums: dict[str, float] = {}
    t0 = time.time()
    bar = tqdm(batches, desc=f"epoch {epoch}/{epochs or t['epochs']}", disable=not progress or rank != 0,
               leave=False, unit="batch")
    for step, idx in enumerate(bar, start=1):
        batch = train.batch(idx, device)
        if aug is not None and aug.active:
            batch = augment_batch(batch, aug, g_aug)
        output = net(batch["boxes"], batch["mask"], batch["image_size"], roi=batch.get("roi"))
        terms = L.total_loss(output, batch["activity"], batch["actions"], lcfg, batch.get("group"))
        if not torch.isfinite(terms["total"]):
            raise ValueError(f"the training loss is {terms['total'].item()} at epoch {epoch}, batch {step} "
                             f"({', '.join(k for k, v in terms.items() if not torch.isfinite(v))}); check the "
                             "inputs for non-finite values or lower train.lr")
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        if t["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.set_postfix(loss=f"{terms['total'].item():.3f}")
    row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 3)}
    row.update({f"loss_{k}": v / max(len(batches), 1) for k, v in sorted(sums.items())})
    if val is not None:
        row.update(validate(model, val, train, device, with_map=t["select"] == "val_map@10",
                            visual=t["select"] == "val_both"))
        row["score"] = row[t["select"]]
    else:
        row["score"] = -row["loss_total"]
    return row
