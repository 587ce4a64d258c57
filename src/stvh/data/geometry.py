"""Small box helpers shared by the readers (numpy only). Boxes are x1, y1, x2, y2."""

from __future__ import annotations

import numpy as np


def clip_box_to_image(box, image_size: tuple[int, int]):
    """Clip a box to the image ``(H, W)``; ``None`` when nothing of it is inside."""
    H, W = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(W)), min(y2, float(H))
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    return np.array([cx1, cy1, cx2, cy2], np.float32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of ``a (n, 4)`` and ``b (m, 4)`` → ``(n, m)``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
