"""The GCN of the hash contrastive loss L_CON (Sec. 4.5, Eq. 8).

Node features are the predicted action distributions ``softmax(action_logits)``
``(B, N, A)``; the adjacency is G_S (Eq. 2) averaged over frames. G_S can be
negative (persons more than one standardised unit apart), so the adjacency is
``A = relu(mean_t G_S)`` over real persons with self loops (diagonal 1), row
normalised (``D^-1 A``). Two graph convolutions (Kipf & Welling) give
per-person features that are averaged over real persons and projected to K
dimensions: that is ``a_i``. The module is owned by the model so its weights
train with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def contrastive_adjacency(g_s: Tensor, mask: Tensor) -> Tensor:
    """``G_S (B, T, N, N)``, ``mask (B, N)`` -> row-normalised adjacency ``(B, N, N)``."""
    pair = mask[:, :, None] & mask[:, None, :]  # (B, N, N)
    a = torch.relu(g_s.mean(1))  # (B, N, N)
    eye = torch.eye(a.shape[-1], dtype=torch.bool, device=a.device)
    a = torch.where(eye & pair, torch.ones_like(a), a)  # self loops on real persons
    a = torch.where(pair, a, torch.zeros_like(a))
    return a / a.sum(-1, keepdim=True).clamp_min(1e-12)


class ContrastiveGCN(nn.Module):
    """``(action_logits (B, N, A), G_S (B, T, N, N), mask (B, N))`` -> ``a (B, K)``."""

    def __init__(self, num_actions: int, bits: int, hidden: int = 64):
        super().__init__()
        self.w1 = nn.Linear(num_actions, hidden)
        self.w2 = nn.Linear(hidden, hidden)
        self.proj = nn.Linear(hidden, bits)

    def forward(self, action_logits: Tensor, g_s: Tensor, mask: Tensor) -> Tensor:
        adj = contrastive_adjacency(g_s, mask)  # (B, N, N)
        x = torch.softmax(action_logits, -1)  # (B, N, A)
        x = torch.relu(adj @ self.w1(x))  # (B, N, hidden)
        x = adj @ self.w2(x)  # (B, N, hidden)
        m = mask[:, :, None]
        pooled = torch.where(m, x, torch.zeros_like(x)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return self.proj(pooled)  # (B, K)
