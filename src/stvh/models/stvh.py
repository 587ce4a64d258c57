"""STVH (Sec. 4, Fig. 2): visual module -> positional module -> stacked PVF -> heads.

Spatiotemporal interleaving (Sec. 4.3): each of the ``depth`` layers is a
temporal PVF block (object interleaving: SGAT over each person's frames with
G_T) followed by a spatial PVF block (group interleaving: SGAT over each
frame's persons with G_S). Objects are modelled before the group (Sec. 4.3:
"First ... object actions ... Second ... group activities"). ``f_T`` is the
output of the last temporal block, ``f_S`` the output of the last spatial
block. Actions come from time-pooled ``f_T`` (``F_a``), the code from ``f_S``
(``F_h`` + AVG + LayerNorm + tanh, Eq. 5), the activity from ``h`` (``F_c``, Eq. 5).
``depth`` counts (temporal, spatial) pairs, so STVH and M-STVH with the same
``depth`` have the same number of attention layers (Sec. 6.3).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .attention import SGAT
from .blocks import PVFBlock, zero_padded
from .gcn import ContrastiveGCN
from .graphs import PositionalModule
from .heads import ActionHead, ActivityHead, HashHead, binarize
from .output import ModelOutput
from .tracks import TRACKS, clean_tracks, court_sides


def make_visual(d: int, backbone: str, visual: dict | None, visual_module: nn.Module | None) -> nn.Module:
    """The visual module (Sec. 4.1): ``visual_module`` if given, else ``VisualModule(backbone, d, **visual)``."""
    if visual_module is not None:
        return visual_module
    from .visual import VisualModule  # lazy: the models import without it

    return VisualModule(backbone=backbone, d=d, **(visual or {}))


class HashingModel(nn.Module):
    """What STVH, M-STVH and the ablations share: visual + positional modules,
    the action head, the contrastive GCN and ``encode`` / ``classify``."""

    def __init__(self, *, bits: int, d: int, num_activities: int, num_actions: int, backbone: str,
                 visual: dict | None, visual_module: nn.Module | None, max_frames: int, gcn_hidden: int,
                 keep_attention: bool, tracks: str = "raw"):
        super().__init__()
        if tracks not in TRACKS:
            raise ValueError(f"tracks must be one of {', '.join(TRACKS)}, got {tracks!r}")
        self.tracks = tracks
        self.bits, self.d = bits, d
        self.num_activities, self.num_actions = num_activities, num_actions
        self.keep_attention = keep_attention
        self.visual = make_visual(d, backbone, visual, visual_module)
        self.positional = PositionalModule(max_frames)
        with warnings.catch_warnings():  # num_actions = 0 (data without action labels): empty layers, said once
            warnings.filterwarnings("ignore", "Initializing zero-element tensors", UserWarning)
            self.action_head = ActionHead(d, num_actions)  # (B, N, 0) logits when num_actions = 0
            self.gcn = ContrastiveGCN(num_actions, bits, gcn_hidden)  # L_CON is off then (train/loop.py)
        self.activity_heads: nn.ModuleList  # one ActivityHead per depth, set by subclasses

    def _inputs(self, boxes: Tensor, mask: Tensor, image_size: Tensor, frames, roi):
        """Run the visual and positional modules: ``f (B, N, T, d)``, target, graphs, mask and the
        cleaned boxes ``(B, T, N, 4)`` (``model.tracks``) that the graphs and geometry features use."""
        mask = mask.bool()
        clean = clean_tracks(boxes, mask, self.tracks)  # (B, T, N, 4); the annotated boxes when "raw"
        extra = {} if self.tracks == "raw" else {"geo_boxes": clean}  # injected modules need not know it
        f_v, target = self.visual(boxes, mask, image_size, frames=frames, roi=roi, **extra)  # (B,N,T,d), (B,N,T,r)
        return zero_padded(f_v, mask), target, self.positional(clean, mask), mask, clean

    def set_keep_attention(self, flag: bool = True) -> None:
        """Store (or stop storing) the attention maps of every block, e.g. for Fig. 11."""
        self.keep_attention = flag
        for module in self.modules():
            if isinstance(module, SGAT):
                module.keep_attention = flag
                module.last_attention = None

    def _attention(self, blocks) -> dict | None:
        if not self.keep_attention:
            return None
        return {f"layer{i + 1}": blk.attention_maps() for i, blk in enumerate(blocks)}

    @torch.no_grad()
    def encode(self, boxes: Tensor, mask: Tensor, image_size: Tensor, frames=None, roi=None) -> list[Tensor]:
        """Binary codes ``(B, K)`` in ``{-1, +1}`` per depth, shallow to deep (eval mode, no grad)."""
        was_training = self.training
        self.eval()
        try:
            return self(boxes, mask, image_size, frames=frames, roi=roi).b
        finally:
            self.train(was_training)

    def classify(self, codes: list[Tensor]) -> list[Tensor]:
        """Activity logits ``(B, C)`` per depth from codes (binary or real), via ``F_c``."""
        return [head(c) for head, c in zip(self.activity_heads, codes)]


class STVH(HashingModel):
    """STVH: ``forward(boxes (B,T,N,4), mask (B,N), image_size (B,2), frames=None, roi=None)``."""

    def __init__(self, bits: int = 128, depth: int = 3, d: int = 1024, num_activities: int = 8,
                 num_actions: int = 9, heads: int = 8, dropout: float = 0.1, backbone: str = "none",
                 visual: dict | None = None, visual_module: nn.Module | None = None, ffn_mult: int = 4,
                 edge_hidden: int = 16, gcn_hidden: int = 64, max_frames: int = 64,
                 keep_attention: bool = False, hash_norm: str = "layer", tracks: str = "raw", pooling: str = "paper"):
        super().__init__(bits=bits, d=d, num_activities=num_activities, num_actions=num_actions,
                         backbone=backbone, visual=visual, visual_module=visual_module,
                         max_frames=max_frames, gcn_hidden=gcn_hidden, keep_attention=keep_attention,
                         tracks=tracks)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        kw = dict(dropout=dropout, ffn_mult=ffn_mult, edge_hidden=edge_hidden, keep_attention=keep_attention)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(PVFBlock(d, heads, "temporal", **kw))
            self.blocks.append(PVFBlock(d, heads, "spatial", **kw))
        self.pooling = pooling
        self.hash_head = HashHead(d, bits, hash_norm, pooling)
        self.activity_heads = nn.ModuleList([ActivityHead(bits, num_activities)])

    def forward(self, boxes: Tensor, mask: Tensor, image_size: Tensor, frames=None, roi=None) -> ModelOutput:
        f, _, g, mask, clean = self._inputs(boxes, mask, image_size, frames, roi)  # f (B, N, T, d)
        f_t = f
        for i in range(0, len(self.blocks), 2):
            f_t = self.blocks[i](f, g)  # object interleaving  (B, N, T, d)
            f = self.blocks[i + 1](f_t, g)  # group interleaving  (B, N, T, d)
        f_s = f
        action_logits = self.action_head(f_t)  # (B, N, A)
        left = court_sides(clean, mask, image_size) if self.pooling == "sides" else None  # (B, N)
        h = self.hash_head(f_s, mask, left)  # (B, K)
        return ModelOutput(
            h=[h], b=[binarize(h).detach()], activity_logits=[self.activity_heads[0](h)],
            action_logits=action_logits, graphs=(g.g_t, g.g_s),
            contrast=self.gcn(action_logits, g.g_s, mask), mask=mask,
            attention=self._attention(self.blocks),
        )
