"""Model options beyond the paper: cleaned tracks, side-aware pooling, the jointly trained F."""

from __future__ import annotations

import pytest
import torch

from stvh.losses import LossConfig, filter_consistency, mstvh_loss
from stvh.models import build
from stvh.models.filter import standardise
from stvh.models.heads import HashHead, side_maxes, side_means
from stvh.models.tracks import camera_shift, clean_tracks, court_sides, smooth_boxes
from stvh.train.config import ConfigError, load_config

SMALL = dict(d=16, heads=2, num_activities=4, num_actions=3, dropout=0.0)


def _boxes(B=2, T=5, N=4, W=200.0):
    x = torch.linspace(20, W - 40, N)  # persons spread across the width
    b = torch.stack([x, torch.full((N,), 40.0), x + 10, torch.full((N,), 70.0)], -1)  # (N, 4)
    return b.expand(B, T, N, 4).clone()


def test_smooth_boxes_by_hand():
    boxes = torch.zeros(1, 4, 1, 4)
    boxes[0, :, 0, 0] = torch.tensor([0.0, 3.0, 0.0, 3.0])
    out = smooth_boxes(boxes, 3)[0, :, 0, 0]
    # centred window of 3, edges average the frames that exist: (0+3)/2, (0+3+0)/3, (3+0+3)/3, (0+3)/2
    assert out.tolist() == pytest.approx([1.5, 1.0, 2.0, 1.5])
    assert torch.equal(smooth_boxes(boxes, 1), boxes)


def test_camera_shift_is_the_median_of_real_persons_and_ignores_padding():
    boxes = _boxes(B=1, T=3, N=5)
    mask = torch.tensor([[True, True, True, True, False]])
    pan = torch.tensor([0.0, 4.0, 8.0])
    boxes[0, :, :, 0::2] += pan[:, None, None]  # the camera moves everyone right
    boxes[0, :, 0, 0::2] += torch.tensor([0.0, 30.0, 60.0])[:, None]  # one player runs: not the camera
    boxes[0, :, 4] = torch.tensor([0.0, 500.0, 1000.0])[:, None]  # a padded slot with nonsense
    shift = camera_shift(boxes, mask)
    assert shift[0, :, 0].tolist() == pytest.approx([0.0, 4.0, 8.0]) and shift[0, :, 1].abs().max() == 0
    stable = clean_tracks(boxes, mask, "stable")
    assert stable[0, :, 1, 0].tolist() == pytest.approx([boxes[0, 0, 1, 0].item()] * 3)  # standing still now
    assert stable[0, :, 4].abs().sum() == 0  # padded persons stay zero
    assert torch.equal(clean_tracks(boxes, mask, "raw"), boxes)
    with pytest.raises(ValueError, match="tracks must be one of"):
        clean_tracks(boxes, mask, "wobbly")


def test_court_sides_split_at_the_group_middle_and_move_with_the_camera():
    boxes = _boxes(B=1, T=2, N=4)  # x centres 25, 65, 105, 145 -> middle 85
    mask = torch.ones(1, 4, dtype=torch.bool)
    left = court_sides(boxes, mask, torch.tensor([[120.0, 200.0]]))
    assert left.round().tolist() == [[1.0, 1.0, 0.0, 0.0]]
    shifted = boxes.clone()
    shifted[..., 0::2] += 30  # pan: the middle moves with the players
    assert torch.allclose(court_sides(shifted, mask, (120.0, 200.0)), left)
    mask[0, 3] = False
    assert court_sides(boxes, mask, (120.0, 200.0))[0, 3] == 0


