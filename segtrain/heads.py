"""The two SOLOv2 heads: the instance (category + kernel) branch and the mask-feature branch.

* :class:`InstanceHead` runs on the instance features (P2..P6 brought to strides 8, 8, 16, 32,
  32). Each level is resized to its ``S×S`` grid; a shared tower of ``num_convs`` 3×3 convs
  (GroupNorm, ReLU) predicts ``C`` category logits per cell, and a second shared tower, fed
  with two extra coordinate channels (coord-conv), predicts a ``D``-dim dynamic 1×1 kernel per
  cell.
* :class:`MaskFeatureHead` merges P2..P5 into one ``D``-channel map at stride 4 (each level
  brought up by conv + 2× bilinear steps; coordinate channels added at P5).

A cell's mask is its kernel applied to the mask features: ``mask = kernel · F`` (1×1 conv).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def coord_features(x: Tensor) -> Tensor:
    """Two channels of normalised coordinates (x, y) in ``[-1, 1]`` shaped ``B×2×H×W`` like ``x``."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).unsqueeze(0).expand(b, -1, -1, -1)


def _conv_gn_relu(cin: int, cout: int, groups: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(groups, cout), cout),
        nn.ReLU(inplace=True),
    )


class InstanceHead(nn.Module):
    """Category and dynamic-kernel predictions on the ``S×S`` grid of every level.

    Args:
        in_channels: channels of the instance features (FPN width).
        num_classes: ``C`` (no background class: sigmoid per class).
        kernel_dim: ``D``, the length of each dynamic kernel (= mask-feature channels).
        channels: width of the towers (512 in SOLOv2).
        num_convs: convs per tower (4 in SOLOv2).
        num_grids: ``S`` of each level.
        prior_prob: initial foreground probability of every category logit.
    """

    def __init__(self, in_channels: int, num_classes: int, kernel_dim: int, channels: int = 512,
                 num_convs: int = 4, num_grids: tuple[int, ...] = (40, 36, 24, 16, 12),
                 prior_prob: float = 0.01, gn_groups: int = 32) -> None:
        super().__init__()
        self.num_grids = tuple(num_grids)
        self.kernel_tower = nn.Sequential(*[
            _conv_gn_relu(in_channels + 2 if i == 0 else channels, channels, gn_groups)
            for i in range(num_convs)])
        self.cate_tower = nn.Sequential(*[
            _conv_gn_relu(in_channels if i == 0 else channels, channels, gn_groups)
            for i in range(num_convs)])
        self.kernel_pred = nn.Conv2d(channels, kernel_dim, 3, padding=1)
        self.cate_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cate_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Map instance features (one per level) to ``(cate, kernel)`` lists.

        Returns:
            cate: per level ``B×C×S×S`` logits; kernel: per level ``B×D×S×S``.
        """
        cates, kernels = [], []
        for feat, s in zip(feats, self.num_grids):
            x = torch.cat([feat, coord_features(feat)], dim=1)
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
            kernels.append(self.kernel_pred(self.kernel_tower(x)))
            cates.append(self.cate_pred(self.cate_tower(x[:, :-2])))
        return cates, kernels


class MaskFeatureHead(nn.Module):
    """The unified mask features: P2..P5 → ``B×D×(H/4)×(W/4)``.

    Level ``i`` (stride ``4·2^i``) goes through ``max(i, 1)`` conv-GN-ReLU blocks, each but the
    last level-0 block followed by a 2× bilinear upsampling, so all levels meet at stride 4;
    they are summed and projected to ``D`` channels by a 1×1 conv-GN-ReLU. P5 receives the two
    coordinate channels.
    """

    def __init__(self, in_channels: int, channels: int = 128, out_channels: int = 256,
                 num_levels: int = 4, gn_groups: int = 32) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for i in range(num_levels):
            blocks: list[nn.Module] = []
            if i == 0:
                blocks.append(_conv_gn_relu(in_channels, channels, gn_groups))
            for j in range(i):
                cin = (in_channels + (2 if i == num_levels - 1 else 0)) if j == 0 else channels
                blocks.append(_conv_gn_relu(cin, channels, gn_groups))
                blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.levels.append(nn.Sequential(*blocks))
        self.pred = _conv_gn_relu(channels, out_channels, gn_groups, kernel=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """``feats``: P2..P5 (strides 4..32) → ``B×D×h×w`` with ``(h, w)`` the size of P2."""
        out = None
        last = len(self.levels) - 1
        for i, (feat, level) in enumerate(zip(feats, self.levels)):
            if i == last:
                feat = torch.cat([feat, coord_features(feat)], dim=1)
            y = level(feat)
            if out is None:
                out = y
            else:
                if y.shape[-2:] != out.shape[-2:]:  # odd sizes: align to P2
                    y = F.interpolate(y, size=out.shape[-2:], mode="bilinear", align_corners=False)
                out = out + y
        return self.pred(out)
