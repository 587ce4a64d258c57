"""Model registry: ``build(name, **config)`` and ``list_models()``.

Names: ``"stvh"`` (Sec. 4), ``"mstvh"`` (Sec. 5), ``"mstvh_bd"`` and
``"mstvh_ed"`` (ablations of Sec. 6.5.1, Table 5).

Config keys (all optional): ``bits`` K (128), ``depth`` Upsilon (3),
``d`` (1024), ``num_activities`` (8), ``num_actions`` (9), ``heads`` (8),
``dropout`` (0.1), ``backbone`` ("none"), ``visual`` (dict of extra
``VisualModule`` kwargs), ``visual_module`` (a ready module, overrides
``backbone``/``visual``), ``ffn_mult`` (4), ``edge_hidden`` (16),
``gcn_hidden`` (64), ``max_frames`` (64), ``keep_attention`` (False),
``hash_norm`` ("layer" or "none", see ``heads.HashHead``).
``VisualModule`` keys given at top level (``d_v``, ``roi_size``, ``weights``,
``train_backbone``, ``in_channels``) are moved into ``visual``.
Unknown keys raise ``TypeError``.
"""

from __future__ import annotations

from torch import nn

from .baselines import MSTVHBD, MSTVHED
from .heads import binarize
from .mstvh import MSTVH
from .output import ModelOutput
from .stvh import STVH

_REGISTRY: dict[str, type[nn.Module]] = {"stvh": STVH, "mstvh": MSTVH, "mstvh_bd": MSTVHBD, "mstvh_ed": MSTVHED}
VISUAL_KEYS = ("d_v", "roi_size", "weights", "train_backbone", "in_channels", "geometry", "geometry_units")


def list_models() -> list[str]:
    """Registered model names."""
    return list(_REGISTRY)


def build(name: str, **config) -> nn.Module:
    """Build a registered model; see the module docstring for the config keys."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}")
    visual = dict(config.pop("visual", None) or {})
    for key in VISUAL_KEYS:
        if key in config:
            visual[key] = config.pop(key)
    return _REGISTRY[name](visual=visual, **config)


__all__ = ["build", "list_models", "binarize", "ModelOutput", "STVH", "MSTVH", "MSTVHBD", "MSTVHED"]