def test_side_means_and_sides_pooling_tell_the_halves_apart():
    f = torch.zeros(1, 2, 3, 2)  # (B, N, T, d)
    f[0, 0, :, 0] = 1.0  # the left person has feature 0
    f[0, 1, :, 1] = 2.0  # the right person feature 1
    mask = torch.ones(1, 2, dtype=torch.bool)
    pooled = side_means(f, mask, torch.tensor([[1.0, 0.0]]))
    assert pooled.tolist() == [[1.0, 0.0, 0.0, 2.0]]
    swapped = side_means(f, mask, torch.tensor([[0.0, 1.0]]))
    assert swapped.tolist() == [[0.0, 2.0, 1.0, 0.0]]  # same persons, other sides: another vector
    assert side_maxes(f, mask, torch.tensor([[1.0, 0.0]])).tolist() == [[1.0, 0.0, 0.0, 2.0]]
    f[0, 0, 1, 0] = 5.0  # one frame of the left person stands out: the max keeps it whole
    assert side_maxes(f, mask, torch.tensor([[1.0, 0.0]]))[0, 0] == 5.0
    alone = side_maxes(f, mask, torch.tensor([[1.0, 1.0]]))  # nobody on the right: zeros there
    assert alone[0, 2:].tolist() == [0.0, 0.0] and alone[0, :2].tolist() == [5.0, 2.0]
    head = HashHead(2, 8, pooling="sides")
    assert head(f, mask, torch.tensor([[1.0, 0.0]])).shape == (1, 8)
    with pytest.raises(ValueError, match="needs the court side"):
        head(f, mask)
    with pytest.raises(ValueError, match="pooling must be one of"):
        HashHead(2, 8, pooling="max")


@pytest.mark.parametrize("name", ["mstvh", "mstvh_bd", "stvh"])
def test_models_take_the_options(name):
    boxes, mask = _boxes(), torch.ones(2, 4, dtype=torch.bool)
    kw = dict(pooling="sides", tracks="stable" if name != "stvh" else "smooth")
    m = build(name, bits=16, depth=2, **kw, **SMALL)
    out = m(boxes, mask, torch.tensor([[120.0, 200.0]] * 2))
    assert out.h[-1].shape == (2, 16) and out.derived is None


def test_joint_filter_derives_codes_and_its_loss_trains_f_and_the_model():
    torch.manual_seed(0)
    m = build("mstvh", bits=16, depth=3, joint_filter=True, **SMALL)
    boxes, mask = _boxes(), torch.ones(2, 4, dtype=torch.bool)
    out = m(boxes, mask, torch.tensor([[120.0, 200.0]] * 2))
    assert len(out.derived) == 2 and out.derived[0].shape == (2, 16)
    # Eq. 16 chain from the deepest real code: b'_2 = F h_3, b'_1 = F b'_2 (row form: x @ F.T)
    F = m.filter.weight
    assert torch.allclose(out.derived[1], out.h[2] @ F.T) and torch.allclose(out.derived[0], out.h[2] @ F.T @ F.T)
    terms = mstvh_loss(out, torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.long), LossConfig(filter=1.0))
    assert "filter" in terms
    terms["total"].backward()
    assert m.filter.weight.grad.abs().sum() > 0 and m.hash_heads[-1].fc.weight.grad.abs().sum() > 0
    off = mstvh_loss(out, torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.long), LossConfig(filter=0.0))
    assert "filter" not in off
    assert build("mstvh", bits=16, depth=1, joint_filter=True, **SMALL).filter is None  # no shallower code


def test_filter_consistency_by_hand_and_targets_detached():
    deep = torch.tensor([[1.0, 1.0, -1.0, -1.0]], requires_grad=True)  # standardised = itself
    shallow = torch.tensor([[0.3, -0.2, -0.9, -0.5]], requires_grad=True)  # sign: (+, -, -, -)
    loss = filter_consistency([deep * 1.0], [shallow, deep])
    assert loss.item() == pytest.approx(1.0)  # one bit off by 2: 4 / 4
    loss.backward()
    assert shallow.grad is None and deep.grad.abs().sum() > 0
    assert torch.allclose(standardise(deep.detach()), deep.detach())


