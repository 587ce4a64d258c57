"""Losses of STVH (Eq. 6-9) and M-STVH (Eq. 13-15).

Normalisation: the paper writes sums over the batch (Eq. 6-8); we use means
(over labelled clips / persons, over the B^2 pairs of Eq. 7, over the B
anchors of Eq. 8) so the weights lambda / mu do not depend on the batch size.

Totals: ``L = L_cls + lambda1 L_q + lambda2 L_CON`` (Eq. 9) and
``L = L_cls + mu1 L_q + mu2 L_H + mu3 L_recon`` (Eq. 15), with
``L_cls = L_acty + 0.5 L_action``. An extension adds ``filter * L_F``
(:func:`filter_consistency`, the MSE of Eq. 17 trained with the model; the
paper fits F after training, which is ``filter = 0``). Every term has a weight in
:class:`LossConfig`; a weight of 0 switches the term off (it is not computed
and is absent from the returned dict): the loss ablation of Table 7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .models.filter import standardise
from .models.heads import binarize
from .models.output import ModelOutput


@dataclass
class LossConfig:
    """Loss weights. Defaults are M-STVH's (Sec. 6.1.2): mu1 = 0.1, mu2 = 0.5, mu3 = 0.01.

    ``layer_weights``: the w_(tau) of Eq. 14, shallow first; ``None`` means
    ``tau / sum(tau)`` (linear in depth, sums to 1; "smaller for shallow layers").
    """

    acty: float = 1.0
    action: float = 0.5
    quant: float = 0.1
    contrast: float = 0.5
    recon: float = 0.01
    layer_weights: tuple[float, ...] | None = None
    filter: float = 0.0  # weight of filter_consistency (needs a model with joint_filter); 0 = the paper
    visual: float = 0.0  # weight of visual_group_loss on the shallowest code (needs group labels); 0 = the paper
    side: float = 0.0  # weight of side_loss on the deepest head (needs sides); 0 = the paper
    sides: tuple[int, ...] | None = None  # court side of each activity: 0 left, 1 right, -1 none

    @classmethod
    def stvh(cls, **kw) -> "LossConfig":
        """Eq. 9 defaults: lambda1 = 0.1, lambda2 = 0.5, no reconstruction."""
        return cls(**{"recon": 0.0, **kw})

    @classmethod
    def mstvh(cls, **kw) -> "LossConfig":
        """Eq. 15 defaults: mu1 = 0.1, mu2 = 0.5, mu3 = 0.01."""
        return cls(**kw)


def _zero(like: Tensor) -> Tensor:
    return like.sum() * 0.0  # keeps the graph (and device) when nothing is labelled


def activity_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Eq. 6 L_acty: cross-entropy ``logits (B, C)`` vs ``target (B,)``; ``-1`` ignored; mean."""
    if not bool((target >= 0).any()):
        return _zero(logits)
    return F.cross_entropy(logits, target, ignore_index=-1)


