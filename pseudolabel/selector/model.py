"""SAPNet's selector network: ResNet + FPN (GN, P2–P6), RoIAlign 7×7, two shared FC of 1024,
and one class/instance head pair per MIL stage (PSM: ``C + 1`` outputs, PRM: ``C``).

Images enter as ``B×3×H×W`` float tensors normalised with the ImageNet mean/std (see
:mod:`.data`); boxes are ``XYXY`` in the pixels of that input.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from ..backbones import fetch_resnet_weights
from ..errors import InputError

# name → torchvision builder (weights: pseudolabel.backbones)
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": models.resnet18, "resnet34": models.resnet34,
    "resnet50": models.resnet50, "resnet101": models.resnet101,
}

FPN_CHANNELS = 256
ROI_SIZE = 7
FC_DIM = 1024
FEATURE_NAMES = ["p2", "p3", "p4", "p5", "p6"]  # strides 4, 8, 16, 32, 64


class LastLevelP6(ExtraFPNBlock):
    """P6 by a 3×3 stride-2 convolution (+ GN) on the backbone's last feature map (C5)."""

    def __init__(self, in_channels: int, out_channels: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                                  norm(out_channels))

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]):
        return results + [self.conv(x[-1])], names + ["p6"]


def load_backbone_weights(body: nn.Module, name: str, weights: str | os.PathLike | None) -> str:
    """Load ImageNet weights into a torchvision ResNet; returns what was loaded.

    Args:
        body: the ResNet.
        name: its registry name (for the torchvision weights enum).
        weights: ``"imagenet"`` (torchvision's download, cached under ``$TORCH_HOME``), a path
            to a state dict (a plain ResNet one, or one wrapped in ``state_dict``/``model``, with
            ``backbone.``/``module.`` prefixes stripped), ``"none"``/None for random weights, or
            ``"checkpoint"`` (left random, quietly: a selector checkpoint is loaded next).

    Returns:
        ``"imagenet"``, ``"file:PATH"``, ``"random"`` or ``"checkpoint"``.

    Raises:
        InputError: the file is missing or holds no ResNet weights of this depth.
    """
    if str(weights).lower() == "checkpoint":  # a selector checkpoint will overwrite them
        return "checkpoint"
    clean, source = fetch_resnet_weights(name, weights, what="the selector's backbone")
    if clean is None or source == "imagenet":
        if clean is not None:
            body.load_state_dict(clean, strict=False)
        return source
    path = Path(weights)
    own = body.state_dict()
    usable = {k: v for k, v in clean.items() if k in own and own[k].shape == v.shape}
    needed = [k for k in own if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in usable]
    if missing:
        raise InputError(f"backbone weights file {path} does not fit a torchvision {name} "
                         f"({len(missing)} of {len(needed)} tensors missing, first {missing[0]!r})")
    body.load_state_dict(usable, strict=False)
    return f"file:{path}"


def build_backbone(name: str = "resnet50", weights: str | os.PathLike | None = "imagenet",
                   trainable_layers: int = 3) -> tuple[BackboneWithFPN, str]:
    """ResNet (frozen BN, stem and ``layer1`` frozen) + FPN of 256 channels with GroupNorm(32).

    Returns:
        ``(module, weights_loaded)``; the module maps images to an ordered dict ``p2 … p6``.
    """
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    body = BACKBONES[name](weights=None, norm_layer=FrozenBatchNorm2d)
    loaded = load_backbone_weights(body, name, weights)
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for pname, p in body.named_parameters():
        p.requires_grad_(any(pname.startswith(layer) for layer in layers))
    c5 = body.fc.in_features
    in_channels = [c5 // 8, c5 // 4, c5 // 2, c5]
    gn = partial(nn.GroupNorm, 32)
    fpn = BackboneWithFPN(body, {f"layer{i}": f"p{i + 1}" for i in range(1, 5)}, in_channels, FPN_CHANNELS,
                          extra_blocks=LastLevelP6(c5, FPN_CHANNELS, gn), norm_layer=gn)
    return fpn, loaded


class SelectorNet(nn.Module):
    """The selector: features once per image, then per-stage class and instance logits per box.

    Args:
        num_classes: ``C``, the number of categories.
        stages: 1 (PSM only, the ``mil`` method) or 2 (PSM + PRM, ``sapnet``).
        backbone: a name of :data:`BACKBONES`.
        backbone_weights: see :func:`load_backbone_weights`.
    """

    def __init__(self, num_classes: int, stages: int = 2, backbone: str = "resnet50",
                 backbone_weights: str | os.PathLike | None = "imagenet") -> None:
        super().__init__()
        if stages not in (1, 2):
            raise ValueError("stages must be 1 or 2")
        self.num_classes = num_classes
        self.stages = stages
        self.backbone, self.backbone_weights = build_backbone(backbone, backbone_weights)
        self.roi_align = MultiScaleRoIAlign(FEATURE_NAMES, ROI_SIZE, sampling_ratio=2)
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
        pooled = self.roi_align(feats, [b.float() for b in boxes], image_hw)
        x = self.shared_fcs(pooled)
        return self.fc_cls[stage](x), self.fc_ins[stage](x)
