"""Hashing and classification heads (Sec. 4.4, Eq. 5; Sec. 5.2, Eq. 12).

Relaxation of ``sign`` during training: ``h = tanh(LN(F_h(AVG(f))))`` is the
real-valued code in ``[-1, 1]`` used by every loss (Eq. 5 "normalize it to
obtain the floating-point value encoding h_i", see :class:`HashHead`); ``b = sign(h)`` with
``sign(0) = +1`` is the binary code, never back-propagated through. The
quantisation loss (Eq. 7) pushes ``|h|`` towards 1 so that ``b`` and ``h``
agree. No straight-through estimator is used.

Eq. 5 writes ``AVG(F_h(f_S))`` and Eq. 12 ``F(AVG(f))``: for an affine ``F``
the two are equal, so we pool first (cheaper). The average runs over the
real persons and all frames.

Option ``pooling="sides"`` (an extension; ``"paper"`` is Eq. 5's AVG): per
court side (``models/tracks.py``, :func:`court_sides`) the mean and the max over
that side's persons and all frames, concatenated before ``F_h`` (4d inputs).
A plain average forgets which half of the court a player is on, so "a player
of the left team sets" and "a player of the right team sets" pool to nearly
the same vector, and it dilutes the one player who acts among the ones who
stand; the max keeps that player's features whole.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def binarize(h: Tensor) -> Tensor:
    """``sign`` with ``sign(0) = +1``: ``(..., K)`` real -> ``{-1, +1}`` of the same dtype."""
    return torch.where(h >= 0, torch.ones_like(h), -torch.ones_like(h))


def masked_mean(f: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``f (B, N, T, d)`` over real persons and all frames -> ``(B, d)``."""
    m = mask[:, :, None, None]  # (B, N, 1, 1)
    total = torch.where(m, f, torch.zeros_like(f)).sum((1, 2))  # (B, d)
    count = (mask.sum(1).clamp_min(1) * f.shape[2]).to(f.dtype)  # (B,)
    return total / count[:, None]


POOLINGS = ("paper", "sides")


def side_means(f: Tensor, mask: Tensor, left: Tensor) -> Tensor:
    """Means of ``f (B, N, T, d)`` over the left and the right persons (weights ``left (B, N)``) -> ``(B, 2d)``."""
    w = torch.stack([left, 1.0 - left], 1) * mask[:, None, :].to(f.dtype)  # (B, 2, N)
    pooled = torch.einsum("bsn,bntd->bsd", w, f) / f.shape[2]  # (B, 2, d)  mean over frames
    pooled = pooled / w.sum(2, keepdim=True).clamp_min(1e-6)  # mean over the side's persons
    return pooled.flatten(1)  # (B, 2d)


def side_maxes(f: Tensor, mask: Tensor, left: Tensor) -> Tensor:
    """Max of ``f (B, N, T, d)`` over the frames of the left (``left >= 0.5``) and of the right real
    persons -> ``(B, 2d)``; a side without a person gives zeros."""
    on_left = left >= 0.5  # (B, N)
    out = []
    for side in (on_left, ~on_left):
        keep = (side & mask.bool())[:, :, None, None]  # (B, N, 1, 1)
        x = f.masked_fill(~keep, torch.finfo(f.dtype).min).amax((1, 2))  # (B, d)
        out.append(torch.where(keep.flatten(1).any(1, keepdim=True), x, torch.zeros_like(x)))
    return torch.cat(out, -1)  # (B, 2d)


class HashHead(nn.Module):
    """``h = tanh(LN(F_h(AVG(f))))``: ``f (B, N, T, d)``, ``mask (B, N)`` -> ``(B, K)`` (Eq. 5 / 12).

    ``norm="layer"`` (default) standardises each code over its K entries
    (LayerNorm) before tanh: Eq. 5's "normalize it". Without it (``"none"``,
    the literal ``tanh(F_h(.))``) the pairwise L_q (Eq. 7) often collapses all
    codes of a batch onto one saturated vector early in training, when the
    codes of different clips are still alike (their ``b_i^T b_j`` is ~K); the
    normalisation keeps the pre-activations at unit scale so tanh does not
    saturate before the classes separate. It is per code, so codes never depend
    on the rest of the batch (BatchNorm would, and with the paper's batch of 2
    it would force the two codes to be opposite).
    """

    def __init__(self, d: int, bits: int, norm: str = "layer", pooling: str = "paper"):
        super().__init__()
        if norm not in ("layer", "none"):
            raise ValueError(f"hash norm must be 'layer' or 'none', got {norm!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.fc = nn.Linear(4 * d if pooling == "sides" else d, bits)
        self.norm = nn.LayerNorm(bits) if norm == "layer" else nn.Identity()

    def forward(self, f: Tensor, mask: Tensor, left: Tensor | None = None) -> Tensor:
        """``left (B, N)``: weight of the left side per person, needed by ``pooling="sides"``."""
        if self.pooling == "sides":
            if left is None:
                raise ValueError("pooling='sides' needs the court side of every person (left (B, N))")
            z = self.fc(torch.cat([side_means(f, mask, left), side_maxes(f, mask, left)], -1))  # (B, K)
        else:
            z = self.fc(masked_mean(f, mask))  # (B, K)
        return torch.tanh(self.norm(z))  # (B, K)


class ActionHead(nn.Module):
    """``F_a`` on time-pooled per-person features: ``(B, N, T, d)`` -> logits ``(B, N, A)`` (Sec. 4.4)."""

    def __init__(self, d: int, num_actions: int):
        super().__init__()
        self.fc = nn.Linear(d, num_actions)

    def forward(self, f: Tensor) -> Tensor:
        return self.fc(f.mean(2))  # (B, N, A)


class ActivityHead(nn.Module):
    """``F_c(h)``: ``(B, K)`` -> logits ``(B, C)`` (Eq. 5); also applied to binary codes."""

    def __init__(self, bits: int, num_activities: int):
        super().__init__()
        self.fc = nn.Linear(bits, num_activities)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h)
