"""Sparse graph relation attention (SGAT, Eq. 4) and its two MFAT uses (Eq. 11).

Eq. 4 for one head, rows = receivers (queries), columns = senders (keys):

    AT_v(f)   = softmax((W2 f)(W3 f)^T / sqrt(C))
    AT_p(G)   = softmax(G x W)
    Attention = AT_v (x) AT_p
    SGAT(f,G) = Attention (W1 f)

Choices (the paper leaves them open):

* ``AT_v x AT_p`` is the *element-wise* product, renormalised over each row.
  A matrix product would let a receiver attend to senders the graph forbids
  (it would destroy the directed, "sparse" structure of G_T); the element-wise
  product keeps every zero of either map. Since both maps are softmaxes over the
  same support, ``AT_v * AT_p / sum = softmax(logits_v + logits_p)`` exactly
  (the normalisers cancel), which is how it is computed (stable in log space).
* ``G x W``: ``W`` must "accommodate the floating-point values" of G after "a
  nonlinear transformation". A ``W`` of size ``L x L`` would tie the module to a
  fixed number of persons and to their (arbitrary) slot order, so we apply ``W``
  per edge: each edge value ``g`` goes through ``tanh(w1 g + c1)`` (``edge_hidden``
  units, the nonlinearity) and is projected by ``W`` to one logit per head.
* Multi-head: ``heads`` heads with ``C = d / heads`` channels each; heads are
  concatenated with no output projection (Eq. 4 has none; the FFN mixes them).
* Masking: ``support (.., L, L)`` marks allowed (receiver, sender) pairs
  (directed for G_T, real x real persons for G_S). Unsupported pairs get weight
  exactly 0; a receiver row with no support (a padded person) outputs zeros.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class EdgeLogits(nn.Module):
    """Per-edge ``W tanh(w1 g + c1)``: graph ``(..., L, L)`` -> logits ``(..., H, L, L)``."""

    def __init__(self, heads: int, hidden: int = 16):
        super().__init__()
        self.inner = nn.Linear(1, hidden)
        self.weight = nn.Linear(hidden, heads, bias=False)  # the W of "G x W" (a row bias cancels)

    def forward(self, graph: Tensor) -> Tensor:
        z = torch.tanh(self.inner(graph.unsqueeze(-1)))  # (..., L, L, hidden)
        return self.weight(z).movedim(-1, -3)  # (..., H, L, L)

    def infer(self, graph: Tensor) -> Tensor:
        """:meth:`forward` without autograd, as ``(..., L, L, H)`` (not moved), equal to float32
        rounding. With ``tanh(x) = 2 sigmoid(2x) - 1`` (``torch.tanh`` costs three sigmoids on CPU),
        ``W tanh(a g + c) = 2W sigmoid(2a g + 2c) - W 1``: one fused multiply-add, one sigmoid and
        one product with a bias, over ``(hidden, M)`` (M = graph.numel(); the wide product is the
        fast one on CPU)."""
        a, c = self.inner.weight * 2.0, self.inner.bias[:, None] * 2.0  # (hidden, 1) each
        s = torch.sigmoid_(torch.addcmul(c, a, graph.reshape(1, -1)))  # (hidden, M)
        w = self.weight.weight  # (H, hidden)
        out = torch.addmm(w.sum(1, keepdim=True), w, s, beta=-1.0, alpha=2.0)  # (H, M)
        return out.view(-1, *graph.shape).movedim(0, -1)  # (..., L, L, H)


class SGAT(nn.Module):
    """SGAT of Eq. 4 over the last-but-one axis of ``f (B, S, L, d)``.

    ``S`` indexes independent sequences (persons for O-MFAT, frames for G-MFAT),
    ``L`` the attended axis. ``graph (B, S, L, L)`` or ``None`` (plain
    self-attention, used by the ablation baselines, which build it with
    ``edge_hidden=None``), ``support (B, S, L, L)`` bool.
    With ``keep_attention`` the last ``AT_v``, ``AT_p`` and combined maps
    ``(B, S, H, L, L)`` are stored (detached) in ``self.last_attention``.
    """

    def __init__(self, d: int, heads: int = 8, edge_hidden: int | None = 16, dropout: float = 0.0,
                 keep_attention: bool = False):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} is not divisible by heads={heads}")
        self.d, self.heads = d, heads
        self.w1 = nn.Linear(d, d, bias=False)  # values  (W1)
        self.w2 = nn.Linear(d, d, bias=False)  # queries (W2)
        self.w3 = nn.Linear(d, d, bias=False)  # keys    (W3)
        self.edge = EdgeLogits(heads, edge_hidden) if edge_hidden else None  # None: plain self-attention
        self.drop = nn.Dropout(dropout)
        self.keep_attention = keep_attention
        self.last_attention: dict[str, Tensor] | None = None

    def _fast(self) -> bool:
        """Whether :meth:`infer` may stand in for the reference forward (no autograd, no dropout,
        no attention maps kept)."""
        return not torch.is_grad_enabled() and not self.keep_attention and not (self.training and self.drop.p > 0)

    def infer(self, f: Tensor, graph: Tensor | None, support: Tensor, transposed: bool = False) -> Tensor:
        """The forward of Eq. 4 for inference, equal to float32 rounding: one product for the
        queries, keys and values, the graph logits and the support folded into one additive bias.

        ``f (B, A, B', d)``; attends over axis 2 (``transposed=False``: ``f`` is ``(B, S, L, d)``) or
        over axis 1 (``transposed=True``: ``f`` is ``(B, L, S, d)``, the layout G-MFAT gets, so the
        persons x frames tensor is never transposed in memory). Returns ``f``'s layout.
        """
        d, H = self.d, self.heads
        C = d // H
        w = torch.cat([self.w2.weight, self.w3.weight, self.w1.weight])  # (3d, d): queries, keys, values
        qkv = f @ w.t()  # (B, A, A', 3d)
        if transposed:
            qkv = qkv.transpose(1, 2)  # (B, S, L, 3d)
        B, S, L = qkv.shape[:3]
        q, k, v = (qkv[..., i * d:(i + 1) * d].unflatten(-1, (H, C)).transpose(2, 3) for i in range(3))  # (B,S,H,L,C)
        logits = (q @ k.transpose(-1, -2)).mul_(1.0 / math.sqrt(C))  # (B, S, H, L, L)
        if graph is not None and self.edge is not None:
            logits += self.edge.infer(graph).movedim(-1, -3)
        sup = support[:, :, None]  # (B, S, 1, L, L)
        logits.masked_fill_(~sup, torch.finfo(f.dtype).min)
        attn = torch.softmax(logits, -1).mul_(sup)  # (B, S, H, L, L)
        out = attn @ v  # (B, S, H, L, C)
        if transposed:
            return out.permute(0, 3, 1, 2, 4).reshape(B, L, S, d)  # (B, L, S, d)
        return out.transpose(2, 3).reshape(B, S, L, d)  # (B, S, L, d)

    def _split(self, x: Tensor) -> Tensor:
        B, S, L, _ = x.shape
        return x.view(B, S, L, self.heads, -1).transpose(2, 3)  # (B, S, H, L, C)

    def forward(self, f: Tensor, graph: Tensor | None, support: Tensor) -> Tensor:
        if self._fast():
            return self.infer(f, graph, support)
        B, S, L, d = f.shape
        q, k, v = self._split(self.w2(f)), self._split(self.w3(f)), self._split(self.w1(f))  # (B, S, H, L, C)
        logits_v = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (B, S, H, L, L)
        use_graph = graph is not None and self.edge is not None
        logits_p = self.edge(graph) if use_graph else torch.zeros_like(logits_v)  # (B, S, H, L, L)
        sup = support[:, :, None]  # (B, S, 1, L, L)
        neg = torch.finfo(f.dtype).min
        attn = torch.softmax((logits_v + logits_p).masked_fill(~sup, neg), -1) * sup  # (B, S, H, L, L)
        if self.keep_attention:
            self.last_attention = {
                "visual": (torch.softmax(logits_v.masked_fill(~sup, neg), -1) * sup).detach(),
                "positional": (torch.softmax(logits_p.masked_fill(~sup, neg), -1) * sup).detach(),
                "combined": attn.detach(),
            }
        out = self.drop(attn) @ v  # (B, S, H, L, C)
        return out.transpose(2, 3).reshape(B, S, L, d)  # (B, S, L, d)


class ObjectMFAT(SGAT):
    """O-MFAT (Eq. 11): SGAT over frames of each person with G_T; ``W_o`` is ``w1``.

    ``f (B, N, T, d)``, ``G_T (B, N, T, T)``, ``support (B, N, T, T)`` -> ``(B, N, T, d)``.
    """


class GroupMFAT(SGAT):
    """G-MFAT (Eq. 11, with G_S: the paper's "AT_p(G_T)" there is a typo): SGAT over
    persons of each frame; ``W_g`` is ``w1``.

    ``f (B, N, T, d)``, ``G_S (B, T, N, N)``, ``support (B, T, N, N)`` -> ``(B, N, T, d)``.
    """

    def forward(self, f: Tensor, graph: Tensor | None, support: Tensor) -> Tensor:
        if self._fast():
            return self.infer(f, graph, support, transposed=True)
        return super().forward(f.transpose(1, 2), graph, support).transpose(1, 2)
