"""Track clean-up and court sides: options of the model, off in the paper's setting.

* :func:`clean_tracks` (``model.tracks``): the paper feeds the annotated boxes
  as they are to the positional module (Sec. 4.2) and, with
  ``model.geometry``, to the box-geometry features. Annotated boxes are noisy
  (a few pixels per frame) and the camera pans, so a standing player can look
  as if moving as much as a setter. ``"smooth"`` averages every coordinate
  over a centred window of 3 frames (edges use the frames that exist);
  ``"stable"`` first removes the camera pan (the per-frame median shift of the
  real persons' box centres since frame 0: most persons stand still, so the
  median follows the camera, not the players), then smooths. Boxes for
  RoIAlign stay the annotated ones (the pixels are where they are).
* :func:`court_sides` (``model.pooling: sides``): per person, the weight of
  the left half of the group: ``sigmoid((x_ref - x) / (tau * W))`` with ``x``
  the person's mean box centre over the clip and ``x_ref`` the mean of the
  real persons' ``x`` (the middle of the group: the net when both teams are
  on court; it moves with the camera, so pan does not shift it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TRACKS = ("raw", "smooth", "stable")
SMOOTH_FRAMES = 3  # window of the moving average of "smooth" and "stable"


def _centres(boxes: Tensor) -> Tensor:
    """``boxes (B, T, N, 4)`` -> centres ``(B, T, N, 2)``."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def camera_shift(boxes: Tensor, mask: Tensor) -> Tensor:
    """Per-frame camera pan ``(B, T, 2)``: the median over real persons of their centre's shift since frame 0."""
    B, T, N, _ = boxes.shape
    shift = _centres(boxes) - _centres(boxes[:, :1])  # (B, T, N, 2)
    real = mask.bool()[:, None, :, None].expand(B, T, N, 2)
    med = torch.nanmedian(torch.where(real, shift, torch.full_like(shift, torch.nan)), dim=2).values  # (B, T, 2)
    return torch.nan_to_num(med, nan=0.0)  # clips without a real person: no shift


def smooth_boxes(boxes: Tensor, window: int = 3) -> Tensor:
    """Centred moving average of every coordinate over ``window`` frames: ``(B, T, N, 4)`` -> same."""
    if window <= 1 or boxes.shape[1] < 2:
        return boxes
    B, T, N, _ = boxes.shape
    x = boxes.permute(0, 2, 3, 1).reshape(B * N * 4, 1, T)  # (BN4, 1, T)
    k = torch.ones(1, 1, window, dtype=boxes.dtype, device=boxes.device)
    total = F.conv1d(F.pad(x, (window // 2, (window - 1) // 2)), k)  # zero-padded sums
    ones = torch.ones(1, 1, T, dtype=boxes.dtype, device=boxes.device)
    count = F.conv1d(F.pad(ones, (window // 2, (window - 1) // 2)), k)  # frames inside the window
    return (total / count).view(B, N, 4, T).permute(0, 3, 1, 2)


def clean_tracks(boxes: Tensor, mask: Tensor, mode: str = "raw") -> Tensor:
    """``model.tracks``: ``"raw"`` (the paper), ``"smooth"`` or ``"stable"`` boxes ``(B, T, N, 4)``."""
    if mode not in TRACKS:
        raise ValueError(f"tracks must be one of {', '.join(TRACKS)}, got {mode!r}")
    if mode == "raw":
        return boxes
    m = mask.bool()
    if mode == "stable":
        shift = camera_shift(boxes, m)  # (B, T, 2)
        boxes = boxes - shift.repeat(1, 1, 2)[:, :, None, :]
    boxes = smooth_boxes(boxes, SMOOTH_FRAMES)
    return torch.where(m[:, None, :, None], boxes, torch.zeros_like(boxes))


def court_sides(boxes: Tensor, mask: Tensor, image_size: Tensor, tau: float = 0.01) -> Tensor:
    """Weight of the left half per person ``(B, N)`` in ``[0, 1]`` (0 for padded persons).

    ``boxes (B, T, N, 4)``, ``mask (B, N)``, ``image_size (B, 2)`` or one pair = (H, W).
    """
    m = mask.bool()
    B = boxes.shape[0]
    size = torch.as_tensor(image_size, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2).expand(B, 2)
    W = size[:, 1].clamp_min(1.0)  # (B,)
    x = _centres(boxes)[..., 0].mean(1) / W[:, None]  # (B, N) mean centre over frames, in widths
    mf = m.to(boxes.dtype)
    ref = (x * mf).sum(1, keepdim=True) / mf.sum(1, keepdim=True).clamp_min(1.0)  # (B, 1)
    return torch.sigmoid((ref - x) / tau) * mf
