"""Ablation baselines of Sec. 6.5.1 / Table 5: the MSF block replaced by a
standard transformer block, with positional features added at the input
(M-STVH^BD) or at the output of every block (M-STVH^ED).

* Transformer block: pre-norm multi-head self-attention over all ``N x T``
  person-frame tokens of a clip jointly (padded persons masked), then FFN;
  no graph enters the attention (SGAT with ``graph=None``).
* Positional features (Sec. 4.2 quantities, embedded): per person and frame,
  the box normalised by the image size (4), the centre motion since the
  previous frame (2), the G_T edge from the previous frame (1; 1 at t = 0) and
  the mean G_S edge to the other real persons (1; 0 when alone): 8 numbers,
  projected to ``d`` by a linear layer (one at the input for BD, one per block
  output for ED).
* Everything else (visual module, per-depth hash/activity heads, action head,
  decoder, GCN) is M-STVH's, so only the fusion differs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import SGAT
from .blocks import FFN, zero_padded
from .graphs import Graphs
from .mstvh import MSTVH

POS_FEATURES = 8


def positional_features(boxes: Tensor, image_size: Tensor, g: Graphs) -> Tensor:
    """``boxes (B, T, N, 4)``, ``image_size (B, 2)`` = (H, W) -> ``(B, N, T, 8)``."""
    B, T, N, _ = boxes.shape
    size = torch.as_tensor(image_size, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2).expand(B, 2)
    H, W = size[:, 0], size[:, 1]
    scale = torch.stack([W, H, W, H], -1).clamp_min(1.0)[:, None, None]  # (B, 1, 1, 4)
    nb = (boxes / scale).permute(0, 2, 1, 3)  # (B, N, T, 4)
    centre = (nb[..., :2] + nb[..., 2:]) / 2  # (B, N, T, 2)
    motion = torch.cat([torch.zeros_like(centre[:, :, :1]), centre[:, :, 1:] - centre[:, :, :-1]], 2)
    prev = torch.diagonal(g.g_t, offset=-1, dim1=-2, dim2=-1)  # (B, N, T-1)  G_T[t, t-1]
    prev = torch.cat([torch.ones_like(prev[..., :1]), prev], -1)[..., None]  # (B, N, T, 1)
    eye = torch.eye(N, dtype=torch.bool, device=boxes.device)
    others = g.sup_s & ~eye  # (B, T, N, N)
    near = torch.where(others, g.g_s, torch.zeros_like(g.g_s)).sum(-1) / others.sum(-1).clamp_min(1)  # (B, T, N)
    p = torch.cat([nb, motion, prev, near.transpose(1, 2)[..., None]], -1)  # (B, N, T, 8)
    return zero_padded(p, g.mask)


class TransformerBlock(nn.Module):
    """Standard pre-norm transformer block over the ``N*T`` tokens of a clip."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0, ffn_mult: int = 4,
                 edge_hidden: int = 16, keep_attention: bool = False):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = SGAT(d, heads, None, dropout, keep_attention)  # no graph term
        self.ffn = FFN(d, ffn_mult, dropout)

    def forward(self, f: Tensor, g: Graphs) -> Tensor:
        B, N, T, d = f.shape
        tok = g.mask[:, :, None].expand(B, N, T).reshape(B, N * T)  # (B, NT)
        sup = (tok[:, :, None] & tok[:, None, :])[:, None]  # (B, 1, NT, NT)
        x = f.reshape(B, 1, N * T, d)
        x = x + self.attn(self.norm1(x), None, sup)  # (B, 1, NT, d)
        x = x + self.ffn(self.norm2(x))
        return zero_padded(x.view(B, N, T, d), g.mask)

    def attention_maps(self) -> dict:
        return {"joint": self.attn.last_attention}


class MSTVHBD(MSTVH):
    """M-STVH^BD: positional features added to the visual features before the blocks."""

    def _make_blocks(self, d: int, heads: int, depth: int, **kw) -> nn.ModuleList:
        self.pos = nn.Linear(POS_FEATURES, d)
        return nn.ModuleList([TransformerBlock(d, heads, **kw) for _ in range(depth)])

    def _stack(self, f: Tensor, g: Graphs, boxes: Tensor, image_size: Tensor) -> list[Tensor]:
        f = zero_padded(f + self.pos(positional_features(boxes, image_size, g)), g.mask)
        return super()._stack(f, g, boxes, image_size)


class MSTVHED(MSTVH):
    """M-STVH^ED: positional features added to the output of every block."""

    def _make_blocks(self, d: int, heads: int, depth: int, **kw) -> nn.ModuleList:
        self.pos = nn.ModuleList([nn.Linear(POS_FEATURES, d) for _ in range(depth)])
        return nn.ModuleList([TransformerBlock(d, heads, **kw) for _ in range(depth)])

    def _stack(self, f: Tensor, g: Graphs, boxes: Tensor, image_size: Tensor) -> list[Tensor]:
        p = positional_features(boxes, image_size, g)  # (B, N, T, 8)
        feats = []
        for blk, proj in zip(self.blocks, self.pos):
            f = zero_padded(blk(f, g) + proj(p), g.mask)
            feats.append(f)
        return feats
