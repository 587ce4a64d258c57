"""Training-time augmentation (train/augment.py) and the dataset's label mirrors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stvh.data.clip import mirror_ids
from stvh.data.formats import read_dataset
from stvh.train.augment import Augment, augment_batch, flip_clips
from stvh.train.config import ConfigError, load_config


def _batch(B=3, T=4, N=3, C=2):
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(B, T, N, generator=g) * 100
    y1 = torch.rand(B, T, N, generator=g) * 50
    boxes = torch.stack([x1, y1, x1 + 10, y1 + 20], -1)  # (B, T, N, 4)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 2] = False
    boxes[0, :, 2] = 0
    return {"boxes": boxes, "mask": mask, "image_size": torch.tensor([[90.0, 160.0]] * B),
            "activity": torch.tensor([0, 1, -1]), "actions": torch.tensor([[0, 1, -1], [1, 1, 0], [0, 0, 0]]),
            "roi": torch.randn(B, N, T, C, 5, 5, generator=g)}


def test_mirror_ids_pair_sides_by_name():
    names = ["r_set", "r_spike", "l_set", "l_spike", "Left-walk", "right walk", "queueing", "l_alone"]
    assert mirror_ids(names).tolist() == [2, 3, 0, 1, 5, 4, 6, 7]
    assert mirror_ids([]).tolist() == []


def test_synthetic_dataset_mirrors_its_activities(tiny_synth):
    ds = read_dataset(tiny_synth)
    mirrored = ds.mirrored("activities")
    names = list(ds.activities)
    for i, j in enumerate(mirrored):
        assert names[j] == ("l_" if names[i].startswith("r_") else "r_") + names[i][2:]
    assert np.array_equal(ds.mirrored("actions"), np.arange(len(ds.actions)))  # actions have no side


def test_flip_mirrors_boxes_grids_and_labels_and_twice_is_identity():
    b = _batch()
    aug = Augment(flip=0.5, mirror_activity=torch.tensor([1, 0]), mirror_action=torch.tensor([0, 1]))
    which = torch.tensor([True, False, True])
    out = flip_clips(b, which, aug)
    W = 160.0
    assert torch.allclose(out["boxes"][1], b["boxes"][1])  # not flipped
    assert torch.allclose(out["boxes"][2, ..., 0], W - b["boxes"][2, ..., 2])
    assert torch.allclose(out["boxes"][2, ..., 2] - out["boxes"][2, ..., 0], torch.full((4, 3), 10.0))
    assert out["boxes"][0, :, 2].abs().sum() == 0  # padded person stays a zero box
    assert torch.equal(out["roi"][0], b["roi"][0].flip(-1)) and torch.equal(out["roi"][1], b["roi"][1])
    assert out["activity"].tolist() == [1, 1, -1]  # 0 -> 1 flipped, 1 kept, unlabeled stays -1
    back = flip_clips(out, which, aug)
    for key in ("boxes", "roi", "activity", "actions"):
        assert torch.allclose(back[key].float(), b[key].float())


def test_jitter_pan_drop_keep_shapes_padding_and_at_least_two_persons():
    b = _batch()
    g = torch.Generator().manual_seed(1)
    out = augment_batch(b, Augment(jitter=0.1, pan=0.05, drop=0.9), g)
    assert out["boxes"].shape == b["boxes"].shape and out["roi"].shape == b["roi"].shape
    assert (out["mask"].sum(1) >= 2).all() and not (out["mask"] & ~b["mask"]).any()
    gone = b["mask"] & ~out["mask"]
    assert (out["actions"][gone] == -1).all() and out["roi"][gone].abs().sum() == 0
    kept = out["mask"][:, None, :].expand(3, 4, 3)
    box = out["boxes"][kept]
    assert (box[:, 2] >= box[:, 0]).all() and (box[:, 3] >= box[:, 1]).all()
    assert not torch.allclose(box, b["boxes"][kept])  # jitter and pan moved them
    again = augment_batch(b, Augment(jitter=0.1, pan=0.05, drop=0.9), torch.Generator().manual_seed(1))
    assert torch.equal(again["boxes"], out["boxes"])  # the generator decides everything
    assert augment_batch(b, Augment(), g) is b  # nothing to do


def test_pan_is_a_linear_camera_travel():
    b = _batch()
    out = augment_batch(b, Augment(pan=0.1), torch.Generator().manual_seed(2))
    d = out["boxes"] - b["boxes"]  # (B, T, N, 4)
    assert torch.allclose(d[1, :, 0], d[1, :, 1], atol=1e-5)  # every person moves alike
    steps = d[1, 1:, 0, 0] - d[1, :-1, 0, 0]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-4)  # linear in time
    assert d[1, -1, 0, :2].norm() - d[1, 0, 0, :2].norm() <= 0.1 * 160 + 1e-4


def test_config_keys():
    cfg = load_config(None, ["train.augment.flip=0.5", "model.pooling=sides", "model.tracks=stable",
                             "loss.filter=1", "train.select=val_both"])
    assert cfg["train"]["augment"]["flip"] == 0.5 and cfg["loss"]["filter"] == 1.0
    with pytest.raises(ConfigError, match="train.augment.flip"):
        load_config(None, ["train.augment.flip=1.5"])
    with pytest.raises(ConfigError, match="model.pooling"):
        load_config(None, ["model.pooling=max"])
    with pytest.raises(ConfigError, match="'model.shared_bits'.*for model.name = stvh"):
        load_config(None, ["model.name=stvh", "model.shared_bits=8"])
    with pytest.raises(ConfigError, match="'loss.filter'.*M-STVH family"):
        load_config(None, ["model.name=stvh", "loss.filter=1"])
    with pytest.raises(ConfigError, match="'model.shared_bits'.*fewer than model.bits"):
        load_config(None, ["model.bits=16", "model.shared_bits=16"])
