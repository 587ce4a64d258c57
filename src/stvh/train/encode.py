"""Encoding: a trained run → the codes of every depth for every clip (a CODES file).

Besides the codes, ``encode`` stores the model's activity and action
predictions (``predictions.npz`` beside the codes) for the evaluation, and, for
multi-depth models, the filter matrix F of Sec. 5.4 fitted on the **training
split's** codes (never on test), so shallower codes can be derived from the
deepest one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.atomic import atomic_path
from ..index.codes import CodeSet
from ..models.filter import fit_filter
from .checkpoint import CheckpointError, load_checkpoint
from .config import complete_config
from .loop import load_data, model_from_config, predict, resolve_device
from .tensors import clips_to_tensors


def load_run(run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"):
    """(model in eval mode, config, run info) of a run folder."""
    run = Path(run)
    info_path = run / "run.json"
    if not info_path.is_file():
        raise CheckpointError(f"{run} is not a run folder (run.json missing); train one with `stvh train`")
    info = json.loads(info_path.read_text())
    path = run / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.exists():
        path = run / "last.pt"
    state = load_checkpoint(path)
    cfg = complete_config(state["config"])
    model = model_from_config(cfg, len(info["activities"]), len(info["actions"]), info.get("in_channels"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match its configuration ({str(exc)[:160]})") from None
    return model.to(device).eval(), cfg, info, state


def encode(run: str | Path, out: str | Path, *, data: str | Path | None = None, features: str | Path | None = None,
           checkpoint: str = "best", device: str = "auto", batch_size: int = 64) -> dict:
    """Write the CODES file ``out`` (and ``<out>.predictions.npz``) for every clip of the dataset."""
    dev = resolve_device(device)
    model, cfg, info, state = load_run(run, checkpoint, dev)
    data = data or info["data"]
    features = features or info.get("features")
    dataset, roi, _ = load_data(cfg, data, features)
    tensors = clips_to_tensors(dataset.clips, roi)
    pred = predict(model, tensors, dev, batch_size)
    codes = pred["codes"]  # (M, depth, K)
    depth = codes.shape[1]
    filt = None
    if depth > 1:
        train_rows = np.array([s != "test" for s in tensors.splits])
        per_depth = [torch.from_numpy(codes[train_rows, t].astype(np.float32)) for t in range(depth)]
        torch.manual_seed(int(cfg["seed"]))
        fm = fit_filter(per_depth, steps=int(cfg["filter"]["steps"]), lr=float(cfg["filter"]["lr"]))
        filt = fm.weight.detach().cpu().numpy()
    meta = {"model": cfg["model"]["name"], "run": str(Path(run).resolve()), "seed": cfg["seed"],
            "epoch": state["epoch"], "activities": info["activities"], "actions": info["actions"],
            "data": str(data)}
    code_set = CodeSet.from_signs(tensors.ids, codes, activity=tensors.activity.numpy(),
                                  group=np.array(tensors.groups), split=np.array(tensors.splits),
                                  filter=filt, meta=meta)
    out = Path(out)
    code_set.save(out)
    with atomic_path(predictions_path(out)) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(tensors.ids), activity_pred=pred["activity"], action_pred=pred["actions"],
                     action_true=tensors.actions.numpy(), mask=tensors.mask.numpy())
    return {"codes": str(out), "clips": len(code_set), "bits": code_set.bits, "depth": depth,
            "filter": filt is not None}


def predictions_path(codes_path: str | Path) -> Path:
    p = Path(codes_path)
    return p.with_name(p.name.removesuffix(".npz") + ".predictions.npz")
