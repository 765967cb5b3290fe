"""SAPNet's selector network: ResNet + FPN (GN, P2–P6), RoIAlign 7×7, two shared FC of 1024,
and one class/instance head pair per MIL stage (PSM: ``C + 1`` outputs, PRM: ``C``).

Two rules of :mod:`.reference` shape it: ``rule_roi_align`` (``official``: mmcv's aligned
RoIAlign with adaptive sampling and mmdetection's level rule; ``legacy``: torchvision's
MultiScaleRoIAlign, not aligned, sampling 2) and ``rule_bn`` (``official``: BatchNorm
statistics frozen, affine weights of ResNet layers 2–4 trained, as mmdetection's ``norm_eval``
with ``requires_grad``; ``frozen``: FrozenBatchNorm everywhere).

Images enter as ``B×3×H×W`` float tensors normalised with the ImageNet mean/std (see
:mod:`.data`); boxes are ``XYXY`` in the pixels of that input.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import MultiScaleRoIAlign

from pseudolabel.core.backbones import RANDOM_SPECS
from pseudolabel.core.resnet_fpn import FEATURE_NAMES, STRIDES, ResNetFPN, build_resnet_fpn
from .roi import LevelRoIAlign

FPN_CHANNELS = 256
ROI_SIZE = 7
FC_DIM = 1024


def build_backbone(name: str = "resnet50", weights: str | os.PathLike | None = "imagenet",
                   bn: str = "official", norm: str | None = None) -> tuple[ResNetFPN, str]:
    """SAPNet's backbone: ResNet (stem and ``layer1`` frozen) + FPN of 256 channels with
    GroupNorm(32) and P6 by a stride-2 conv on C5 (see :mod:`pseudolabel.core.resnet_fpn`).

    Args:
        bn: ``"official"`` (BatchNorm2d: :meth:`SelectorNet.train` keeps its statistics frozen,
            its affine weights train in layers 2–4) or ``"frozen"`` (FrozenBatchNorm2d).
        norm: None (the ``bn`` rule) or a body norm of :data:`pseudolabel.core.resnet_fpn.NORMS`
            that overrides it; ``"gn"`` (GroupNorm, every stage trainable) is what
            :func:`random_init_norm` picks for a backbone trained from random weights.

    Returns:
        ``(module, weights_loaded)``; the module maps images to an ordered dict ``p2 … p6``.
    """
    if norm is None:
        norm = "frozen_bn" if bn == "frozen" else "bn"
    return build_resnet_fpn(name, weights, norm=norm, fpn_channels=FPN_CHANNELS, fpn_norm="gn", p6="conv",
                            freeze_at=0 if norm == "gn" else 2, what="the selector's backbone")


def random_init_norm(weights: str | os.PathLike | None) -> str | None:
    """``"gn"`` when the backbone trains from random weights (``none``), else None (the ``bn`` rule).

    BatchNorm statistics frozen at their random-init values and a frozen random stem learn far
    less than GroupNorm with every stage trained (measured in docs/selector.md, "What the selector
    learns"). SAPNet always starts from ImageNet weights, so no rule of :mod:`.reference`
    covers this case (docs/fidelity.md).
    """
    return "gn" if weights is None or str(weights).lower() in RANDOM_SPECS else None


class SelectorNet(nn.Module):
    """The selector: features once per image, then per-stage class and instance logits per box.

    Args:
        num_classes: ``C``, the number of categories.
        stages: 1 (PSM only, the ``mil`` method) or 2 (PSM + PRM, ``sapnet``).
        backbone: a name of :data:`pseudolabel.core.resnet_fpn.BACKBONES`.
        backbone_weights: see :func:`~pseudolabel.core.resnet_fpn.build_resnet_fpn`.
        roi_align: ``"official"`` (:class:`.roi.LevelRoIAlign`) or ``"legacy"``.
        bn: ``"official"`` or ``"frozen"`` (see :func:`build_backbone`).
        backbone_norm: ``norm`` of :func:`build_backbone` (None: the ``bn`` rule).
    """

    def __init__(self, num_classes: int, stages: int = 2, backbone: str = "resnet50",
                 backbone_weights: str | os.PathLike | None = "imagenet", roi_align: str = "official",
                 bn: str = "official", backbone_norm: str | None = None) -> None:
        super().__init__()
        if stages not in (1, 2):
            raise ValueError("stages must be 1 or 2")
        self.num_classes = num_classes
        self.stages = stages
        self.backbone, self.backbone_weights = build_backbone(backbone, backbone_weights, bn=bn, norm=backbone_norm)
        if roi_align == "legacy":
            self.roi_align = MultiScaleRoIAlign(list(FEATURE_NAMES), ROI_SIZE, sampling_ratio=2)
        else:
            self.roi_align = LevelRoIAlign(list(FEATURE_NAMES), list(STRIDES), ROI_SIZE, sampling_ratio=0,
                                           aligned=True)
        self.shared_fcs = nn.Sequential(
            nn.Flatten(1), nn.Linear(FPN_CHANNELS * ROI_SIZE * ROI_SIZE, FC_DIM), nn.ReLU(inplace=True),
            nn.Linear(FC_DIM, FC_DIM), nn.ReLU(inplace=True))
        outs = [num_classes + 1, num_classes][:stages]
        self.fc_cls = nn.ModuleList(nn.Linear(FC_DIM, n) for n in outs)
        self.fc_ins = nn.ModuleList(nn.Linear(FC_DIM, n) for n in outs)
        self._init_heads()

    def _init_heads(self) -> None:
        prior_bias = -math.log((1 - 0.01) / 0.01)  # class prior 0.01, as in the official heads
        for m in [*self.shared_fcs, *self.fc_cls, *self.fc_ins]:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        for m in self.fc_cls:
            nn.init.constant_(m.bias, prior_bias)

    def train(self, mode: bool = True) -> "SelectorNet":
        """Train mode everywhere except the BatchNorm layers, whose statistics stay frozen."""
        super().train(mode)
        for m in self.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def features(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """FPN features ``p2 … p6`` of a ``B×3×H×W`` batch (H, W multiples of 32)."""
        return self.backbone(images)

    def forward_boxes(self, feats: "OrderedDict[str, torch.Tensor]", boxes: list[torch.Tensor],
                      image_hw: list[tuple[int, int]], stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class and instance logits of boxes.

        Args:
            feats: from :meth:`features`.
            boxes: one ``N_b×4`` XYXY float tensor per image of the batch.
            image_hw: the padded input size ``(H, W)`` per image.
            stage: 0 (PSM) or 1 (PRM).

        Returns:
            ``(cls, ins)`` logits, each ``(Σ N_b)×C'`` in the order of ``boxes``.
        """
        return self.box_logits(self.box_features(feats, boxes, image_hw), stage)

    def box_features(self, feats: "OrderedDict[str, torch.Tensor]", boxes: list[torch.Tensor],
                     image_hw: list[tuple[int, int]]) -> torch.Tensor:
        """The shared FC features ``(Σ N_b)×1024`` of boxes (arguments as :meth:`forward_boxes`);
        both stages read the same ones, so a box in both is pooled once."""
        return self.shared_fcs(self.roi_align(feats, [b.float() for b in boxes], image_hw))

    def box_logits(self, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class and instance logits of a stage from :meth:`box_features` rows."""
        return self.fc_cls[stage](x), self.fc_ins[stage](x)