def test_geometry_in_body_units_measures_motion_in_body_heights():
    from stvh.models.visual import box_geometry_features

    boxes = torch.tensor([[10.0, 20, 20, 40], [10.0, 10, 20, 30]]).view(1, 2, 1, 4)  # 20 px tall, jumps 10 px
    mask, size = torch.tensor([[True]]), torch.tensor([[100.0, 200.0]])
    image = box_geometry_features(boxes, mask, size)
    body = box_geometry_features(boxes, mask, size, units="body")
    assert image[0, 0, 1, 6].item() == pytest.approx(-0.1)  # dcy in image heights
    assert body[0, 0, 1, 6].item() == pytest.approx(-0.5)  # half a body height
    assert body[0, 0, 1, 10].item() == pytest.approx(-0.5)  # disp_y too
    assert torch.equal(body[..., :5], image[..., :5]) and torch.equal(body[..., 11:], image[..., 11:])
    big = box_geometry_features(boxes * 3, mask, size * 3, units="body")  # the same scene, 3x the pixels
    assert torch.allclose(big[..., 5:11], body[..., 5:11])
    with pytest.raises(ValueError, match="geometry units"):
        box_geometry_features(boxes, mask, size, units="feet")


def test_shared_bits_put_the_shallow_codes_first_entries_into_the_deepest_code():
    torch.manual_seed(0)
    m = build("mstvh", bits=16, depth=3, shared_bits=4, **SMALL)
    boxes, mask = _boxes(), torch.ones(2, 4, dtype=torch.bool)
    out = m(boxes, mask, torch.tensor([[120.0, 200.0]] * 2))
    assert all(h.shape == (2, 16) for h in out.h) and m.hash_heads[-1].fc.out_features == 12
    assert torch.equal(out.h[2][:, :4], out.h[0][:, :4]) and torch.equal(out.b[2][:, :4], out.b[0][:, :4])
    out.activity_logits[-1].sum().backward()  # the deep code's losses do not reach the shared entries
    assert m.hash_heads[0].fc.weight.grad is None and m.hash_heads[-1].fc.weight.grad.abs().sum() > 0
    for bad in (dict(shared_bits=16), dict(shared_bits=4, depth=1)):
        with pytest.raises(ValueError, match="shared_bits"):
            build("mstvh", **{"bits": 16, "depth": 3, **bad}, **SMALL)


def test_shared_bits_middle_put_the_shallow_codes_first_entries_into_each_middle_code():
    torch.manual_seed(0)
    m = build("mstvh", bits=16, depth=4, shared_bits=4, shared_bits_middle=10, **SMALL)
    boxes, mask = _boxes(), torch.ones(2, 4, dtype=torch.bool)
    out = m(boxes, mask, torch.tensor([[120.0, 200.0]] * 2))
    assert [hh.fc.out_features for hh in m.hash_heads] == [16, 6, 6, 12]
    assert all(h.shape == (2, 16) for h in out.h)
    for tau in (1, 2):
        assert torch.equal(out.h[tau][:, :10], out.h[0][:, :10])
        assert not torch.equal(out.h[tau][:, 10:], out.h[0][:, 10:])
    assert torch.equal(out.h[3][:, :4], out.h[0][:, :4])
    out.activity_logits[1].sum().backward()  # a middle code's losses do not reach the shared entries
    assert m.hash_heads[0].fc.weight.grad is None and m.hash_heads[1].fc.weight.grad.abs().sum() > 0
    for bad in (dict(shared_bits_middle=16), dict(shared_bits_middle=4, depth=2)):
        with pytest.raises(ValueError, match="shared_bits_middle"):
            build("mstvh", **{"bits": 16, "depth": 3, **bad}, **SMALL)
    with pytest.raises(ConfigError, match="'model.shared_bits_middle'.*depth >= 3"):
        load_config(None, ["model.depth=2", "model.shared_bits_middle=8"])
    with pytest.raises(ConfigError, match="'model.shared_bits_middle'.*for model.name = stvh"):
        load_config(None, ["model.name=stvh", "model.shared_bits_middle=8", "model.depth=3"])
