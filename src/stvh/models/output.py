"""The record every model in :mod:`stvh.models` returns from ``forward``.

STVH (Sec. 4) has one hash depth, so its lists have length 1; M-STVH
(Sec. 5, Eq. 12) and its ablations (Sec. 6.5.1) have one entry per MSF depth
``tau = 1..Upsilon``, ordered shallow (visual-focused) to deep (activity-focused).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ModelOutput:
    """Outputs of one forward pass.

    Fields
    ------
    h: per depth ``(B, K)`` real codes in ``[-1, 1]`` (tanh relaxation of Eq. 5 / 12).
    b: per depth ``(B, K)`` binary codes in ``{-1, +1}``, ``b = sign(h)`` with sign(0)=+1.
    activity_logits: per depth ``(B, C)``, ``F_c(h)`` (Eq. 5) / per-depth heads (Eq. 14).
    action_logits: ``(B, N, A)`` per-person action logits (``F_a``, Sec. 4.4); rows of
        padded persons are meaningless and must be masked by the caller.
    recon: ``(B, N, T, r)`` reconstructed ``f_roi`` for L_recon (Eq. 13), or ``None``.
    recon_target: ``(B, N, T, r)`` the (detached) target of L_recon, or ``None``.
    graphs: ``(G_T, G_S)`` with ``G_T (B, N, T, T)`` and ``G_S (B, T, N, N)`` (Sec. 4.2).
    contrast: ``(B, K)`` the GCN encoding ``a_i`` of Eq. 8, or ``None``.
    mask: ``(B, N)`` bool, the person mask the model ran with.
    attention: last attention maps per block when ``keep_attention`` is set, else ``None``.
    derived: with a jointly trained filter matrix (M-STVH, ``joint_filter``), the real codes
        ``b'_(tau)`` of Eq. 16 derived from the deepest real code, depths ``1..Upsilon-1``
        (shallow first), each ``(B, K)``; else ``None``.
    """

    h: list[Tensor]
    b: list[Tensor]
    activity_logits: list[Tensor]
    action_logits: Tensor
    recon: Tensor | None = None
    recon_target: Tensor | None = None
    graphs: tuple[Tensor, Tensor] | None = None
    contrast: Tensor | None = None
    mask: Tensor | None = None
    attention: dict | None = None
    derived: list[Tensor] | None = None

    @property
    def depth(self) -> int:
        return len(self.h)
