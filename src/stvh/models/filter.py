"""Filter matrix of Sec. 5.4 (Eq. 16-18): store only the deepest code and F.

Codes are stored as rows ``(M, K)``; the paper's column form ``F . b`` is
``b @ F.T`` here.

* Eq. 16: ``b'_(Upsilon-1) = F b_(Upsilon)`` and ``b'_(tau-1) = F b'_(tau)``;
  the chain carries the real-valued ``b'`` (as Eq. 16 writes it), only the
  output of each step is binarised.
* Eq. 17: ``b~_(tau) = sign((b'_(tau) - mu) / sigma)``; ``mu`` and ``sigma`` are
  the mean and (population) standard deviation of each code vector over its K
  entries (per code, so a code's bits do not depend on the other codes in the
  database); ``sign(0) = +1``.
* Training F: the paper asks for an MSE making the normalised codes close to
  the stored ones; ``sign`` has no gradient, so the loss compares the
  standardised real codes ``(b' - mu) / sigma`` (unit scale, like +-1 codes)
  with the stored ``b_(tau)``, averaged over depths ``tau < Upsilon``.
  ``fit_filter`` fits F after the hashing model is trained, from the codes it
  produced (the model itself is not changed by F).
* Eq. 18: storage ``M * Upsilon * K`` bits for all codes versus
  ``M * K + K^2`` for the deepest codes plus F; F's K^2 entries are counted as
  bits, as in the paper (a float32 F really takes 32 K^2 bits).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .heads import binarize


def standardise(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mu) / sigma`` per row over the last axis (population std, clamped by ``eps``)."""
    mu = x.mean(-1, keepdim=True)
    sigma = x.std(-1, unbiased=False, keepdim=True).clamp_min(eps)
    return (x - mu) / sigma


def normalise_sign(x: Tensor) -> Tensor:
    """Eq. 17: ``sign((x - mu) / sigma)`` per code vector, ``sign(0) = +1``: ``(M, K) -> {-1, +1}``."""
    return binarize(standardise(x))


class FilterMatrix(nn.Module):
    """Learnable ``F (K x K)`` (Sec. 5.4), initialised to the identity."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.weight = nn.Parameter(torch.eye(bits))  # (K, K)

    def chain(self, b_deepest: Tensor, depth: int) -> list[Tensor]:
        """Eq. 16: real ``b'_(tau)`` for ``tau = 1..Upsilon-1`` (shallow first), each ``(M, K)``."""
        out, x = [], b_deepest.to(self.weight.dtype)
        for _ in range(depth - 1):
            x = x @ self.weight.T  # F . b'   (M, K)
            out.append(x)
        return out[::-1]

    @torch.no_grad()
    def derive(self, b_deepest: Tensor, depth: int, include_deepest: bool = False) -> list[Tensor]:
        """Eq. 16-17: binary codes of depths ``1..Upsilon-1`` (shallow first) from ``b_(Upsilon) (M, K)``.

        With ``include_deepest`` the stored ``b_(Upsilon)`` is appended (a list of ``depth`` codes).
        """
        codes = [normalise_sign(x) for x in self.chain(b_deepest, depth)]
        return codes + [b_deepest.to(self.weight.dtype)] if include_deepest else codes


def filter_loss(fm: FilterMatrix, codes_per_depth: list[Tensor]) -> Tensor:
    """MSE between standardised filtered codes and stored codes, mean over depths ``tau < Upsilon``.

    ``codes_per_depth``: stored codes ``(M, K)`` in ``{-1, +1}``, shallow first.
    """
    depth = len(codes_per_depth)
    if depth < 2:
        return fm.weight.sum() * 0.0
    derived = fm.chain(codes_per_depth[-1], depth)
    losses = [((standardise(x) - c.to(x.dtype)) ** 2).mean() for x, c in zip(derived, codes_per_depth[:-1])]
    return torch.stack(losses).mean()


def fit_filter(codes_per_depth: list[Tensor], steps: int = 500, lr: float = 1e-2,
               fm: FilterMatrix | None = None) -> FilterMatrix:
    """Fit F by Adam on :func:`filter_loss` from stored codes (shallow first); returns F.

    ``fm.history`` holds the loss of every step.
    """
    codes = [c.detach().float() for c in codes_per_depth]
    fm = fm or FilterMatrix(codes[0].shape[-1]).to(codes[0].device)
    opt = torch.optim.Adam(fm.parameters(), lr=lr)
    fm.history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = filter_loss(fm, codes)
        loss.backward()
        opt.step()
        fm.history.append(loss.detach().item())
    return fm


def bit_agreement(derived: list[Tensor], stored: list[Tensor]) -> list[float]:
    """Fraction of equal bits between derived and stored codes, per depth."""
    return [float((a == b.to(a.dtype)).float().mean()) for a, b in zip(derived, stored)]


def storage_bits(M: int, K: int, depth: int, mode: str = "all") -> int:
    """Eq. 18 storage: ``"all"`` = ``M * Upsilon * K``; ``"compact"`` = ``M * K + K^2``."""
    if mode == "all":
        return M * depth * K
    if mode == "compact":
        return M * K + K * K
    raise ValueError(f"mode must be 'all' or 'compact', got {mode!r}")


def compression_ratio(M: int, K: int, depth: int) -> float:
    """Eq. 18: ``CR = (M K + K^2) / (M Upsilon K) = 1/Upsilon + K / (M Upsilon)``."""
    return storage_bits(M, K, depth, "compact") / storage_bits(M, K, depth, "all")