def action_loss(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Eq. 6 L_action: CE over real persons with a label: ``logits (B, N, A)``, ``target (B, N)``, ``mask (B, N)``."""
    keep = mask.bool() & (target >= 0)  # (B, N)
    if not bool(keep.any()):
        return _zero(logits)
    return F.cross_entropy(logits[keep], target[keep])


def quantization_loss(h: Tensor, b: Tensor | None = None) -> Tensor:
    """Eq. 7: mean over all pairs (i, j) of ``exp(|h_i.h_j - b_i.b_j| / K)``; ``h, b (B, K)``.

    ``b`` defaults to ``sign(h)`` (sign(0) = +1), detached. The minimum is 1
    (``exp(0)``), reached when every ``|h_k| = 1``.
    """
    b = binarize(h).detach() if b is None else b.detach().to(h.dtype)
    K = h.shape[-1]
    gap = (h @ h.T - b @ b.T).abs() / K  # (B, B)
    return torch.exp(gap).mean()


def cosine_sim_exp(a: Tensor, b: Tensor) -> Tensor:
    """``S[i, j] = sim(a_i, b_j) = exp(cos(a_i, b_j))`` of Eq. 8: ``(B, K), (B, K) -> (B, B)``."""
    return torch.exp(F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T)


def contrastive_loss(a: Tensor, h: Tensor) -> Tensor:
    """Eq. 8: mean over i of ``log(sum_j [sim(a_i, b_j) + sim(a_j, b_i)] / sim(a_i, b_i))``.

    ``a (B, K)`` is the GCN encoding, ``h (B, K)`` stands for ``b``: the real
    code is used (sign has no gradient, and L_CON must train the model).
    """
    S = cosine_sim_exp(a, h)  # (B, B), S[i, j] = sim(a_i, h_j)
    num = S.sum(1) + S.sum(0)  # sum_j sim(a_i, h_j) + sim(a_j, h_i)
    return torch.log(num / S.diagonal()).mean()


def recon_loss(recon: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Eq. 13: ``(1/d) ||f_roi - f~_roi||^2`` per real person and frame, averaged.

    ``recon, target (B, N, T, r)``, ``mask (B, N)``; the target is detached.
    """
    err = ((recon - target.detach()) ** 2).mean(-1)  # (B, N, T)  the 1/d sum
    m = mask.bool()[:, :, None].expand_as(err)
    if not bool(m.any()):
        return _zero(recon)
    return err[m].mean()


def filter_consistency(derived: list[Tensor], h: list[Tensor]) -> Tensor:
    """Eq. 16-17 trained with the model: mean over depths ``tau < Upsilon`` of the MSE between the
    standardised derived code ``(b'_(tau) - mu) / sigma`` and the stored binary code ``sign(h_(tau))``.

    ``derived``: the real chain of Eq. 16 from the deepest *real* code (``Upsilon - 1`` tensors
    ``(B, K)``, shallow first); ``h``: real codes of every depth. The targets are detached: the
    shallower codes stay what their own losses make them, while F and the deepest code learn to
    reproduce them.
    """
    return torch.stack([((standardise(x) - binarize(t).detach()) ** 2).mean()
                        for x, t in zip(derived, h[:-1])]).mean()


def side_loss(logits: Tensor, target: Tensor, sides: Tensor) -> Tensor:
    """Court-side cross-entropy (an extension, ``loss.side``): the activity head's probabilities summed
    over each side's activities (``l_*`` vs ``r_*``), renormalised over the two sides, against the side
    of the true activity. ``logits (B, C)``, ``target (B,)`` (-1 = none), ``sides (C,)`` in {0, 1, -1}.

    Eq. 6's L_acty counts ``l_spike`` for ``r_spike`` as one wrong class among seven; most test errors
    of small data are exactly that swap, and this term weighs the side on its own. Clips whose activity
    has no side (or no label) are left out; 0 when none is left.
    """
    sides = sides.to(logits.device)
    known = target >= 0
    side_t = torch.where(known, sides[target.clamp_min(0)], torch.full_like(target, -1))  # (B,)
    keep = side_t >= 0
    if not bool(keep.any()) or not bool((sides == 0).any()) or not bool((sides == 1).any()):
        return _zero(logits)
    two = torch.stack([torch.logsumexp(logits[:, sides == 0], -1), torch.logsumexp(logits[:, sides == 1], -1)], -1)
    return F.cross_entropy(two[keep], side_t[keep])  # log-softmax over the two side sums


VISUAL_TAU = 0.2  # temperature of visual_group_loss (cosine similarities in [-1, 1])


def visual_group_loss(h: Tensor, group: Tensor, tau: float = VISUAL_TAU) -> Tensor:
    """Same-video contrast (an extension, ``loss.visual``; the paper has no such term): supervised
    contrastive loss on the shallowest code with the clip's visual group (match / video id) as label.

    ``h (B, K)``, ``group (B,)`` int64. For each anchor with another clip of its group in the batch:
    ``-mean_p log(exp(c_ip / tau) / sum_{a != i} exp(c_ia / tau))`` over its positives p, ``c`` the cosine
    similarity; averaged over those anchors (0 when no anchor has one). The paper's shallow code gets its
    visual focus from L_recon alone (Eq. 13), which carries a clip's whole appearance (poses, positions,
    players) rather than what makes two clips the same match.
    """
    B = h.shape[0]
    same = (group[:, None] == group[None, :]) & ~torch.eye(B, dtype=torch.bool, device=h.device)  # (B, B)
    anchors = same.any(1)
    if not bool(anchors.any()):
        return _zero(h)
    z = F.normalize(h, dim=-1)
    logits = (z @ z.T / tau).masked_fill(torch.eye(B, dtype=torch.bool, device=h.device), float("-inf"))
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, B), -inf on the diagonal
    pos = same.to(h.dtype)
    per_anchor = -(log_p.masked_fill(~same, 0.0) * pos).sum(1) / pos.sum(1).clamp_min(1.0)  # (B,)
    return per_anchor[anchors].mean()


