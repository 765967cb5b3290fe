"""ResNet + FPN backbones for SOLOv2, built from torchvision.

The backbone returns five feature maps ``[P2, P3, P4, P5, P6]`` of ``fpn_channels`` channels at
strides 4, 8, 16, 32 and 64 of the (padded) input; P6 is a stride-2 max-pool of P5, as in
detectron2's FPN with ``LastLevelMaxPool``.

Two normalisations, chosen by whether ImageNet weights were loaded:

* ``"frozen_bn"`` (weights loaded): frozen batch norm, stem and ``layer1`` frozen
  (detectron2's ``FREEZE_AT = 2``), the setting of the published SOLOv2 results;
* ``"gn"`` (random start): trainable GroupNorm(32) everywhere, which trains from scratch with
  any batch size and behaves the same in training and evaluation.

Backbones are chosen by name from :data:`BACKBONES`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from torch import Tensor, nn

from pseudolabel.backbones import fetch_resnet_weights
from pseudolabel.errors import InputError
from pseudolabel.progress import logger

#: name -> (torchvision builder name, torchvision weights enum name, channels of layer1..layer4)
BACKBONES: dict[str, tuple[str, str, tuple[int, int, int, int]]] = {
    "resnet18": ("resnet18", "ResNet18_Weights", (64, 128, 256, 512)),
    "resnet34": ("resnet34", "ResNet34_Weights", (64, 128, 256, 512)),
    "resnet50": ("resnet50", "ResNet50_Weights", (256, 512, 1024, 2048)),
    "resnet101": ("resnet101", "ResNet101_Weights", (256, 512, 1024, 2048)),
}

NORMS = ("frozen_bn", "gn")


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        from torchvision.ops.misc import FrozenBatchNorm2d

        return FrozenBatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"unknown backbone norm {norm!r}; choose one of {', '.join(NORMS)}")


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


class ResNetFPN(nn.Module):
    """ResNet body + FPN; ``forward`` maps ``B×3×H×W`` to ``[P2, P3, P4, P5, P6]``."""

    def __init__(self, name: str = "resnet50", norm: str = "gn", fpn_channels: int = 256,
                 freeze_at: int = 2) -> None:
        super().__init__()
        _check_name(name)
        import torchvision.models as tvm
        from torchvision.models.detection.backbone_utils import BackboneWithFPN
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        builder, _, channels = BACKBONES[name]
        body = getattr(tvm, builder)(weights=None, norm_layer=_norm_layer(norm))
        self.name, self.norm, self.freeze_at = name, norm, freeze_at
        self.net = BackboneWithFPN(
            body,
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            in_channels_list=list(channels),
            out_channels=fpn_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.out_channels = fpn_channels
        self.strides = (4, 8, 16, 32, 64)
        if norm == "frozen_bn":
            self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and ``layer1 .. layer{freeze_at-1}``."""
        body = self.net.body
        stages = [["conv1", "bn1"]] + [[f"layer{i}"] for i in range(1, 5)]
        for stage in stages[:freeze_at]:
            for mod_name in stage:
                if hasattr(body, mod_name):
                    for p in getattr(body, mod_name).parameters():
                        p.requires_grad_(False)

    def load_imagenet(self, state: dict[str, Any]) -> int:
        """Load a torchvision ResNet state dict into the body; returns the tensors loaded.

        Raises:
            InputError: fewer than half of this backbone's tensors are in ``state``.
        """
        own = self.net.body.state_dict()
        usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if 2 * len(usable) < len(own):
            raise InputError(f"the backbone weights fit only {len(usable)} of the {len(own)} tensors of a "
                             f"{self.name} (wrong architecture?)")
        missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
        if missing:
            logger.warning("backbone weights: %d of %d tensors missing (e.g. %s)", len(missing), len(own),
                           missing[0])
        self.net.body.load_state_dict(usable, strict=False)
        return len(usable)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.net(x)
        return [out["0"], out["1"], out["2"], out["3"], out["pool"]]


def build_backbone(name: str, weights: str | os.PathLike | None = "imagenet", norm: str = "auto",
                   fpn_channels: int = 256, freeze_at: int = 2) -> ResNetFPN:
    """Build a :class:`ResNetFPN` and load its ImageNet weights when they can be had.

    Args:
        name: a key of :data:`BACKBONES`.
        weights: see :func:`pseudolabel.backbones.fetch_resnet_weights`.
        norm: ``"frozen_bn"``, ``"gn"``, or ``"auto"`` (frozen BN with weights, GN without).
        fpn_channels: channels of every FPN level.
        freeze_at: stages frozen when the norm is ``"frozen_bn"`` (1 = stem, 2 = stem + layer1).

    The chosen norm is on the returned module's ``norm`` attribute (store it in the model
    config so the same architecture can be rebuilt without the weights).
    """
    _check_name(name)
    state, _ = fetch_resnet_weights(name, weights, what=f"the SOLOv2 backbone {name}")
    if norm == "auto":
        norm = "frozen_bn" if state is not None else "gn"
    backbone = ResNetFPN(name, norm=norm, fpn_channels=fpn_channels, freeze_at=freeze_at)
    if state is not None:
        backbone.load_imagenet(state)
    return backbone
