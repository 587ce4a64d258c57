"""M-STVH (Sec. 5, Fig. 5): ``depth`` (Upsilon) stacked MSF blocks, a code per depth.

* MSF stack (Eq. 10-11): block ``tau`` maps ``f_(tau)`` to ``f_(tau+1)``; the
  output of block ``tau`` (``tau = 1..Upsilon``) feeds hash head ``F_(tau)`` and
  activity head ``tau`` (Eq. 12, Eq. 14). Lists in the output run shallow
  (visual-focused) to deep (activity-focused).
* Actions (Sec. 5.2): Eq. 12's text says "h_(Upsilon)", but a pooled code has no
  per-person axis, so ``F_a`` reads the time-pooled per-person output of the
  deepest block.
* Reconstruction (Sec. 5, Eq. 13): a two-layer MLP decodes, per person and
  frame, the visual module's ``recon_target`` (the reduced ``f_roi``) from the
  output of the *first* MSF block: the shallow, visual-focused features are
  the ones asked to keep the object's visual content; deeper ones are free to
  drift towards activity semantics. The target is detached (a trainable
  backbone must not shrink its own target).
  Option ``recon_from="code"`` decodes it from the shallowest *code* h_(1)
  instead (one vector per clip, so it learns the clip's mean appearance): the
  visual-focused code is then trained to keep the visual content itself.
* L_CON (Eq. 8) uses the deepest code: the GCN encoding ``a_i`` describes the
  group activity, the focus of the deepest code.
* Option ``joint_filter=True`` (``loss.filter > 0``; the paper fits F after
  training, Sec. 5.4): the model owns the filter matrix F and returns the real
  codes derived from its deepest real code (Eq. 16) in ``out.derived``; the
  filter loss (``losses.filter_consistency``, Eq. 17) then trains F *and* the
  model, so the deepest code learns to carry what the shallower codes need.
* Option ``shared_bits=s`` (an extension; 0 = the paper): the first ``s``
  entries of the deepest code are the first ``s`` entries of the shallowest
  code (detached: the deep code's losses do not change them), the deepest hash
  head gives the other ``K - s``. The deepest code then holds the clip's
  appearance in ``s`` bits, which the filter matrix F needs to derive the
  visual-focused codes from it (Sec. 5.4); storage stays ``M K + K^2``.
* Option ``shared_bits_middle=s'`` (an extension; 0 = the paper): the same for
  every depth between the first and the deepest, with its own ``s'`` (more than
  the deepest's ``s`` gives Fig. 10's shape: visual focus falling with depth,
  activity focus rising, instead of a middle code that drops the appearance).
* Option ``pooling="sides"`` and ``tracks``: see ``models/heads.py`` and
  ``models/tracks.py`` (extensions; the paper's setting is ``"paper"`` / ``"raw"``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import MSFBlock, zero_padded
from .filter import FilterMatrix
from .graphs import Graphs
from .heads import ActivityHead, HashHead, binarize
from .output import ModelOutput
from .stvh import HashingModel
from .tracks import court_sides


class MSTVH(HashingModel):
    """M-STVH: ``forward(boxes (B,T,N,4), mask (B,N), image_size (B,2), frames=None, roi=None)``."""

    def __init__(self, bits: int = 128, depth: int = 3, d: int = 1024, num_activities: int = 8,
                 num_actions: int = 9, heads: int = 8, dropout: float = 0.1, backbone: str = "none",
                 visual: dict | None = None, visual_module: nn.Module | None = None, ffn_mult: int = 4,
                 edge_hidden: int = 16, gcn_hidden: int = 64, max_frames: int = 64,
                 keep_attention: bool = False, hash_norm: str = "layer", recon_from: str = "block",
                 pooling: str = "paper", tracks: str = "raw", joint_filter: bool = False, shared_bits: int = 0,
                 shared_bits_middle: int = 0):
        super().__init__(bits=bits, d=d, num_activities=num_activities, num_actions=num_actions,
                         backbone=backbone, visual=visual, visual_module=visual_module,
                         max_frames=max_frames, gcn_hidden=gcn_hidden, keep_attention=keep_attention,
                         tracks=tracks)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.blocks = self._make_blocks(d, heads, depth, dropout=dropout, ffn_mult=ffn_mult,
                                        edge_hidden=edge_hidden, keep_attention=keep_attention)
        if not 0 <= shared_bits < bits or (shared_bits and depth < 2):
            raise ValueError(f"shared_bits must be in [0, bits) and needs depth >= 2, got {shared_bits} "
                             f"(bits {bits}, depth {depth})")
        if not 0 <= shared_bits_middle < bits or (shared_bits_middle and depth < 3):
            raise ValueError(f"shared_bits_middle must be in [0, bits) and needs depth >= 3, got {shared_bits_middle} "
                             f"(bits {bits}, depth {depth})")
        self.pooling, self.shared_bits, self.shared_bits_middle = pooling, shared_bits, shared_bits_middle
        self.shared = [0] + [shared_bits_middle] * (depth - 2) + [shared_bits] if depth > 1 else [0]  # per depth
        widths = [bits - s for s in self.shared]  # a head leaves room for the bits it takes from the shallowest
        self.hash_heads = nn.ModuleList([HashHead(d, w, hash_norm, pooling) for w in widths])
        self.filter = FilterMatrix(bits) if joint_filter and depth > 1 else None  # F of Sec. 5.4, trained jointly
        self.activity_heads = nn.ModuleList([ActivityHead(bits, num_activities) for _ in range(depth)])
        if recon_from not in ("block", "code"):
            raise ValueError(f"recon_from must be 'block' or 'code', got {recon_from!r}")
        self.recon_from = recon_from
        r = int(self.visual.recon_dim)
        self.decoder = nn.Sequential(nn.Linear(bits if recon_from == "code" else d, d), nn.GELU(), nn.Linear(d, r))

    def _make_blocks(self, d: int, heads: int, depth: int, **kw) -> nn.ModuleList:
        return nn.ModuleList([MSFBlock(d, heads, **kw) for _ in range(depth)])

    def _stack(self, f: Tensor, g: Graphs, boxes: Tensor, image_size: Tensor) -> list[Tensor]:
        """Per-depth features ``[f_(2), .., f_(Upsilon+1)]``, each ``(B, N, T, d)``."""
        feats = []
        for blk in self.blocks:
            f = blk(f, g)
            feats.append(f)
        return feats

    def forward(self, boxes: Tensor, mask: Tensor, image_size: Tensor, frames=None, roi=None) -> ModelOutput:
        f, target, g, mask, clean = self._inputs(boxes, mask, image_size, frames, roi)  # f (B, N, T, d)
        feats = self._stack(f, g, clean, image_size)
        left = court_sides(clean, mask, image_size) if self.pooling == "sides" else None  # (B, N)
        h = [head(x, mask, left) for head, x in zip(self.hash_heads, feats)]  # each (B, K); deepest (B, K - s)
        for tau, s in enumerate(self.shared):  # deeper codes carry the shallowest code's first s entries
            if s:
                h[tau] = torch.cat([h[0][:, :s].detach(), h[tau]], -1)  # (B, K)
        action_logits = self.action_head(feats[-1])  # (B, N, A)
        if self.recon_from == "code":  # the shallowest code must carry the clip's appearance
            B, N, T = feats[0].shape[:3]
            recon = self.decoder(h[0])[:, None, None, :].expand(B, N, T, -1)  # (B, N, T, r)
        else:
            recon = self.decoder(feats[0])  # (B, N, T, r)
        recon = zero_padded(recon, mask)
        return ModelOutput(
            h=h, b=[binarize(x).detach() for x in h],
            activity_logits=[head(x) for head, x in zip(self.activity_heads, h)],
            action_logits=action_logits, recon=recon,
            recon_target=None if target is None else zero_padded(target.detach(), mask),
            graphs=(g.g_t, g.g_s), contrast=self.gcn(action_logits, g.g_s, mask), mask=mask,
            attention=self._attention(self.blocks),
            derived=None if self.filter is None else self.filter.chain(h[-1], self.depth),
        )
