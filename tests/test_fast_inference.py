"""The inference paths (no autograd: ``predict``, ``stvh encode``) compute what the reference layers
compute: ``RoIEmbedding.infer``, ``SGAT.infer`` / ``EdgeLogits.infer``, the blocks in chunks of
clips, and ``ClipTensors.batch`` keeping the cache's dtype. The reference (grad-enabled) path is the
one the hand-computed tests of test_models_*.py check."""

from __future__ import annotations

import pytest
import torch

from stvh.models import blocks as blocks_mod
from stvh.models import build
from stvh.models.attention import EdgeLogits, GroupMFAT, ObjectMFAT
from stvh.models.blocks import MSFBlock, PVFBlock
from stvh.models.graphs import PositionalModule
from stvh.models.visual import RoIEmbedding
from stvh.train.tensors import ClipTensors


def _close(a, b, tol=1e-5):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max().item()


def _roi(B=3, N=4, T=3, C=6, s=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    roi = torch.randn(B, N, T, C, s, s, generator=g) + torch.linspace(0, 1, s)  # not symmetric in x
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 3] = mask[2, 1] = False
    return roi, mask


@pytest.mark.parametrize("s, rows", [(5, 1024), (5, 12), (5, 1), (2, 7)])
def test_roi_embedding_infer_equals_reference(s, rows):
    torch.manual_seed(1)
    emb = RoIEmbedding(6, d_v=8, d=10, roi_size=s)
    roi, mask = _roi(s=s)
    reduced = emb.reduce_roi(roi)
    ref = emb.embed_reduced(reduced, mask).detach()  # (B, N, T, d)
    ref_pooled = (reduced.mean(dim=(-2, -1)) * mask[:, :, None, None]).detach()  # (B, N, T, d_v)
    f_v, pooled = emb.infer(roi.half(), mask, rows=rows)  # a float16 cache is converted on the way
    ref16 = emb.embed_reduced(emb.reduce_roi(roi.half().float()), mask).detach()
    _close(f_v, ref16)
    f_v, pooled = emb.infer(roi, mask, rows=rows)
    _close(f_v, ref)
    _close(pooled, ref_pooled)
    assert (f_v[0, 3] == 0).all() and (pooled[2, 1] == 0).all() and f_v[0, 2].abs().sum() > 0


@pytest.mark.parametrize("s", [5, 2])
def test_roi_embedding_train_forward_equals_reference_with_gradients(s):
    torch.manual_seed(1)
    emb = RoIEmbedding(6, d_v=8, d=10, roi_size=s)
    roi, mask = _roi(s=s)
    probe = torch.randn(3, 4, 3, 10, generator=torch.Generator().manual_seed(2))  # an asymmetric loss
    reduced = emb.reduce_roi(roi)
    ref = emb.embed_reduced(reduced, mask)
    (ref * probe).sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in emb.named_parameters()}
    emb.zero_grad(set_to_none=True)
    f_v, pooled = emb.train_forward(roi.half(), mask)  # the cache's float16, converted
    ref16 = emb.embed_reduced(emb.reduce_roi(roi.half().float()), mask).detach()
    _close(f_v.detach(), ref16)
    f_v, pooled = emb.train_forward(roi, mask)
    _close(f_v.detach(), ref.detach())
    _close(pooled, (reduced.mean(dim=(-2, -1)) * mask[:, :, None, None]).detach())
    assert not pooled.requires_grad
    (f_v * probe).sum().backward()
    for k, p in emb.named_parameters():
        _close(p.grad, ref_grads[k], tol=1e-4)


def _graphs(B=5, T=4, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, T, N, 2, generator=g) * torch.tensor([300.0, 200.0])
    boxes = torch.cat([xy, xy + 20 + torch.rand(B, T, N, 2, generator=g) * 40], -1)  # (B, T, N, 4)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = False
    return PositionalModule(max_frames=8)(boxes, mask), mask


def test_edge_logits_infer_equals_forward():
    torch.manual_seed(0)
    edge = EdgeLogits(heads=3, hidden=5)
    graph = torch.randn(2, 4, 6, 6) * 2  # tanh far from linear
    _close(edge.infer(graph).movedim(-1, -3), edge(graph).detach(), 1e-6)


