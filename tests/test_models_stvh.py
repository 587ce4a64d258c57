"""STVH / M-STVH / ablation models: registry, shapes, gradients, padding invariance,
attention maps, device, and a small overfitting run (Sec. 4, 5, 6.5.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stvh.losses import LossConfig, mstvh_loss, stvh_loss
from stvh.models import build, list_models
from stvh.models.output import ModelOutput

NAMES = ["stvh", "mstvh", "mstvh_bd", "mstvh_ed"]
SMALL = dict(d=16, heads=2, num_activities=4, num_actions=5, gcn_hidden=8, edge_hidden=4, ffn_mult=2)



def _boxes(B, T, N, gen):
    xy = torch.rand(B, T, N, 2, generator=gen) * torch.tensor([1000.0, 500.0])
    wh = torch.rand(B, T, N, 2, generator=gen) * 80 + 20
    return torch.cat([xy, xy + wh], -1)  # (B, T, N, 4)


def _batch(B=2, T=4, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = _boxes(B, T, N, g)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, -1] = False
    boxes[~mask[:, None, :].expand(B, T, N)] = 0.0
    size = torch.tensor([[720.0, 1280.0]]).expand(B, 2)
    activity = torch.arange(B) % 4
    actions = torch.randint(0, 5, (B, N), generator=g).masked_fill(~mask, -1)
    return boxes, mask, size, activity, actions


def _loss(name, out, activity, actions):
    return (stvh_loss if name == "stvh" else mstvh_loss)(out, activity, actions)["total"]


def test_registry():
    assert list_models() == NAMES
    with pytest.raises(KeyError, match="unknown model"):
        build("nope")
    with pytest.raises(TypeError):
        build("stvh", not_a_key=1, **SMALL)
    m = build("mstvh", bits=16, depth=2, d_v=64, **SMALL)  # a VisualModule key at top level
    assert m.visual.d_v == 64 and m.depth == 2 and m.bits == 16


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bits", [16, 32, 64, 128])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_shapes_and_gradients(name, bits, depth):
    torch.manual_seed(0)
    boxes, mask, size, activity, actions = _batch()
    model = build(name, bits=bits, depth=depth, **SMALL)
    out = model(boxes, mask, size)
    assert isinstance(out, ModelOutput)
    n_codes = 1 if name == "stvh" else depth
    assert len(out.h) == len(out.b) == len(out.activity_logits) == n_codes
    for h, b, logits in zip(out.h, out.b, out.activity_logits):
        assert h.shape == b.shape == (2, bits) and logits.shape == (2, 4)
        assert h.abs().max() <= 1 and set(b.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(b, torch.where(h >= 0, 1.0, -1.0))
    assert out.action_logits.shape == (2, 3, 5)
    assert out.graphs[0].shape == (2, 3, 4, 4) and out.graphs[1].shape == (2, 4, 3, 3)
    assert out.contrast.shape == (2, bits)
    if name == "stvh":
        assert out.recon is None
    else:
        assert out.recon.shape == out.recon_target.shape == (2, 3, 4, model.visual.recon_dim)
    _loss(name, out, activity, actions).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name):
    torch.manual_seed(0)
    model = build(name, bits=32, depth=2, **SMALL).eval()
    boxes, mask, size, _, _ = _batch(B=2, T=5, N=3, seed=1)
    mask[:] = True
    g = torch.Generator().manual_seed(7)
    pad_boxes = torch.cat([boxes, _boxes(2, 5, 2, g) * 3 - 500], 2)  # 2 padded persons with garbage boxes
    pad_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], 1)
    with torch.no_grad():
        a = model(boxes, mask, size)
        p = model(pad_boxes, pad_mask, size)
    for x, y in zip(a.h + a.activity_logits, p.h + p.activity_logits):
        assert torch.allclose(x, y, atol=1e-5)
    for x, y in zip(a.b, p.b):
        assert torch.equal(x, y)
    assert torch.allclose(a.action_logits, p.action_logits[:, :3], atol=1e-5)
    assert torch.allclose(a.contrast, p.contrast, atol=1e-5)
    assert torch.allclose(a.graphs[1], p.graphs[1][:, :, :3, :3], atol=1e-5)
    if a.recon is not None:
        assert torch.allclose(a.recon, p.recon[:, :3], atol=1e-5)
        assert torch.equal(p.recon[:, 3:], torch.zeros_like(p.recon[:, 3:]))


@pytest.mark.parametrize("name", ["stvh", "mstvh"])
def test_encode_and_classify(name):
    model = build(name, bits=16, depth=2, **SMALL).train()
    boxes, mask, size, _, _ = _batch()
    codes = model.encode(boxes, mask, size)
    assert model.training  # restored
    assert len(codes) == (1 if name == "stvh" else 2)
    assert all(c.shape == (2, 16) and not c.requires_grad and set(c.unique().tolist()) <= {-1.0, 1.0}
               for c in codes)
    logits = model.classify(codes)
    assert [x.shape for x in logits] == [(2, 4)] * len(codes)


def test_attention_maps_kept():
    boxes, mask, size, _, _ = _batch(T=4, N=3)
    m = build("mstvh", bits=16, depth=2, keep_attention=True, **SMALL).eval()
    att = m(boxes, mask, size).attention
    assert set(att) == {"layer1", "layer2"}
    o = att["layer2"]["o_mfat"]["combined"]  # (B, N, H, T, T)
    g = att["layer2"]["g_mfat"]["combined"]  # (B, T, H, N, N)
    assert o.shape == (2, 3, 2, 4, 4) and g.shape == (2, 4, 2, 3, 3)
    assert torch.equal(o, o.tril())  # earlier frames inform later ones only
    assert torch.equal(o[1, 2], torch.zeros_like(o[1, 2]))  # padded person: no attention
    assert torch.equal(g[1, :, :, 2], torch.zeros_like(g[1, :, :, 2]))  # ... neither received
    assert torch.equal(g[1, :, :, :, 2], torch.zeros_like(g[1, :, :, :, 2]))  # ... nor given
    assert torch.allclose(g[0].sum(-1), torch.ones(4, 2, 3), atol=1e-6)
    s = build("stvh", bits=16, depth=1, keep_attention=True, **SMALL)(boxes, mask, size).attention
    assert set(s) == {"layer1", "layer2"} and set(s["layer1"]) == {"temporal"} and set(s["layer2"]) == {"spatial"}
    plain = build("stvh", bits=16, depth=1, **SMALL)
    assert plain(boxes, mask, size).attention is None
    plain.set_keep_attention(True)  # switched on after construction (e.g. a loaded checkpoint)
    assert plain(boxes, mask, size).attention["layer1"]["temporal"]["combined"].shape == (2, 3, 2, 4, 4)


def test_recon_reads_the_first_block_only():
    m = build("mstvh", bits=16, depth=2, **SMALL)
    boxes, mask, size, _, _ = _batch()
    m(boxes, mask, size).recon.sum().backward()
    assert m.blocks[0].ffn.net[0].weight.grad is not None
    assert all(p.grad is None for p in m.blocks[1].parameters())


class StandIn(nn.Module):
    """A visual module honouring the contract: f_v (B, N, T, d), recon_target (B, N, T, r)."""

    recon_dim = 4

    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(4, d)

    def forward(self, boxes, mask, image_size, frames=None, roi=None):
        x = (boxes / 1000.0).permute(0, 2, 1, 3) * mask[:, :, None, None]  # (B, N, T, 4)
        return self.fc(x) * mask[:, :, None, None], x


def test_injected_visual_module():
    m = build("mstvh", bits=16, depth=2, visual_module=StandIn(16), **SMALL)
    boxes, mask, size, activity, actions = _batch()
    out = m(boxes, mask, size)
    assert out.recon.shape == (2, 3, 4, 4)
    mstvh_loss(out, activity, actions)["total"].backward()
    assert m.visual.fc.weight.grad is not None


# device tests run on a GPU only: on the CPU everything is on the CPU, so they could not fail there
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: device tests need a GPU")
@pytest.mark.parametrize("name", NAMES)
def test_outputs_follow_input_device_cuda(name):
    dev = torch.device("cuda")
    boxes, mask, size, activity, actions = (t.to(dev) for t in _batch())
    model = build(name, bits=16, depth=2, **SMALL).to(dev)
    out = model(boxes, mask, size)
    tensors = out.h + out.b + out.activity_logits + [out.action_logits, out.contrast, *out.graphs]
    assert all(t.device.type == "cuda" for t in tensors)
    _loss(name, out, activity, actions).backward()


def synthetic_motion(n=32, T=6, N=3, seed=0):
    """``n`` clips, 4 classes: person 0 walks left / right / up / down (20 px per frame),
    the others stand still with 2 px jitter."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    dirs = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    start = torch.rand(n, 1, N, 2, generator=g) * torch.tensor([800.0, 400.0]) + 200
    move = torch.zeros(n, 1, N, 2)
    move[:, 0, 0] = dirs[labels] * 20.0
    steps = torch.arange(T, dtype=torch.float32).view(1, T, 1, 1)
    xy = start + steps * move + torch.randn(n, T, N, 2, generator=g) * 2.0
    boxes = torch.cat([xy, xy + torch.tensor([40.0, 80.0])], -1)  # (n, T, N, 4)
    return boxes, torch.ones(n, N, dtype=torch.bool), torch.tensor([[720.0, 1280.0]]).expand(n, 2), labels


@pytest.mark.parametrize("name", ["stvh", "mstvh"])
def test_overfits_32_synthetic_clips(name):
    boxes, mask, size, labels = synthetic_motion()
    actions = torch.zeros(32, 3, dtype=torch.long)
    torch.manual_seed(0)
    model = build(name, bits=16, depth=2, d=32, heads=2, num_activities=4, num_actions=2, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    config = LossConfig.stvh() if name == "stvh" else LossConfig.mstvh()
    streak = 0
    for _ in range(300):
        out = model(boxes, mask, size)
        loss = (stvh_loss if name == "stvh" else mstvh_loss)(out, labels, actions, config)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        streak = streak + 1 if bool((out.activity_logits[-1].argmax(-1) == labels).all()) else 0
        if streak == 5:
            break
    model.eval()
    with torch.no_grad():
        out = model(boxes, mask, size)
    assert (out.activity_logits[-1].argmax(-1) == labels).float().mean().item() == 1.0
