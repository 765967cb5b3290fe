"""The ``SapSOLOv2`` meta-architecture: :class:`segtrain.model.SOLOv2` behind detectron2's model interface.

Training input is what ``DatasetMapper`` makes: per image a dict with ``"image"`` (``3×H×W``
uint8, RGB as ``INPUT.FORMAT`` says) and ``"instances"`` (``gt_classes``, ``gt_masks`` as
``BitMasks`` at the image's size; an image without instances has no ``gt_masks``). The batch is
split into passes of ``SAP.IMAGES_PER_PASS`` images (detectron2's loader has grouped the whole
batch by orientation), each padded to its own size, and the losses are their mean, exactly as
the torch engine computes them. Inference returns ``Instances`` at ``"height"``/``"width"`` with
``pred_masks``, ``scores``, ``pred_classes`` and ``pred_boxes`` (boxes derived from the masks).

It is registered as ``"SapSOLOv2"``: AdelaiDet registers its own ``"SOLOv2"``, and both may live
in one process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..model import build_model, mean_losses, pass_losses
from ..targets import InstanceTargets, rule_targets
from .settings import ARCH_NAME, solov2_config_from_cfg


def targets_of(instances: Any, rules: dict[str, str]) -> InstanceTargets:
    """:class:`InstanceTargets` of detectron2 ``Instances`` under the target ``rules``
    (``SOLOv2Config.data_rules()``): masks from ``gt_masks`` (none if absent), annotation boxes
    from ``gt_boxes``; the same function as the torch engine's data pipeline."""
    if instances.has("gt_masks") and len(instances):
        masks = instances.gt_masks.tensor
    else:
        masks = torch.zeros((0, *instances.image_size), dtype=torch.bool)
    boxes = instances.gt_boxes.tensor if instances.has("gt_boxes") else None
    return rule_targets(masks, instances.gt_classes, boxes, rules)


class SapSOLOv2(nn.Module):
    """detectron2 meta-architecture around the same SOLOv2 modules as the torch engine."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.model = build_model(solov2_config_from_cfg(cfg), load_backbone_weights=True)
        self.images_per_pass = int(cfg.SAP.IMAGES_PER_PASS)
        self.model.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, batched_inputs: list[dict[str, Any]]):
        images = [x["image"] for x in batched_inputs]
        if self.training:
            rules = self.model.cfg.data_rules()
            targets = [targets_of(x["instances"], rules) for x in batched_inputs]
            losses = mean_losses(list(pass_losses(self.model, images, targets, self.images_per_pass)))
            return {"loss_cate": losses["loss_cate"], "loss_mask": losses["loss_mask"]}
        from detectron2.structures import Boxes, Instances

        originals = [(int(x.get("height", im.shape[-2])), int(x.get("width", im.shape[-1])))
                     for x, im in zip(batched_inputs, images)]
        outputs = []
        for pred, hw in zip(self.model.predict(images, originals), originals):
            inst = Instances(hw)
            inst.pred_masks = pred.masks
            inst.scores = pred.scores
            inst.pred_classes = pred.labels
            inst.pred_boxes = Boxes(pred.boxes)
            outputs.append({"instances": inst})
        return outputs


def register_solov2() -> type:
    """Register ``SapSOLOv2`` in ``META_ARCH_REGISTRY`` (once) and return it."""
    from detectron2.modeling import META_ARCH_REGISTRY

    if ARCH_NAME not in META_ARCH_REGISTRY:
        META_ARCH_REGISTRY.register(SapSOLOv2)
    return META_ARCH_REGISTRY.get(ARCH_NAME)
