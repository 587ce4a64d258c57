"""Clips as tensors, and the train / validation / test partition.

The model never sees a reader: :func:`clips_to_tensors` turns the numpy clip
records into stacked tensors once; batches are index selections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.clip import Clip
from ..data.splits import unit_hash


@dataclass
class ClipTensors:
    """All clips of a dataset, stacked. ``roi`` is present for cached CNN features."""

    ids: list[str]
    groups: list[str]
    splits: list[str]
    boxes: Tensor        # (M, T, N, 4) float32 pixels
    mask: Tensor         # (M, N) bool
    image_size: Tensor   # (M, 2) float32 (H, W)
    activity: Tensor     # (M,) int64, -1 unlabeled
    actions: Tensor      # (M, N) int64, -1 unknown
    roi: Tensor | None = None  # (M, N, T, C, s, s) float16 (float32 when the cache holds float32)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def group_ids(self) -> Tensor:
        """``(M,)`` int64: each clip's visual group as an index into the sorted group names."""
        if getattr(self, "_group_ids", None) is None:
            names = {g: i for i, g in enumerate(sorted(set(self.groups)))}
            self._group_ids = torch.tensor([names[g] for g in self.groups], dtype=torch.int64)
        return self._group_ids

    def batch(self, index: Tensor, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Model inputs and labels of the clips at ``index``."""
        out = {
            "boxes": self.boxes[index].to(device),
            "mask": self.mask[index].to(device),
            "image_size": self.image_size[index].to(device),
            "activity": self.activity[index].to(device),
            "actions": self.actions[index].to(device),
            "group": self.group_ids[index].to(device),
        }
        if self.roi is not None:  # the cache's dtype: the model converts (in chunks when encoding)
            n = index.numel()
            if n and bool((index[1:] - index[:-1] == 1).all()):  # a run of clips (predict): a view, no copy
                out["roi"] = self.roi[int(index[0]):int(index[0]) + n].to(device=device)
            else:
                out["roi"] = self.roi[index].to(device=device)
        return out


def clips_to_tensors(clips: list[Clip], roi: dict[str, np.ndarray] | None = None) -> ClipTensors:
    """Stack clips (all with the same T and N) into :class:`ClipTensors`."""
    if not clips:
        raise ValueError("no clips to train or evaluate on")
    shapes = {c.boxes.shape for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"clips differ in (T, N, 4): {sorted(shapes)[:4]}; read them with one window and n_max")
    stacked_roi = None
    if roi is not None:
        arrays = [roi[c.id] for c in clips]
        dtype = np.float16 if all(a.dtype == np.float16 for a in arrays) else np.float32
        stacked_roi = torch.from_numpy(np.stack(arrays).astype(dtype, copy=False))
    return ClipTensors(
        ids=[c.id for c in clips],
        groups=[c.group for c in clips],
        splits=[c.split for c in clips],
        boxes=torch.from_numpy(np.stack([c.boxes for c in clips]).astype(np.float32)),
        mask=torch.from_numpy(np.stack([c.mask for c in clips])),
        image_size=torch.tensor([c.image_size for c in clips], dtype=torch.float32),
        activity=torch.tensor([c.activity for c in clips], dtype=torch.int64),
        actions=torch.from_numpy(np.stack([c.actions for c in clips]).astype(np.int64)),
        roi=stacked_roi,
    )


UNLISTED = ("ignore", "train")  # data.unlisted: what happens to clips that no split lists


def partition(clips: list[Clip], val_fraction: float, seed: int, unlisted: str = "ignore") -> dict[str, list[Clip]]:
    """``train`` / ``val`` / ``test`` lists, and ``none``: the clips no split lists (left out).

    Splits are taken as written: ``test`` clips are the test part, never used for
    model selection. When some clip is in the ``val`` split, exactly those clips are
    the validation part and ``val_fraction`` is unused. Otherwise ``val`` is carved
    out of the train split: within each visual group, the train clips are ordered
    by a seeded hash of their id and the first ``round(val_fraction * n)`` become
    validation (deterministic, independent of file order, every group keeps
    training clips). Clips with no split (``""``: not listed in ``splits.json``, or
    any other split such as MOT's ``all``) go to ``none``; ``unlisted="train"``
    (``data.unlisted``) lets the ``""`` ones join the train split instead, as
    before splits were taken as written.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    if unlisted not in UNLISTED:
        raise ValueError(f"data.unlisted must be one of {', '.join(UNLISTED)}, got {unlisted!r}")
    out: dict[str, list[Clip]] = {"train": [], "val": [], "test": [], "none": []}
    user_val = any(c.split == "val" for c in clips)
    by_group: dict[str, list[Clip]] = {}
    for c in clips:
        if c.split in ("test", "val"):
            out[c.split].append(c)
        elif c.split == "train" or (c.split == "" and unlisted == "train"):
            if user_val:
                out["train"].append(c)
            else:
                by_group.setdefault(c.group, []).append(c)
        else:
            out["none"].append(c)
    for group in sorted(by_group):
        members = sorted(by_group[group], key=lambda c: unit_hash(c.id, seed))
        n_val = int(round(val_fraction * len(members)))
        if n_val >= len(members):
            n_val = len(members) - 1
        val_ids = {c.id for c in members[:n_val]}
        for c in by_group[group]:
            out["val" if c.id in val_ids else "train"].append(c)
    return out


def limit_per_class(train: list[Clip], per_class: int | None, seed: int) -> tuple[list[Clip], list[Clip]]:
    """At most ``per_class`` train clips of each activity (``data.train_per_class``): ``(kept, dropped)``.

    For learning curves: the clips kept of each activity are the first ``per_class``
    in the order of a seeded hash of their id, so a smaller size keeps a subset of a
    larger one (same seed) and the validation and test parts never change.
    Unlabelled clips (activity < 0) are kept. ``None`` keeps every clip.
    """
    if per_class is None:
        return list(train), []
    if per_class < 1:
        raise ValueError(f"data.train_per_class must be an integer >= 1 or null, got {per_class}")
    by_activity: dict[int, list[Clip]] = {}
    for c in train:
        by_activity.setdefault(c.activity, []).append(c)
    keep: set[str] = set()
    for activity, members in by_activity.items():
        ranked = sorted(members, key=lambda c: unit_hash(c.id, seed))
        keep.update(c.id for c in (ranked if activity < 0 else ranked[:per_class]))
    return [c for c in train if c.id in keep], [c for c in train if c.id not in keep]


def partition_notes(parts: dict[str, list[Clip]], val_fraction: float, unlisted: str = "ignore") -> list[str]:
    """Log lines saying where validation clips come from and how many clips no split lists."""
    notes = []
    if parts["val"] and all(c.split == "val" for c in parts["val"]):
        notes.append(f"validation: the {len(parts['val'])} clips of the val split (data.val_fraction = "
                     f"{val_fraction} is unused)")
    if parts["none"]:
        joined = "" if unlisted == "train" else "; data.unlisted=train trains on them"
        notes.append(f"{len(parts['none'])} clips are in no split (none given by splits.json or clips.csv): not trained on{joined}")
    elif unlisted == "train":
        n = sum(c.split == "" for k in ("train", "val") for c in parts[k])
        if n:
            notes.append(f"{n} clips in no split joined the train split (data.unlisted=train)")
    return notes