@pytest.mark.parametrize("cls", [ObjectMFAT, GroupMFAT])
@pytest.mark.parametrize("with_graph", [True, False])
def test_sgat_infer_equals_reference(cls, with_graph):
    torch.manual_seed(2)
    g, mask = _graphs()
    att = cls(12, heads=3, edge_hidden=4 if with_graph else None).eval()
    f = torch.randn(5, 3, 4, 12)  # (B, N, T, d)
    graph, sup = (g.g_t, g.sup_t) if cls is ObjectMFAT else (g.g_s, g.sup_s)
    ref = att(f, graph, sup).detach()  # grad enabled: the reference layers
    with torch.no_grad():
        out = att(f, graph, sup)
    _close(out, ref)
    if cls is GroupMFAT:  # a padded person receives nothing in the spatial attention
        assert (out[1, 2] == 0).all() and (out[3, 0] == 0).all()


@pytest.mark.parametrize("kind", ["msf", "pvf_temporal", "pvf_spatial"])
def test_blocks_in_chunks_equal_reference(kind, monkeypatch):
    torch.manual_seed(3)
    g, mask = _graphs()
    blk = (MSFBlock(12, 3) if kind == "msf" else PVFBlock(12, 3, kind.split("_")[1])).eval()
    f = torch.randn(5, 3, 4, 12) * mask[:, :, None, None]
    ref = blk(f, g).detach()
    monkeypatch.setattr(blocks_mod, "CHUNK_ROWS", 24)  # 2 clips of 3 x 4 person-frames a chunk: 3 chunks
    calls = []
    inner = blk._forward
    monkeypatch.setattr(blk, "_forward", lambda f, g: calls.append(f.shape[0]) or inner(f, g))
    with torch.no_grad():
        out = blk(f, g)
    assert calls == [2, 2, 1]
    _close(out, ref)


def test_model_inference_equals_reference_and_codes_equal():
    torch.manual_seed(4)
    model = build("mstvh", bits=16, depth=3, d=16, heads=2, num_activities=4, num_actions=5, gcn_hidden=8,
                  edge_hidden=4, ffn_mult=2, backbone="efficientnet_lite0",
                  visual={"in_channels": 6, "d_v": 8, "geometry": True}, pooling="sides", shared_bits=4).eval()
    g, mask = _graphs()
    boxes = torch.rand(5, 4, 3, 2) * 200
    boxes = torch.cat([boxes, boxes + 30], -1) * mask[:, None, :, None]
    roi = torch.randn(5, 3, 4, 6, 5, 5).half() * mask[:, :, None, None, None, None]
    size = torch.tensor([[240.0, 320.0]]).expand(5, 2)
    ref = model(boxes, mask, size, roi=roi.float())
    with torch.no_grad():
        out = model(boxes, mask, size, roi=roi)
    for a, b in zip(ref.h, out.h):
        _close(b, a.detach())
    for a, b in zip(ref.b, out.b):
        assert torch.equal(a, b)
    _close(out.recon_target, ref.recon_target.detach())
    _close(out.action_logits, ref.action_logits.detach())


def test_batch_keeps_cache_dtype_and_views_runs():
    M, N, T = 6, 2, 3
    roi = torch.arange(M * N * T * 2 * 2 * 2, dtype=torch.float32).view(M, N, T, 2, 2, 2).half()
    data = ClipTensors(ids=[str(i) for i in range(M)], groups=["g"] * M, splits=["train"] * M,
                       boxes=torch.zeros(M, T, N, 4), mask=torch.ones(M, N, dtype=torch.bool),
                       image_size=torch.ones(M, 2), activity=torch.zeros(M, dtype=torch.long),
                       actions=torch.zeros(M, N, dtype=torch.long), roi=roi)
    run = data.batch(torch.arange(2, 5))["roi"]
    assert run.dtype == torch.float16 and torch.equal(run, roi[2:5])
    assert run.data_ptr() == roi[2].data_ptr()  # a view: no copy for predict's runs of clips
    picked = data.batch(torch.tensor([4, 1, 1]))["roi"]
    assert torch.equal(picked, roi[[4, 1, 1]])
    assert data.batch(torch.tensor([3]))["roi"].shape == (1, N, T, 2, 2, 2)


def test_box_geometry_in_chunks_equals_reference(monkeypatch):
    from stvh.models.visual import BoxGeometryEmbedding

    torch.manual_seed(5)
    geo = BoxGeometryEmbedding(d=8, hidden=16).eval()
    B, T, N = 3, 30, 12  # 1080 person-frames: two chunks of 1024 rows at 1 thread
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    xy = torch.rand(B, T, N, 2) * 300
    boxes = torch.cat([xy, xy + 10 + torch.rand(B, T, N, 2) * 40], -1)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[2, 5:] = False
    ref, feats = geo(boxes, mask, (240, 320))
    with torch.no_grad():
        out, feats2 = geo(boxes, mask, (240, 320))
    _close(out, ref.detach())
    assert torch.equal(feats2, feats.detach()) and (out[2, 5:] == 0).all()
