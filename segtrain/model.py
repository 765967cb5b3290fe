"""SOLOv2 composed from its parts, and its configuration (AdelaiDet's defaults).

    cfg = SOLOv2Config(num_classes=80, backbone="resnet50")
    model = SOLOv2(cfg)                       # random backbone; see build_model for weights
    batch, sizes = model.preprocess([img])    # img: 3×H×W uint8 RGB, already resized
    losses = model(batch, sizes, targets)     # training mode: dict of losses
    preds = model.predict([img], [(H0, W0)])  # eval: list of Prediction at the original size

A training batch goes through in passes (:func:`pass_losses`): a few images padded together,
as one GPU of AdelaiDet's 8 × 2 sees them; the batch's loss is the mean of its passes' losses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pseudolabel.core.resnet_fpn import ResNetFPN, build_resnet_fpn

from .heads import InstanceHead, MaskFeatureHead
from .losses import solo_losses
from .postprocess import InferenceParams, Prediction, point_nms, postprocess_image
from .sampling import pass_slices
from .targets import InstanceTargets, build_targets


@dataclass
class SOLOv2Config:
    """Architecture, loss and inference settings (defaults: AdelaiDet SOLOv2, R50-FPN).

    ``backbone_norm`` is ``"auto"`` until a model is built; the built model records the norm it
    chose (``"frozen_bn"`` with ImageNet weights, ``"gn"`` from random weights).
    """

    num_classes: int = 80
    backbone: str = "resnet50"
    backbone_weights: str = "imagenet"
    backbone_norm: str = "auto"
    freeze_at: int = 2
    fpn_channels: int = 256
    # instance branch
    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)
    scale_ranges: tuple[tuple[float, float], ...] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    sigma: float = 0.2
    head_channels: int = 512
    head_convs: int = 4
    prior_prob: float = 0.01
    # mask-feature branch
    mask_channels: int = 128
    kernel_dim: int = 256
    # losses
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_weight: float = 1.0
    dice_weight: float = 3.0
    dice_eps: float = 1e-3
    mps_weight: float = 0.25
    mps_ranks: tuple[int, ...] = (2, 4, 6)
    mps_reduce: str = "mean"
    # target rules: official (AdelaiDet) | sap; see segtrain/targets.py and segtrain/reference.py
    rule_cell_conflict: str = "official"
    rule_mask_target: str = "official"
    rule_centre: str = "official"
    rule_scale_box: str = "official"
    # inference
    inference: InferenceParams = field(default_factory=InferenceParams)
    # input normalisation (RGB, 0-255 scale; torchvision ImageNet statistics)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32

    def data_rules(self) -> dict[str, str]:
        """The target rules the data pipelines apply (:func:`segtrain.targets.rule_targets`)."""
        return {"mask_target": self.rule_mask_target, "centre": self.rule_centre, "scale_box": self.rule_scale_box}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SOLOv2Config":
        """Inverse of :meth:`to_dict` (unknown keys are an error, lists become tuples)."""
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SOLOv2Config keys: {sorted(unknown)}")
        if isinstance(d.get("inference"), dict):
            d["inference"] = InferenceParams(**d["inference"])
        for key in ("num_grids", "strides", "mps_ranks", "pixel_mean", "pixel_std"):
            if key in d:
                d[key] = tuple(d[key])
        if "scale_ranges" in d:
            d["scale_ranges"] = tuple(tuple(r) for r in d["scale_ranges"])
        return cls(**d)


class SOLOv2(nn.Module):
    """SOLOv2: ResNet-FPN backbone, instance head, mask-feature head, dynamic 1×1 kernels."""

    def __init__(self, cfg: SOLOv2Config, backbone: ResNetFPN | None = None) -> None:
        super().__init__()
        if not (len(cfg.num_grids) == len(cfg.strides) == len(cfg.scale_ranges) == 5):
            raise ValueError("SOLOv2 needs 5 levels of num_grids, strides and scale_ranges")
        if backbone is None:
            norm = cfg.backbone_norm if cfg.backbone_norm != "auto" else "gn"
            backbone = ResNetFPN(cfg.backbone, norm=norm, fpn_channels=cfg.fpn_channels,
                                 freeze_at=backbone_freeze_at(norm, cfg.freeze_at))
        self.cfg = dataclasses.replace(cfg, backbone_norm=backbone.norm)
        self.backbone = backbone
        c = backbone.out_channels
        self.ins_head = InstanceHead(c, cfg.num_classes, cfg.kernel_dim, cfg.head_channels, cfg.head_convs,
                                     cfg.num_grids, cfg.prior_prob)
        self.mask_head = MaskFeatureHead(c, cfg.mask_channels, cfg.kernel_dim)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise ``3×H×W`` uint8 RGB images and pad them (bottom/right) into one batch.

        Returns:
            ``B×3×Hp×Wp`` float (multiples of ``size_divisibility``) and the ``(H, W)`` of each.
        """
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        div = self.cfg.size_divisibility
        hp = -(-max(h for h, _ in sizes) // div) * div
        wp = -(-max(w for _, w in sizes) // div) * div
        batch = torch.zeros(len(images), 3, hp, wp, device=self.device)
        for i, im in enumerate(images):
            x = (im.to(self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
            batch[i, :, : x.shape[-2], : x.shape[-1]] = x
        return batch, sizes

    def _heads(self, batch: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        p2, p3, p4, p5, p6 = self.backbone(batch).values()
        ins_feats = [
            F.interpolate(p2, scale_factor=0.5, mode="bilinear", align_corners=False),
            p3, p4, p5,
            F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False),
        ]
        cates, kernels = self.ins_head(ins_feats)
        mask_feats = self.mask_head([p2, p3, p4, p5])
        return cates, kernels, mask_feats

    def forward(self, batch: Tensor, sizes: list[tuple[int, int]] | None = None,
                targets: list[InstanceTargets] | None = None) -> dict[str, Tensor] | list[Prediction]:
        """Training (``targets`` given): the loss dict (total = ``loss_cate + loss_mask``).
        Otherwise the predictions at the input size of each image."""
        cates, kernels, mask_feats = self._heads(batch)
        if targets is not None:
            cfg = self.cfg
            padded = (int(batch.shape[-2]), int(batch.shape[-1]))
            level_targets = [build_targets(t, padded, cfg.num_grids, cfg.scale_ranges, cfg.sigma, cfg.num_classes,
                                           cfg.rule_cell_conflict) for t in targets]
            targets = [t.to(batch.device) for t in targets]
            return solo_losses(cates, kernels, mask_feats, targets, level_targets, num_classes=cfg.num_classes,
                               focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma,
                               focal_weight=cfg.focal_weight, dice_weight=cfg.dice_weight, dice_eps=cfg.dice_eps,
                               mps_weight=cfg.mps_weight, mps_ranks=cfg.mps_ranks, mps_reduce=cfg.mps_reduce)
        sizes = sizes or [tuple(batch.shape[-2:])] * batch.shape[0]
        return self.postprocess(cates, kernels, mask_feats, sizes, sizes)

    def postprocess(self, cates: list[Tensor], kernels: list[Tensor], mask_feats: Tensor,
                    input_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]],
                    upsample_all: bool = False) -> list[Prediction]:
        """Head outputs of a batch → one :class:`Prediction` per image at ``original_sizes``."""
        probs = [point_nms(c.float().sigmoid()) for c in cates]
        return [
            postprocess_image([p[i] for p in probs], [k[i] for k in kernels], mask_feats[i], self.cfg.strides,
                              input_sizes[i], original_sizes[i], self.cfg.inference, upsample_all)
            for i in range(mask_feats.shape[0])
        ]

    @torch.no_grad()
    def predict(self, images: list[Tensor], original_sizes: list[tuple[int, int]] | None = None,
                upsample_all: bool = False) -> list[Prediction]:
        """Predict on resized ``3×H×W`` uint8 RGB images; masks come back at ``original_sizes``."""
        batch, sizes = self.preprocess(images)
        cates, kernels, mask_feats = self._heads(batch)
        return self.postprocess(cates, kernels, mask_feats, sizes, original_sizes or sizes, upsample_all)


def build_model(cfg: SOLOv2Config, load_backbone_weights: bool = True) -> SOLOv2:
    """Build SOLOv2; with ``load_backbone_weights`` the backbone gets ImageNet weights when they
    can be had (``cfg.backbone_weights``), else a random start with a loud warning.

    The returned model's ``cfg.backbone_norm`` says which norm was chosen.
    """
    if load_backbone_weights:
        backbone = build_solo_backbone(cfg.backbone, cfg.backbone_weights, cfg.backbone_norm, cfg.fpn_channels,
                                       cfg.freeze_at)
        return SOLOv2(cfg, backbone=backbone)
    return SOLOv2(cfg)


def backbone_freeze_at(norm: str, freeze_at: int) -> int:
    """Stages to freeze: ``freeze_at`` under frozen BN (detectron2's ``FREEZE_AT``), none under a
    trainable norm (a random start trains everything)."""
    return freeze_at if norm == "frozen_bn" else 0


def build_solo_backbone(name: str, weights: str | None = "imagenet", norm: str = "auto", fpn_channels: int = 256,
                        freeze_at: int = 2) -> ResNetFPN:
    """SOLOv2's backbone: ResNet + plain FPN, P6 by max-pool (detectron2's ``LastLevelMaxPool``).

    ``norm="auto"`` is frozen BN with ImageNet weights (the published setting) and trainable
    GroupNorm(32) from a random start; the chosen norm is on the module's ``norm``.
    """
    net, _ = build_resnet_fpn(name, weights, norm=norm, fpn_channels=fpn_channels, p6="maxpool", freeze_at=0,
                              what=f"the SOLOv2 backbone {name}")
    net.freeze(backbone_freeze_at(net.norm, freeze_at))
    net.freeze_at = freeze_at
    return net


def pass_losses(model: SOLOv2, images: list[Tensor], targets: list[InstanceTargets], per_pass: int,
                forward: Callable[..., dict[str, Tensor]] | None = None) -> Iterator[dict[str, Tensor]]:
    """The losses of each pass of a batch: consecutive ``per_pass`` images, padded to their own size.

    Args:
        images: ``3×H×W`` uint8 RGB, already resized (those of a pass share an orientation).
        forward: what runs the network (default ``model``; a DDP wrapper, or an autocast closure).

    The batch's loss is the mean over passes (:func:`mean_losses`): exactly the gradient that
    passes on separate GPUs, averaged by DDP, would give.
    """
    forward = forward or model
    for part in pass_slices(len(images), per_pass):
        batch, sizes = model.preprocess(images[part])
        yield forward(batch, sizes, targets[part])


def mean_losses(passes: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Key by key mean of the loss dicts of a batch's passes."""
    return {k: sum(p[k] for p in passes) / len(passes) for k in passes[0]}
