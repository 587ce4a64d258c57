"""RoIAlign as weights over map cells, the PCA fit from map moments and the projection of the maps before
RoIAlign (``stvh extract --pca``) compute what RoIAlign, ``fit_pca`` and ``project`` compute."""

from __future__ import annotations

import numpy as np
import torch

from stvh.models.visual import roi_features, roi_weights
from stvh.train.pca import Moments, fit_pca, fit_rows, project


def _case(seed=0, B=3, T=4, N=6, C=40, Hf=3, Wf=4):
    g = torch.Generator().manual_seed(seed)
    fmap = torch.rand(B * T, C, Hf, Wf, generator=g) ** 3 + torch.rand(1, C, 1, 1, generator=g)  # mean far from 0
    xy = torch.rand(B, T, N, 2, generator=g) * torch.tensor([200.0, 112.0])
    boxes = torch.cat([xy - 10, xy + torch.rand(B, T, N, 2, generator=g) * 60], -1)  # some cross the border
    boxes[0, 1, 2] = 0  # a real person without a box in one frame: RoIAlign gives zeros there
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 4:] = False
    return fmap, boxes, mask, torch.tensor([[112.0, 200.0]]).expand(B, 2)


def test_roi_weights_reproduce_roi_align():
    fmap, boxes, mask, size = _case()
    B, T = boxes.shape[:2]
    w = roi_weights(boxes, size, fmap.shape[-2:], 5)  # (B, T, N, 5, 5, P)
    out = torch.einsum("btnijp,btcp->bntcij", w, fmap.view(B, T, fmap.shape[1], -1))
    assert torch.allclose(out, roi_features(fmap, boxes, size, 5), atol=1e-6)
    sums = w.sum(-1)
    assert torch.allclose(sums[0, 1, 2], torch.zeros(5, 5)) and torch.allclose(sums[1, 2, 3], torch.ones(5, 5))


def test_fit_from_map_moments_equals_fit_on_rows():
    fmap, boxes, mask, size = _case()
    B, T, N = boxes.shape[:3]
    roi = roi_features(fmap, boxes, size, 5).numpy()
    m0, c0, r0 = fit_pca(np.concatenate([fit_rows(roi[b], mask[b].numpy()) for b in range(B)]), 5)
    w = roi_weights(boxes, size, fmap.shape[-2:], 5)
    moments = Moments()
    for b in range(B):  # 6 persons x 9 cells = 54 rows > 12 cells: the QR path; 4 x 9 = 36 > 12 as well
        wb = w[b][:, mask[b]][:, :, ::2, ::2]
        moments.add(fmap.view(B, T, fmap.shape[1], -1)[b], wb.reshape(T, -1, wb.shape[-1]))
    m1, c1, r1 = moments.fit(5)
    assert moments.n == (6 + 4 + 6) * T * 9
    assert np.allclose(m0, m1, atol=1e-6) and np.allclose(r0, r1, atol=1e-6)
    assert np.allclose(np.abs(c0 @ c1.T), np.eye(5), atol=1e-4)  # the same components (signs fixed alike)
    assert np.allclose(c0, c1, atol=1e-4)


def test_maps_projected_before_roi_align_equal_projected_rois():
    from stvh.train.extract import RoIExtractor

    fmap, boxes, mask, size = _case()
    ex = RoIExtractor.__new__(RoIExtractor)  # rois() needs only the module's roi size
    ex.module = torch.nn.Module()
    ex.module.roi_size = 5
    rng = np.random.default_rng(0)
    mean, comps = rng.random(40).astype(np.float32), rng.standard_normal((3, 40)).astype(np.float32)
    raw = ex.rois(fmap, boxes, size)  # (B, N, T, C, 5, 5)
    got = ex.rois(fmap, boxes, size, (mean, comps, None))  # (B, N, T, 3, 5, 5)
    for b in range(raw.shape[0]):
        want = project(raw[b], mean, comps)  # comps @ (roi - mean), also where the box is missing
        assert np.allclose(got[b], want, atol=1e-4)
