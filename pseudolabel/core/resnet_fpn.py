"""The one ResNet + FPN of `sap`, shared by the SAPNet selector and SOLOv2, built from torchvision.

``ResNetFPN(x)`` maps a ``B×3×H×W`` batch (H, W multiples of 32) to an ordered dict
``p2 … p6`` of ``fpn_channels`` maps at strides 4, 8, 16, 32 and 64. The variants the two
networks need are arguments:

* ``norm`` of the ResNet body: ``"frozen_bn"`` (ImageNet statistics, frozen: detectron2's and
  the published SOLOv2 setting), ``"bn"`` (trainable batch norm), or ``"gn"`` (GroupNorm(32),
  for a random start with any batch size);
* ``fpn_norm``: None (plain FPN convs, SOLOv2) or ``"gn"`` (GroupNorm(32) after each FPN conv,
  SAPNet's selector);
* ``p6``: ``"maxpool"`` (stride-2 max-pool of P5, detectron2's ``LastLevelMaxPool``) or
  ``"conv"`` (3×3 stride-2 conv on C5, normed like the FPN: SAPNet's selector);
* ``freeze_at``: 0 trains everything, 1 freezes the stem, 2 the stem and ``layer1``
  (detectron2's ``FREEZE_AT``).

State-dict keys are torchvision's ``BackboneWithFPN`` ones (``body.*``, ``fpn.*``), and
:meth:`ResNetFPN.load_body_weights` takes the body's weights from any state dict that
:func:`~pseudolabel.core.backbones.fetch_resnet_weights` understands (torchvision, detectron2,
mmdetection naming).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Callable

import torch
import torchvision.models as tvm
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import FrozenBatchNorm2d

from .backbones import RESNET_WEIGHTS, fetch_resnet_weights
from .errors import InputError

#: name -> channels of layer1..layer4 (the torchvision builder has the same name)
BACKBONES: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "resnet18_half": (32, 64, 128, 256),  # ResNet-18 at half width: the pocket backbone's
}
assert set(BACKBONES) == set(RESNET_WEIGHTS)
NORMS = ("frozen_bn", "bn", "gn")
P6_MODES = ("maxpool", "conv")
FEATURE_NAMES = ("p2", "p3", "p4", "p5", "p6")
STRIDES = (4, 8, 16, 32, 64)


def norm_layer(norm: str | None) -> Callable[[int], nn.Module] | None:
    """A ``channels -> module`` factory for a norm name (None: no norm)."""
    if norm is None:
        return None
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    raise InputError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


class _HalfResNet18(tvm.ResNet):
    """torchvision's ResNet-18 with every stage at half width (stem 32, layers 32/64/128/256
    channels): the pocket backbone's body, 2.8 M parameters instead of 11.7 M. Same module names
    as ``resnet18``, so state dicts, freezing and the FPN treat it as any torchvision ResNet."""

    def __init__(self, norm_layer: Callable[[int], nn.Module] | None = None, num_classes: int = 1000) -> None:
        self._halve = True
        super().__init__(tvm.resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=norm_layer)
        self.conv1 = nn.Conv2d(3, 32, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = self._norm_layer(32)
        self.fc = nn.Linear(256, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:  # layer1: the stem is 32 wide too
            self.inplanes = 32
        return super()._make_layer(block, planes // 2, blocks, stride, dilate)


def resnet_body(name: str, norm_layer: Callable[[int], nn.Module] | None = None, num_classes: int = 1000) -> tvm.ResNet:
    """A randomly initialised torchvision ResNet of :data:`BACKBONES` (``fc`` of ``num_classes``)."""
    if name == "resnet18_half":
        return _HalfResNet18(norm_layer, num_classes)
    return getattr(tvm, name)(weights=None, norm_layer=norm_layer, num_classes=num_classes)


class _P6MaxPool(ExtraFPNBlock):
    """P6 = stride-2 max-pool (kernel 1) of P5."""

    def forward(self, results, x, names):
        return results + [F.max_pool2d(results[-1], 1, 2, 0)], names + ["p6"]


class _P6Conv(ExtraFPNBlock):
    """P6 = 3×3 stride-2 conv (+ norm) on the body's last map C5."""

    def __init__(self, in_channels: int, out_channels: int, norm: Callable[[int], nn.Module] | None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=norm is None)]
        if norm is not None:
            layers.append(norm(out_channels))
        self.conv = nn.Sequential(*layers)

    def forward(self, results, x, names):
        return results + [self.conv(x[-1])], names + ["p6"]