def layer_weights(depth: int, weights: tuple[float, ...] | None = None) -> list[float]:
    """w_(tau) of Eq. 14, shallow first: given ones, or ``tau / sum(tau)``."""
    if weights is None:
        total = depth * (depth + 1) / 2
        return [(t + 1) / total for t in range(depth)]
    if len(weights) != depth:
        raise ValueError(f"{len(weights)} layer weights for {depth} depths")
    return list(weights)


def layered_activity_loss(logits: list[Tensor], target: Tensor, weights: tuple[float, ...] | None = None) -> Tensor:
    """Eq. 14: ``sum_tau w_(tau) CE(logits_(tau), target)``; depth 1 gives Eq. 6's L_acty."""
    w = layer_weights(len(logits), weights)
    return sum(wt * activity_loss(lg, target) for wt, lg in zip(w, logits))


def total_loss(out: ModelOutput, activity: Tensor, actions: Tensor, config: LossConfig,
               group: Tensor | None = None) -> dict[str, Tensor]:
    """All terms of Eq. 9 / Eq. 15 for a model output; returns named terms and ``"total"``.

    ``activity (B,)`` and ``actions (B, N)`` are label ids (``-1`` = unknown).
    L_q is averaged over the codes of all depths (each is retrieved);
    L_CON uses the deepest code (the activity-focused one, matched by ``a``).
    """
    mask = out.mask if out.mask is not None else torch.ones(actions.shape, dtype=torch.bool, device=actions.device)
    terms: dict[str, Tensor] = {}
    cls = None
    if config.acty:
        terms["acty"] = layered_activity_loss(out.activity_logits, activity, config.layer_weights)
        cls = config.acty * terms["acty"]
    if config.action:
        terms["action"] = action_loss(out.action_logits, actions, mask)
        cls = config.action * terms["action"] if cls is None else cls + config.action * terms["action"]
    total = cls if cls is not None else _zero(out.h[-1])
    if cls is not None:
        terms["cls"] = cls
    if config.quant:
        terms["quant"] = torch.stack([quantization_loss(h) for h in out.h]).mean()
        total = total + config.quant * terms["quant"]
    if config.contrast and out.contrast is not None:
        terms["contrast"] = contrastive_loss(out.contrast, out.h[-1])
        total = total + config.contrast * terms["contrast"]
    if config.recon and out.recon is not None and out.recon_target is not None:
        terms["recon"] = recon_loss(out.recon, out.recon_target, mask)
        total = total + config.recon * terms["recon"]
    if config.filter and out.derived:
        terms["filter"] = filter_consistency(out.derived, out.h)
        total = total + config.filter * terms["filter"]
    if config.side and config.sides is not None:
        terms["side"] = side_loss(out.activity_logits[-1], activity, torch.tensor(config.sides))
        total = total + config.side * terms["side"]
    if config.visual and group is not None:
        terms["visual"] = visual_group_loss(out.h[0], group)
        total = total + config.visual * terms["visual"]
    terms["total"] = total
    return terms


def stvh_loss(out: ModelOutput, activity: Tensor, actions: Tensor,
              config: LossConfig | None = None) -> dict[str, Tensor]:
    """Eq. 9: ``L_cls + lambda1 L_q + lambda2 L_CON`` (defaults ``LossConfig.stvh()``)."""
    return total_loss(out, activity, actions, config or LossConfig.stvh())


def mstvh_loss(out: ModelOutput, activity: Tensor, actions: Tensor,
               config: LossConfig | None = None) -> dict[str, Tensor]:
    """Eq. 15: ``L_cls + mu1 L_q + mu2 L_H + mu3 L_recon`` (defaults ``LossConfig.mstvh()``)."""
    return total_loss(out, activity, actions, config or LossConfig.mstvh())
