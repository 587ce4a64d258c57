"""PVF (Eq. 3) and MSF (Eq. 10) blocks: LayerNorm -> graph attention -> FFN.

Residuals: Eq. 3 and Eq. 10 write ``f_{tau+1} = FFN(SGAT(LayerNorm(f_tau), G))``
without skip connections. We use the standard pre-norm residual form,

    f'' = f + Attn(LayerNorm(f), G)
    f_{tau+1} = f'' + FFN(LayerNorm(f''))

because stacks of 2-5 blocks without skips train poorly and the shallow
(visual-focused) codes of M-STVH need the visual features to survive each block.
After every block the features of padded persons are reset to zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import GroupMFAT, ObjectMFAT
from .graphs import Graphs


class FFN(nn.Module):
    """Position-wise feed-forward network ``d -> mult*d -> d`` with GELU."""

    def __init__(self, d: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, mult * d), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mult * d, d), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


#: Inference runs the blocks over clips in chunks of about this many person-frames per torch thread:
#: the FFN's ``(rows, 4d)`` intermediate then stays in cache and under the allocator's mmap threshold
#: (a fresh multi-megabyte tensor per call costs page faults); clips never mix, so the result is the same.
CHUNK_ROWS = 1024


def in_chunks(block: nn.Module, f: Tensor, g: Graphs, rows: int | None = None) -> Tensor:
    """``block._forward`` over chunks of clips of ``f (B, N, T, d)`` (inference only)."""
    B, N, T, _ = f.shape
    rows = CHUNK_ROWS * torch.get_num_threads() if rows is None else rows
    step = max(1, rows // max(N * T, 1))
    if step >= B:
        return block._forward(f, g)
    out = torch.empty_like(f)
    for b0 in range(0, B, step):
        part = Graphs(*(x[b0:b0 + step] for x in g))
        out[b0:b0 + step] = block._forward(f[b0:b0 + step], part)
    return out


def _chunked(block: nn.Module) -> bool:
    """Inference without attention maps kept (chunks would keep only the last chunk's maps)."""
    return not torch.is_grad_enabled() and not block.training and not any(
        getattr(m, "keep_attention", False) for m in block.modules())


def zero_padded(x: Tensor, mask: Tensor) -> Tensor:
    """``x (B, N, T, d)`` with the rows of padded persons set to 0."""
    return torch.where(mask[:, :, None, None], x, torch.zeros_like(x))


class PVFBlock(nn.Module):
    """One PVF block (Eq. 3) on ``f (B, N, T, d)``.

    ``axis="temporal"``: SGAT over the frames of each person with G_T (object
    interleaving, gives f_T); ``axis="spatial"``: SGAT over the persons of each
    frame with G_S (group interleaving, gives f_S).
    """

    def __init__(self, d: int, heads: int, axis: str, dropout: float = 0.0, ffn_mult: int = 4,
                 edge_hidden: int = 16, keep_attention: bool = False):
        super().__init__()
        if axis not in ("temporal", "spatial"):
            raise ValueError(f"axis must be 'temporal' or 'spatial', got {axis!r}")
        self.axis = axis
        cls = ObjectMFAT if axis == "temporal" else GroupMFAT
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = cls(d, heads, edge_hidden, dropout, keep_attention)
        self.ffn = FFN(d, ffn_mult, dropout)

    def forward(self, f: Tensor, g: Graphs) -> Tensor:
        return in_chunks(self, f, g) if _chunked(self) else self._forward(f, g)

    def _forward(self, f: Tensor, g: Graphs) -> Tensor:
        graph, sup = (g.g_t, g.sup_t) if self.axis == "temporal" else (g.g_s, g.sup_s)
        f = f + self.attn(self.norm1(f), graph, sup)  # f''  (B, N, T, d)
        f = f + self.ffn(self.norm2(f))  # f_{tau+1}  (B, N, T, d)
        return zero_padded(f, g.mask)

    def attention_maps(self) -> dict:
        return {self.axis: self.attn.last_attention}


class MSFBlock(nn.Module):
    """One MSF block (Eq. 10) with MFAT = G-MFAT after O-MFAT (Eq. 11).

    Ordering: O-MFAT (each person over time, G_T) first, then G-MFAT (each frame
    over persons, G_S): individual actions are modelled before the group
    activity they make up, the order of Sec. 4.3 and Fig. 6. Each attention has
    its own pre-norm and residual; then the FFN.
    """

    def __init__(self, d: int, heads: int, dropout: float = 0.0, ffn_mult: int = 4,
                 edge_hidden: int = 16, keep_attention: bool = False):
        super().__init__()
        self.norm_o, self.norm_g, self.norm_f = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.o_mfat = ObjectMFAT(d, heads, edge_hidden, dropout, keep_attention)
        self.g_mfat = GroupMFAT(d, heads, edge_hidden, dropout, keep_attention)
        self.ffn = FFN(d, ffn_mult, dropout)

    def forward(self, f: Tensor, g: Graphs) -> Tensor:
        return in_chunks(self, f, g) if _chunked(self) else self._forward(f, g)

    def _forward(self, f: Tensor, g: Graphs) -> Tensor:
        f = f + self.o_mfat(self.norm_o(f), g.g_t, g.sup_t)  # (B, N, T, d)
        f = f + self.g_mfat(self.norm_g(f), g.g_s, g.sup_s)  # (B, N, T, d)
        f = f + self.ffn(self.norm_f(f))  # f_{tau+1}  (B, N, T, d)
        return zero_padded(f, g.mask)

    def attention_maps(self) -> dict:
        return {"o_mfat": self.o_mfat.last_attention, "g_mfat": self.g_mfat.last_attention}
