"""The network-side SAPNet rules of `--reference official`: mmcv-style RoIAlign and BN training."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import roi_align

from pseudolabel.selector.model import SelectorNet
from pseudolabel.selector.roi import LevelRoIAlign, roi_levels, sparse_roi_align


def test_roi_levels_follow_mmdetection():
    """level = floor(log2(sqrt(w·h) / 56 + 1e-6)), clamped to the pyramid (P2 … P6)."""
    sides = torch.tensor([10.0, 111.9, 112.0, 224.0, 447.0, 448.0, 896.0, 5000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    assert roi_levels(boxes, 5).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]


def test_level_roi_align_is_aligned_adaptive_roi_align_on_the_chosen_level():
    torch.manual_seed(0)
    feats = {f"p{i}": torch.randn(1, 3, 64 // 2 ** (i - 2), 64 // 2 ** (i - 2)) for i in range(2, 7)}
    pool = LevelRoIAlign(list(feats), [4, 8, 16, 32, 64], 7)
    boxes = torch.tensor([[3.3, 5.0, 60.2, 90.7], [10.0, 10.0, 250.0, 200.0]])
    out = pool(feats, [boxes])
    levels = roi_levels(boxes, 5)
    assert levels.tolist() == [0, 1]
    for k, lv in enumerate(levels.tolist()):
        rois = torch.cat([torch.zeros(1, 1), boxes[k:k + 1]], dim=1)
        ref = roi_align(feats[f"p{lv + 2}"], rois, 7, 1.0 / (4 * 2 ** lv), 0, True)
        assert torch.allclose(out[k:k + 1], ref, atol=1e-6)  # the sparse CPU path sums in another order
    legacy = SelectorNet(2, 2, "resnet18", "none", roi_align="legacy").roi_align(feats, [boxes], [(256, 256)])
    assert not torch.allclose(out, legacy)  # the rule matters


@pytest.mark.parametrize("aligned,sampling", [(True, 0), (False, 2)])
def test_sparse_roi_align_gives_torchvision_values_and_gradients(aligned, sampling):
    """Boxes inside, across and beyond the border, empty and sub-pixel ones, on two images."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 13, 11, generator=g, requires_grad=True)
    xy = torch.rand(40, 2, generator=g) * 60 - 8
    wh = torch.rand(40, 2, generator=g) * torch.tensor([[30.0, 30.0], [3.0, 0.5]]).repeat(20, 1)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), xy, xy + wh], dim=1)
    rois[0, 3:] = rois[0, 1:3]  # empty
    rois[1, 1:] = torch.tensor([-30.0, -30.0, -10.0, -10.0])  # outside
    grad = torch.randn(40, 5, 7, 7, generator=g)
    outs = []
    for fn in (roi_align, sparse_roi_align):
        feats.grad = None
        out = fn(feats, rois, 7, 0.25, sampling, aligned)
        out.backward(grad)
        outs.append((out.detach(), feats.grad.clone()))
    assert outs[0][0].abs().sum() > 0 and outs[0][1].abs().sum() > 0
    assert torch.allclose(outs[1][0], outs[0][0], atol=1e-5)
    assert torch.allclose(outs[1][1], outs[0][1], atol=1e-5)


def test_official_bn_trains_affine_weights_of_layers_2_to_4_with_frozen_statistics():
    net = SelectorNet(2, 2, "resnet18", "none", bn="official").train()
    body = net.backbone.body
    assert all(p.requires_grad for p in body.layer2[0].bn1.parameters())
    assert not any(p.requires_grad for p in body.layer1[0].bn1.parameters())
    assert not any(p.requires_grad for p in body.bn1.parameters())
    bns = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # statistics frozen in training mode
    mean = body.layer3[0].bn1.running_mean.clone()
    net.features(torch.randn(2, 3, 64, 64))
    assert torch.equal(body.layer3[0].bn1.running_mean, mean)
    frozen = SelectorNet(2, 2, "resnet18", "none", bn="frozen").backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
