"""Prompt kinds for `sap proposals`: how one annotated point becomes one SAM prompt.

Each kind maps the points of a chunk (and the proposals earlier kinds made for them) to the
arguments of :meth:`pseudolabel.core.engines.base.PromptEngine.decode`. Kinds run in the configured order, so a
kind may build on an earlier one's masks.

* ``point``: the point alone (SAM's multimask output for an ambiguous click).
* ``point_box``: the point plus the tight box of the point prompt's best mask (highest
  predicted IoU), which asks SAM for the whole object that mask outlines. Point + point_box
  gives SAPNet's 6-proposal bags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pseudolabel.core.errors import InputError


@dataclass
class KindResult:
    """What one kind produced for the B points of a chunk.

    Attributes:
        masks: ``B×C×H×W`` bool masks at the original size.
        iou: ``B×C`` predicted IoUs.
        boxes: ``B×C×4`` XYXY boxes of the masks.
    """

    masks: torch.Tensor
    iou: torch.Tensor
    boxes: torch.Tensor


PromptArgs = dict  # keyword arguments of PromptEngine.decode
KindFn = Callable[[np.ndarray, dict[str, KindResult], tuple[int, int]], PromptArgs]


def _point_prompt(points: np.ndarray) -> PromptArgs:
    return {"point_coords": points.reshape(-1, 1, 2), "point_labels": np.ones((len(points), 1))}


def kind_point(points: np.ndarray, earlier: dict[str, KindResult], hw: tuple[int, int]) -> PromptArgs:
    """The point alone. ``points``: ``B×2`` (x, y) original pixels."""
    return _point_prompt(points)


def kind_point_box(points: np.ndarray, earlier: dict[str, KindResult], hw: tuple[int, int]) -> PromptArgs:
    """The point plus the XYXY box of the ``point`` kind's highest-IoU mask.

    Where that mask is empty, a square of a tenth of the image's longer side around the point.
    """
    if "point" not in earlier:
        raise InputError("prompt kind 'point_box' needs the 'point' kind before it")
    prev = earlier["point"]
    best = prev.iou.argmax(dim=1)
    boxes = prev.boxes[torch.arange(len(best)), best].cpu().numpy().astype(np.float64)
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if empty.any():
        half = max(hw) / 20.0
        p = points[empty]
        boxes[empty] = np.concatenate([p - half, p + half], axis=1)
    return {**_point_prompt(points), "boxes": boxes}


PROMPT_KINDS: dict[str, KindFn] = {"point": kind_point, "point_box": kind_point_box}


def parse_kinds(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"point,point_box"`` → ``("point", "point_box")``, checked against the registry."""
    kinds = tuple(k.strip() for k in (spec.split(",") if isinstance(spec, str) else spec) if k.strip())
    if not kinds:
        raise InputError("at least one prompt kind is needed")
    for k in kinds:
        if k not in PROMPT_KINDS:
            raise InputError(f"unknown prompt kind {k!r}; choose from {', '.join(PROMPT_KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise InputError("a prompt kind is listed twice")
    return kinds


def mask_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (exclusive right/bottom) of ``...×H×W`` bool masks; zeros when empty."""
    h, w = masks.shape[-2:]
    rows = masks.any(dim=-1)  # ...×H
    cols = masks.any(dim=-2)  # ...×W
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).amin(-1)
    y2 = torch.where(rows, ar_h + 1, 0).amax(-1)
    x1 = torch.where(cols, ar_w, w).amin(-1)
    x2 = torch.where(cols, ar_w + 1, 0).amax(-1)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).float()
    empty = ~rows.any(-1)
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)
