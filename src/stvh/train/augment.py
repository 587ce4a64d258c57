"""Training-time augmentation of a batch (``train.augment``; all off in the paper's setting).

The paper trains on the clips as they are. On noisy, small data (few clips per
activity and side, jittered boxes, camera pan) the model over-fits, and most of
its test errors are the right activity on the wrong side. Four augmentations,
each drawn independently per clip (per person for ``drop``):

* ``flip`` (probability): mirror the clip left-right: boxes ``x -> W - x``, the
  5x5 RoI grids mirrored along their width, and the labels swapped with their
  mirror (``l_set`` <-> ``r_set``; the pairing is the dataset's,
  :meth:`stvh.data.clip.ClipDataset.mirrored`). A frozen CNN's features of a
  mirrored crop are not exactly the mirrored features; the grid flip is the
  part that is exact.
* ``jitter`` (fraction of the box's width / height): Gaussian noise on every
  box coordinate of every frame, as annotators' boxes have.
* ``pan`` (fraction of the image width): a camera travel over the clip, linear
  in time, random direction and length up to ``pan * W``; every box moves.
* ``drop`` (probability per person): a person is removed (masked, as if not
  tracked); a clip always keeps at least two persons.

Only the model inputs that come from the boxes change for jitter, pan and
drop; cached RoI features stay (they are what the annotated boxes saw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Augment:
    """Augmentation settings (``train.augment``) and the label mirrors of the dataset."""

    flip: float = 0.0
    jitter: float = 0.0
    pan: float = 0.0
    drop: float = 0.0
    mirror_activity: Tensor | None = None  # (C,) int64: activity id after a flip
    mirror_action: Tensor | None = None    # (A,) int64: action id after a flip

    @property
    def active(self) -> bool:
        return any(v > 0 for v in (self.flip, self.jitter, self.pan, self.drop))


def _mirror(labels: Tensor, table: Tensor | None) -> Tensor:
    """Map label ids through ``table`` (``-1`` stays ``-1``)."""
    if table is None or table.numel() == 0:
        return labels
    table = table.to(labels.device)
    return torch.where(labels >= 0, table[labels.clamp_min(0)], labels)


def flip_clips(batch: dict, which: Tensor, aug: Augment) -> dict:
    """Mirror the clips where ``which (B,)`` is True: boxes, RoI grids, activity and action labels."""
    out = dict(batch)
    boxes, mask = batch["boxes"], batch["mask"]  # (B, T, N, 4), (B, N)
    W = batch["image_size"][:, 1].to(boxes.dtype).view(-1, 1, 1)  # (B, 1, 1)
    flipped = torch.stack([W - boxes[..., 2], boxes[..., 1], W - boxes[..., 0], boxes[..., 3]], -1)
    flipped = torch.where(mask[:, None, :, None], flipped, torch.zeros_like(flipped))
    w = which.view(-1, 1, 1, 1)
    out["boxes"] = torch.where(w, flipped, boxes)
    if batch.get("roi") is not None:  # (B, N, T, C, s, s): mirror the grid's width axis
        out["roi"] = torch.where(which.view(-1, 1, 1, 1, 1, 1), batch["roi"].flip(-1), batch["roi"])
    out["activity"] = torch.where(which, _mirror(batch["activity"], aug.mirror_activity), batch["activity"])
    out["actions"] = torch.where(which[:, None], _mirror(batch["actions"], aug.mirror_action), batch["actions"])
    return out


def augment_batch(batch: dict, aug: Augment, generator: torch.Generator) -> dict:
    """A new batch dict with the augmentations of ``aug`` applied; random draws come from ``generator`` (CPU)."""
    if not aug.active:
        return batch
    boxes, mask = batch["boxes"], batch["mask"]  # (B, T, N, 4), (B, N)
    B, T, N, _ = boxes.shape
    dev, dtype = boxes.device, boxes.dtype

    def rand(*shape) -> Tensor:
        return torch.rand(*shape, generator=generator).to(dev, dtype)

    def randn(*shape) -> Tensor:
        return torch.randn(*shape, generator=generator).to(dev, dtype)

    out = dict(batch)
    if aug.flip > 0:
        out = flip_clips(out, rand(B) < aug.flip, aug)
    boxes = out["boxes"]
    real = mask[:, None, :, None]  # (B, 1, N, 1)
    if aug.jitter > 0:
        size = (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 1, 2)  # (B, T, N, 4): w, h, w, h
        noisy = boxes + aug.jitter * size * randn(B, T, N, 4)
        lo, hi = torch.minimum(noisy[..., :2], noisy[..., 2:]), torch.maximum(noisy[..., :2], noisy[..., 2:])
        boxes = torch.where(real, torch.cat([lo, hi], -1), boxes)
    if aug.pan > 0:
        W = out["image_size"][:, 1].to(dtype)  # (B,)
        length = rand(B) * aug.pan * W  # (B,) pixels over the clip
        angle = rand(B) * 2 * math.pi
        step = torch.linspace(-0.5, 0.5, T, device=dev, dtype=dtype) if T > 1 else torch.zeros(1, device=dev)
        shift = step.view(1, T, 1) * (length[:, None] * torch.stack([angle.cos(), angle.sin()], -1))[:, None]
        boxes = torch.where(real, boxes + shift.repeat(1, 1, 2)[:, :, None, :], boxes)  # (B, T, N, 4)
    out["boxes"] = boxes
    if aug.drop > 0:
        keep = mask & (rand(B, N) >= aug.drop)  # (B, N)
        keep = torch.where((keep.sum(1, keepdim=True) >= 2), keep, mask)  # at least two persons stay
        out["mask"] = keep
        out["boxes"] = torch.where(keep[:, None, :, None], out["boxes"], torch.zeros_like(out["boxes"]))
        out["actions"] = torch.where(keep, out["actions"], torch.full_like(out["actions"], -1))
        if out.get("roi") is not None:
            out["roi"] = torch.where(keep.view(B, N, 1, 1, 1, 1), out["roi"], torch.zeros_like(out["roi"]))
    return out
