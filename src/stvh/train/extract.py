"""Stage 1: run the frozen backbone once and cache RoI features (Sec. 4.1).

``extract(data, backbone, out)`` decodes each clip's T frames, runs the CNN
(truncated at stride 32) and RoIAlign 5x5 per person per frame, and stores the
raw ``roi (N, T, C, 5, 5)`` in a :mod:`stvh.data.feature_cache` folder.
Finished shards survive a kill and are skipped when the command is run again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.feature_cache import FeatureCacheWriter
from ..data.formats import read_dataset
from ..data.frames import read_frames
from ..models.visual import VisualModule, efficientnet_lite0_weights_path
from .pca import fit_pca, load_pca, project, save_pca

log = logging.getLogger(__name__)


def weights_identity(backbone: str, weights: str | None, seed: int) -> str:
    """A hash of the weights file, or where the weights come from."""
    path = weights or (efficientnet_lite0_weights_path() if backbone == "efficientnet_lite0" else None)
    if path is None:
        return f"random-init-seed{seed}"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def _resize(frames: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """``(T, H, W, 3) uint8`` → ``(T, 3, h, w)`` float in [0, 1], resized when ``size`` is given."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x


def extract(data: str | Path, backbone: str, out: str | Path, *, weights: str | None = None,
            format: str | None = None, frame_size: tuple[int, int] | None = None, batch_clips: int = 4,
            roi_size: int = 5, device: str = "cpu", seed: int = 0, progress: bool = True,
            skip_bad: bool = False, pca: int | None = None, pca_clips: int = 24) -> dict:
    """Extract and cache RoI features of every clip with frames; returns a summary.

    ``pca=k`` stores the RoI channels projected on their top-k principal
    directions (fitted on ``pca_clips`` training-split clips; see
    :mod:`stvh.train.pca`) instead of the raw C channels.
    """
    dataset = read_dataset(data, format, skip_bad=skip_bad)
    clips = [c for c in dataset.clips if c.frames is not None]
    if not clips:
        raise ValueError(f"{data}: no clip has frames to extract features from (tracks-only data: "
                         "train with model.backbone=none instead)")
    torch.manual_seed(seed)
    module = VisualModule(backbone=backbone, weights=weights, roi_size=roi_size).to(device).eval()
    sizes = {c.image_size for c in clips}

    def run_backbone(part):
        frames = torch.stack([_resize(read_frames(c.frames), frame_size) for c in part]).to(device)
        boxes = torch.from_numpy(np.stack([c.boxes for c in part])).to(device)
        image_size = torch.tensor([c.image_size for c in part], dtype=torch.float32, device=device)
        roi = module.extract_roi(frames, boxes, image_size).cpu().numpy()  # (B, N, T, C, s, s)
        return roi, frames.shape[0] * frames.shape[1]

    projection = None
    if pca is not None:
        projection = _pca_projection(Path(out), clips, pca, pca_clips, run_backbone, batch_clips)
    meta = {"backbone": backbone, "weights_hash": weights_identity(backbone, weights, seed),
            "frame_size": list(frame_size) if frame_size else "native", "roi_size": roi_size,
            "channels": pca or module.in_channels, "backbone_channels": module.in_channels,
            "reduction": f"pca{pca}" if pca else "none", "dataset": str(Path(data).resolve()),
            "image_sizes": sorted(list(s) for s in sizes)}
    if projection is not None:
        meta["pca_explained"] = float(projection[2].sum())
    writer = FeatureCacheWriter(out, meta)
    todo = [c for c in clips if c.id not in writer.done()]
    t0 = time.time()
    frames_done = 0
    bar = tqdm(total=len(todo), desc="extract", unit="clip", disable=not progress)
    for start in range(0, len(todo), batch_clips):
        group = todo[start:start + batch_clips]
        # clips of one call must share the frame size; batch them one size at a time
        for size in sorted({c.image_size for c in group}):
            part = [c for c in group if c.image_size == size]
            roi, n_frames = run_backbone(part)
            for c, r in zip(part, roi):
                r[~c.mask] = 0  # padded persons carry no features
                if projection is not None:
                    r = project(r, projection[0], projection[1], c.mask)
                writer.add(c.id, r)
            frames_done += n_frames
        bar.update(len(group))
        bar.set_postfix(clips_per_s=f"{bar.n / max(time.time() - t0, 1e-9):.2f}")
    bar.close()
    writer.close()
    seconds = time.time() - t0
    return {"features": str(out), "backbone": backbone, "clips": len(clips), "extracted": len(todo),
            "resumed": len(clips) - len(todo), "seconds": round(seconds, 2),
            "clips_per_s": round(len(todo) / seconds, 2) if seconds > 0 and todo else None,
            "frames_per_s": round(frames_done / seconds, 2) if seconds > 0 and todo else None,
            "channels": pca or module.in_channels, "skipped": len(dataset.skipped)}


def _pca_projection(out: Path, clips, k: int, n_clips: int, run_backbone, batch_clips: int):
    """Load ``out/pca.npz`` or fit it on RoI features of real persons of training-split clips."""
    path = out / "pca.npz"
    if path.exists():
        mean, comps, ratio = load_pca(path)
        if comps.shape[0] != k:
            raise ValueError(f"{path} keeps {comps.shape[0]} channels, not {k}; use another --out folder")
        return mean, comps, ratio
    train = [c for c in clips if c.split != "test"] or clips
    step = max(len(train) // n_clips, 1)
    sample = train[::step][:n_clips]
    feats = []
    for i in range(0, len(sample), batch_clips):
        part = sample[i:i + batch_clips]
        roi, _ = run_backbone(part)
        for c, r in zip(part, roi):
            x = np.moveaxis(r[c.mask], 2, -1)  # (n, T, s, s, C)
            feats.append(x.reshape(-1, x.shape[-1]))
    mean, comps, ratio = fit_pca(np.concatenate(feats), k)
    out.mkdir(parents=True, exist_ok=True)
    save_pca(path, mean, comps, ratio)
    log.info("PCA %d -> %d channels keeps %.1f%% of the variance", comps.shape[1], k, 100 * ratio.sum())
    return mean, comps, ratio