class ResNetFPN(BackboneWithFPN):
    """ResNet body + FPN; ``forward`` maps ``B×3×H×W`` to ``{"p2": …, …, "p6": …}`` (see module doc)."""

    def __init__(self, name: str = "resnet50", *, norm: str = "frozen_bn", fpn_channels: int = 256,
                 fpn_norm: str | None = None, p6: str = "maxpool", freeze_at: int = 2) -> None:
        if name not in BACKBONES:
            raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        if p6 not in P6_MODES:
            raise InputError(f"unknown P6 variant {p6!r}; choose one of {', '.join(P6_MODES)}")
        channels = BACKBONES[name]
        body = resnet_body(name, norm_layer(norm))
        fnorm = norm_layer(fpn_norm)
        extra = _P6MaxPool() if p6 == "maxpool" else _P6Conv(channels[-1], fpn_channels, fnorm)
        super().__init__(body, {f"layer{i}": f"p{i + 1}" for i in range(1, 5)}, list(channels), fpn_channels,
                         extra_blocks=extra, norm_layer=fnorm)
        self.name, self.norm, self.fpn_norm, self.p6, self.freeze_at = name, norm, fpn_norm, p6, freeze_at
        self.strides = STRIDES
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and ``layer1 .. layer{freeze_at-1}`` of the body."""
        stages = [["conv1", "bn1"]] + [[f"layer{i}"] for i in range(1, 5)]
        for stage in stages[:freeze_at]:
            for mod_name in stage:
                if hasattr(self.body, mod_name):
                    for p in getattr(self.body, mod_name).parameters():
                        p.requires_grad_(False)

    def load_body_weights(self, state: dict[str, torch.Tensor], source: str = "the weights") -> None:
        """Load a ResNet state dict (torchvision names) into the body.

        Raises:
            InputError: a tensor the body needs (everything but ``fc``) is missing or has
                another shape, e.g. weights of another depth.
        """
        own = self.body.state_dict()
        usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        needed = [k for k in own if not k.endswith("num_batches_tracked")]
        missing = [k for k in needed if k not in usable]
        if missing:
            raise InputError(f"{source} do not fit a torchvision {self.name} ({len(missing)} of {len(needed)} "
                             f"tensors missing or of another shape, first {missing[0]!r})")
        self.body.load_state_dict(usable, strict=False)


def build_resnet_fpn(name: str, weights: str | os.PathLike | None = "imagenet", *, norm: str = "auto",
                     fpn_channels: int = 256, fpn_norm: str | None = None, p6: str = "maxpool",
                     freeze_at: int = 2, what: str = "the backbone") -> tuple[ResNetFPN, str]:
    """Build a :class:`ResNetFPN` and load its ImageNet weights when they can be had.

    Args:
        name: a key of :data:`BACKBONES`.
        weights: see :func:`~pseudolabel.core.backbones.fetch_resnet_weights`; ``"checkpoint"``
            leaves the body random without a warning (a trained checkpoint is loaded next).
        norm: a body norm of :data:`NORMS`, or ``"auto"``: frozen BN with weights, GN without.
        fpn_channels, fpn_norm, p6, freeze_at: see the module docstring.
        what: how messages name the network.

    Returns:
        ``(module, source)``; source is ``"imagenet"``, ``"file:PATH"``, ``"random"`` or
        ``"checkpoint"``. The chosen norm is on ``module.norm``.
    """
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if str(weights).lower() == "checkpoint":
        state, source = None, "checkpoint"
    else:
        state, source = fetch_resnet_weights(name, weights, what=what)
    if norm == "auto":
        norm = "frozen_bn" if state is not None else "gn"
    net = ResNetFPN(name, norm=norm, fpn_channels=fpn_channels, fpn_norm=fpn_norm, p6=p6, freeze_at=freeze_at)
    if state is not None:
        net.load_body_weights(state, f"backbone weights {source}")
    return net, source
