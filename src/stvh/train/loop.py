"""The training loop (Sec. 4.6 / 5.3): readable in one sitting.

``fit(cfg, data_dir, features, out)`` trains any registry model on a dataset,
selects the checkpoint on a validation part of the train split (never on
test), and writes a run folder::

    RUN/config.yaml       resolved configuration
    RUN/run.json          dataset, features, label vocabularies, seed
    RUN/metrics.csv       one row per epoch (losses, val metrics, lr)
    RUN/last.pt           model, optimizer, scheduler, epoch, RNG state, config
    RUN/best.pt           the checkpoint with the best validation score

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
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import losses as L
from ..data.atomic import write_text_atomic
from ..data.feature_cache import FeatureCache
from ..data.formats import read_dataset
from ..eval.metrics import map_at_k, mca
from ..models import build
from .checkpoint import load_checkpoint, save_checkpoint
from .config import dump_config
from .tensors import ClipTensors, clips_to_tensors, partition

MSTVH_LIKE = ("mstvh", "mstvh_bd", "mstvh_ed")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def loss_config(cfg: dict) -> L.LossConfig:
    lc = cfg["loss"]
    recon = lc["recon"]
    if recon is None:
        recon = 0.01 if cfg["model"]["name"] in MSTVH_LIKE else 0.0
    lw = tuple(lc["layer_weights"]) if lc["layer_weights"] else None
    return L.LossConfig(acty=lc["acty"], action=lc["action"], quant=lc["quant"], contrast=lc["contrast"],
                        recon=recon, layer_weights=lw)


def model_from_config(cfg: dict, num_activities: int, num_actions: int, in_channels: int | None):
    m = cfg["model"]
    kwargs = dict(bits=m["bits"], depth=m["depth"], d=m["d"], num_activities=num_activities,
                  num_actions=num_actions, heads=m["heads"], dropout=m["dropout"], backbone=m["backbone"],
                  d_v=m["d_v"], weights=m["weights"], train_backbone=m["train_backbone"], hash_norm=m["hash_norm"])
    if m["geometry"]:
        kwargs["geometry"] = True
    if m["name"] in MSTVH_LIKE:
        kwargs["recon_from"] = m["recon_from"]
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return build(m["name"], **kwargs)


def load_data(cfg: dict, data_dir: str | Path, features: str | Path | None):
    """Read the dataset and (for CNN backbones) its cached RoI features."""
    d = cfg["data"]
    kwargs = dict(d.get("reader") or {})
    if d["n_max"] is not None:
        kwargs["n_max"] = d["n_max"]
    if d["window"] is not None:
        kwargs["window"] = tuple(d["window"])
    dataset = read_dataset(data_dir, d["format"], **kwargs)
    roi, in_channels = None, None
    if cfg["model"]["backbone"] != "none":
        if features is None:
            raise ValueError(f"backbone {cfg['model']['backbone']!r} needs --features (run `stvh extract` first)")
        cache = FeatureCache(features)
        cache.check(backbone=cfg["model"]["backbone"])
        roi = cache.load([c.id for c in dataset.clips])
        in_channels = int(cache.meta["channels"])
    return dataset, roi, in_channels


def lr_factor(base_lr: float, steps) -> "callable":
    """LambdaLR factor for ``lr_steps`` ``[[epoch, lr], ...]`` (1-based epochs, as the paper counts:
    Volleyball uses 1e-5, then 5e-6 from epoch 11 and 1e-6 from epoch 21)."""
    table = sorted((int(e), float(lr)) for e, lr in steps)

    def factor(epoch: int) -> float:  # epoch: 0-based count of finished epochs
        lr = base_lr
        for start, value in table:
            if epoch + 1 >= start:
                lr = value
        return lr / base_lr
    return factor


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
        actions.append(out.action_logits.argmax(-1).cpu())
    return {"codes": torch.cat(codes).to(torch.int8).numpy(), "activity": torch.cat(acty).numpy(),
            "actions": torch.cat(actions).numpy()}


def validate(model, val: ClipTensors, train: ClipTensors, device, with_map: bool = True) -> dict[str, float]:
    """Validation accuracy of the deepest head and, with ``with_map``, mAP@10 of the deepest code
    (val queries, train database; encoding the train clips costs about a third of an epoch)."""
    pv = predict(model, val, device)
    yv = val.activity.numpy()
    out = {"val_mca": mca(yv, pv["activity"][:, -1])}
    if with_map:
        pt = predict(model, train, device)
        out["val_map@10"] = map_at_k(pv["codes"][:, -1], yv, pt["codes"][:, -1], train.activity.numpy(), 10)
    return out


def _rewrite_metrics(path: Path, keep_epochs: int) -> None:
    """Drop metric rows of epochs that a resumed run will redo."""
    if not path.exists():
        return
    rows = list(csv.DictReader(path.open()))
    kept = [r for r in rows if int(r["epoch"]) < keep_epochs]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    write_text_atomic(path, buf.getvalue())


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(out / "tensorboard"))


def fit(cfg: dict, data_dir: str | Path, features: str | Path | None, out: str | Path,
        resume: bool = False, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train; returns a summary (best epoch and score, run folder).

    ``stop_after`` ends the run after that many epochs of this call (used to
    test resuming; a kill does the same).
    """
    out = Path(out)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(cfg["train"]["device"])
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    seed = int(cfg["seed"])
    seed_everything(seed)

    dataset, roi, in_channels = load_data(cfg, data_dir, features)
    parts = partition(dataset.clips, cfg["data"]["val_fraction"], seed)
    if not parts["train"]:
        raise ValueError(f"{data_dir}: the dataset has no training clips")
    train = clips_to_tensors(parts["train"], roi)
    val = clips_to_tensors(parts["val"], roi) if parts["val"] else None

    model = model_from_config(cfg, len(dataset.activities), len(dataset.actions), in_channels).to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    t = cfg["train"]
    if t["select"] not in ("val_map@10", "val_mca"):
        raise ValueError(f"train.select must be val_map@10 or val_mca, got {t['select']!r}")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t["lr"],
                           weight_decay=t["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(t["lr"], t["lr_steps"]))
    lcfg = loss_config(cfg)

    start_epoch, best = 0, {"epoch": -1, "score": -math.inf}
    if resume and (out / "last.pt").exists():
        state = load_checkpoint(out / "last.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    elif rank == 0:
        if (out / "last.pt").exists():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_config(cfg))
        write_text_atomic(out / "run.json", json.dumps({
            "data": str(Path(data_dir).resolve()), "features": str(Path(features).resolve()) if features else None,
            "format": dataset.format, "activities": list(dataset.activities), "actions": list(dataset.actions),
            "in_channels": in_channels, "seed": seed, "splits": {k: len(v) for k, v in parts.items()},
            "torch": torch.__version__}, indent=2))
        (out / "metrics.csv").unlink(missing_ok=True)
    if rank == 0:
        _rewrite_metrics(out / "metrics.csv", start_epoch)
    tb = _tensorboard(out) if rank == 0 else None

    epochs_run = 0
    for epoch in range(start_epoch, t["epochs"]):
        if stop_after is not None and epochs_run >= stop_after:
            break
        net.train()
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        perm = torch.randperm(len(train), generator=g)
        batches = [perm[i:i + t["batch_size"]] for i in range(0, len(perm), t["batch_size"])]
        if world > 1:  # every process must run the same number of steps (gradients are all-reduced)
            batches = batches[:len(batches) // world * world][rank::world]
        sums: dict[str, float] = {}
        t0 = time.time()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{t['epochs']}", disable=not progress or rank != 0,
                   leave=False, unit="batch")
        for idx in bar:
            batch = train.batch(idx, device)
            output = net(batch["boxes"], batch["mask"], batch["image_size"], roi=batch.get("roi"))
            terms = L.total_loss(output, batch["activity"], batch["actions"], lcfg)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            if t["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{terms['total'].item():.3f}")
        sched.step()
        row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 3)}
        row.update({f"loss_{k}": v / max(len(batches), 1) for k, v in sorted(sums.items())})
        if val is not None:
            row.update(validate(model, val, train, device, with_map=t["select"] == "val_map@10"))
            score = row[t["select"]]
        else:
            score = -row["loss_total"]
        row["score"] = score
        epochs_run += 1
        if rank != 0:
            continue
        improved = score > best["score"]
        if improved:
            best = {"epoch": epoch, "score": float(score)}
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "epoch": epoch, "best": best, "config": cfg, "rng": {"torch": torch.get_rng_state()}}
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
            tqdm.write(f"epoch {epoch + 1}/{t['epochs']}: {shown} ({row['seconds']:.1f}s)")
    if tb is not None:
        tb.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"run": str(out), "best_epoch": best["epoch"], "best_score": best["score"],
            "epochs_run": epochs_run}
