"""Positional module (Sec. 4.2): the temporal IoU graph G_T and spatial distance graph G_S.

Orientation convention used everywhere in :mod:`stvh.models`: in a graph or
attention map ``A[..., q, k]`` the row index ``q`` is the *receiver* (query)
and the column index ``k`` is the *sender* (key). The temporal graph is
directed, "only preceding frames influence subsequent ones" (Sec. 4.2), so
``G_T[b, n, t, s]`` may be non-zero only for ``s <= t`` (lower triangle,
diagonal included): frame ``t`` receives from itself and from earlier frames.

Boxes are pixels ``x1, y1, x2, y2`` with shape ``(B, T, N, 4)`` (Sec. 3) and
``mask (B, N)`` marks real persons; padded persons never contribute.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


def _box_iou_over_time(boxes: Tensor) -> Tensor:
    """Pairwise IoU of each person's boxes across frames (Eq. 1).

    ``boxes (B, T, N, 4)`` -> ``(B, N, T, T)``; a zero union gives IoU 0.
    """
    bx = boxes.permute(0, 2, 1, 3)  # (B, N, T, 4)
    a = bx.unsqueeze(3)  # (B, N, T, 1, 4)  receiver frame t1
    c = bx.unsqueeze(2)  # (B, N, 1, T, 4)  sender frame t2
    iw = (torch.minimum(a[..., 2], c[..., 2]) - torch.maximum(a[..., 0], c[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], c[..., 3]) - torch.maximum(a[..., 1], c[..., 1])).clamp_min(0)
    inter = iw * ih  # (B, N, T, T)
    area = (bx[..., 2] - bx[..., 0]).clamp_min(0) * (bx[..., 3] - bx[..., 1]).clamp_min(0)  # (B, N, T)
    union = area.unsqueeze(3) + area.unsqueeze(2) - inter  # (B, N, T, T)
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def temporal_support(mask: Tensor, T: int) -> Tensor:
    """Directed support of G_T: ``(B, N, T, T)`` bool, true where ``s <= t`` for real persons."""
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()  # (T, T)
    return causal & mask[:, :, None, None]  # (B, N, T, T)


def spatial_support(mask: Tensor, T: int) -> Tensor:
    """Support of G_S: ``(B, T, N, N)`` bool, true where both persons are real."""
    pair = mask[:, :, None] & mask[:, None, :]  # (B, N, N)
    return pair[:, None].expand(-1, T, -1, -1)  # (B, T, N, N)


def iou_graph(boxes: Tensor, mask: Tensor) -> Tensor:
    """Directed per-person IoU adjacency of Eq. 1.

    Returns ``(B, N, T, T)`` with entry ``[b, n, t, s] = IoU(box_{n,t}, box_{n,s})``
    for ``s <= t`` (receiver ``t`` is the row, sender ``s`` the column) and 0 for
    ``s > t``. The diagonal is 1 for every real person (even a degenerate box) so
    every receiver row has support; all entries of padded persons are 0.
    """
    B, T, N, _ = boxes.shape
    boxes = torch.where(mask[:, None, :, None], boxes, torch.zeros_like(boxes))  # (B, T, N, 4)
    iou = _box_iou_over_time(boxes)  # (B, N, T, T)
    eye = torch.eye(T, dtype=torch.bool, device=boxes.device)  # (T, T)
    iou = torch.where(eye, torch.ones_like(iou), iou)
    return torch.where(temporal_support(mask, T), iou, torch.zeros_like(iou))


class TemporalGraph(nn.Module):
    """G_T = IoU adjacency weighted by a learnable ``W (T x T)`` (Sec. 4.2).

    The weighting is element-wise (``G_T = IoU * W``): it adapts each directed
    edge ("dynamically adjust internode connections") and, unlike a matrix
    product, keeps the directed lower-triangular structure. ``W`` is allocated
    for ``max_frames`` and sliced to the clip length ``T``; it starts at ones,
    so an untrained module returns the plain IoU graph.
    """

    def __init__(self, max_frames: int = 64):
        super().__init__()
        self.max_frames = max_frames
        self.weight = nn.Parameter(torch.ones(max_frames, max_frames))  # (Tmax, Tmax)

    def forward(self, boxes: Tensor, mask: Tensor) -> Tensor:
        """``boxes (B, T, N, 4)``, ``mask (B, N)`` -> ``G_T (B, N, T, T)``."""
        T = boxes.shape[1]
        if T > self.max_frames:
            raise ValueError(f"clip has T={T} frames, TemporalGraph was built for max_frames={self.max_frames}")
        return iou_graph(boxes, mask) * self.weight[:T, :T]


def distance_graph(boxes: Tensor, mask: Tensor, eps: float = 1e-4) -> Tensor:
    """Spatial graph G_S of Eq. 2: ``(B, T, N, N)``.

    ``G_S[b, t, i, j] = 1 - sqrt(sum_c (box_ic - box_jc)^2 / std_c^2)`` for real
    persons ``i, j`` in frame ``t``, else 0. ``std (B, T, 4)`` is the population
    standard deviation of each coordinate over the *real* persons of that frame
    (the paper's ``std in R^{T x 4}``), clamped below by ``eps`` pixels. We divide
    squared differences by ``std^2`` (the standardised Euclidean distance): it is
    dimensionless and scale invariant, which "normalised" requires; dividing by
    ``std`` would leave pixel units under the root. The diagonal is 1; values
    can be negative for persons more than one standardised unit apart.
    """
    B, T, N, _ = boxes.shape
    m = mask[:, None, :, None]  # (B, 1, N, 1)
    boxes = torch.where(m, boxes, torch.zeros_like(boxes))  # (B, T, N, 4)
    count = mask.sum(1).clamp_min(1).to(boxes.dtype)[:, None, None, None]  # (B, 1, 1, 1)
    mean = boxes.sum(2, keepdim=True) / count  # (B, T, 1, 4)
    var = (torch.where(m, boxes - mean, torch.zeros_like(boxes)) ** 2).sum(2, keepdim=True) / count
    std = var.sqrt().clamp_min(eps)  # (B, T, 1, 4)
    z = boxes / std  # (B, T, N, 4)
    d2 = ((z[:, :, :, None] - z[:, :, None, :]) ** 2).sum(-1)  # (B, T, N, N)
    dist = torch.where(d2 > 0, d2.clamp_min(1e-20).sqrt(), torch.zeros_like(d2))
    g = 1.0 - dist
    return torch.where(spatial_support(mask, T), g, torch.zeros_like(g))


class Graphs(NamedTuple):
    """What the positional module hands to every block and to the losses."""

    g_t: Tensor  # (B, N, T, T) temporal graph G_T
    g_s: Tensor  # (B, T, N, N) spatial graph G_S
    sup_t: Tensor  # (B, N, T, T) bool, directed support of G_T
    sup_s: Tensor  # (B, T, N, N) bool, real x real persons
    mask: Tensor  # (B, N) bool


class PositionalModule(nn.Module):
    """Sec. 4.2: boxes -> (G_T, G_S) with their supports; owns the learnable W of G_T."""

    def __init__(self, max_frames: int = 64, eps: float = 1e-4):
        super().__init__()
        self.temporal = TemporalGraph(max_frames)
        self.eps = eps

    def forward(self, boxes: Tensor, mask: Tensor) -> Graphs:
        T = boxes.shape[1]
        return Graphs(self.temporal(boxes, mask), distance_graph(boxes, mask, self.eps),
                      temporal_support(mask, T), spatial_support(mask, T), mask)
