"""Prompt kinds for `sap proposals`: how one annotated object becomes one SAM prompt.

Each kind maps the clicks of a chunk of objects (and the proposals earlier kinds made for them)
to the arguments of :meth:`pseudolabel.core.engines.base.PromptEngine.decode`. Kinds run in the
configured order, so a kind may build on an earlier one's masks. Every kind gives SAM all of an
object's clicks chosen by the click mode (:data:`CLICK_MODES`) in one prompt: SAM takes several
labelled points natively, so nothing loops over clicks or merges masks afterwards.

* ``point``: the clicks alone (SAM's multimask output for an ambiguous click).
* ``point_box``: the clicks plus the tight box of the point prompt's best mask (highest
  predicted IoU), which asks SAM for the whole object that mask outlines. Point + point_box
  gives SAPNet's 6-proposal bags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.core.points import PointAnn


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


def _clicks_all(p: PointAnn) -> tuple:
    return p.all_clicks()


def _clicks_positive(p: PointAnn) -> tuple:
    return tuple(c for c in p.all_clicks() if c[2] == 1)


def _clicks_first(p: PointAnn) -> tuple:
    return ((p.x, p.y, 1),)


#: which of an object's clicks go into its prompt, by name (``ProposalConfig.clicks``).
#: ``all``: every positive and negative click; ``positive``: the positive ones; ``first``: the
#: first positive only (sap ≤ 0.2). Default ``positive``, measured (docs/points.md,
#: scripts/bench_clicks.py): on the pocket SAM's held-out scenes 2 negative clicks on the
#: neighbours cost 0.09 top-1 mIoU at every number of positive clicks; more positive clicks
#: change top-1 by under 0.01 and lift the point+box prompt by up to 0.03.
CLICK_MODES: dict[str, Callable[[PointAnn], tuple]] = {
    "all": _clicks_all, "positive": _clicks_positive, "first": _clicks_first}
DEFAULT_CLICKS = "positive"


def check_click_mode(mode: str) -> str:
    if mode not in CLICK_MODES:
        raise InputError(f"unknown click mode {mode!r}; choose one of {', '.join(CLICK_MODES)}")
    return mode


@dataclass
class ClickPrompt:
    """The clicks of B objects as SAM's point prompt.

    Attributes:
        coords: ``B×N×2`` ``(x, y)`` original pixels, N the most clicks of any object.
        labels: ``B×N``: 1 positive, 0 negative, -1 padding (SAM's "not a point").
        first: ``B×2`` each object's first positive click.
        counts: ``B`` clicks per object (padding not counted).
    """

    coords: np.ndarray
    labels: np.ndarray
    first: np.ndarray
    counts: np.ndarray


def click_prompt(points: Sequence[PointAnn], mode: str = DEFAULT_CLICKS) -> ClickPrompt:
    """The clicks ``mode`` picks from each object, padded to one ``B×N`` prompt."""
    picked = [CLICK_MODES[mode](p) for p in points]
    n = max(len(c) for c in picked)
    coords = np.zeros((len(picked), n, 2), dtype=np.float64)
    labels = np.full((len(picked), n), -1, dtype=np.int64)
    for b, clicks in enumerate(picked):
        coords[b, :len(clicks)] = [c[:2] for c in clicks]
        labels[b, :len(clicks)] = [c[2] for c in clicks]
    first = np.array([[p.x, p.y] for p in points], dtype=np.float64).reshape(-1, 2)
    return ClickPrompt(coords, labels, first, np.array([len(c) for c in picked]))


PromptArgs = dict  # keyword arguments of PromptEngine.decode
KindFn = Callable[[ClickPrompt, dict[str, KindResult], tuple[int, int]], PromptArgs]


def _point_prompt(prompt: ClickPrompt) -> PromptArgs:
    return {"point_coords": prompt.coords, "point_labels": prompt.labels}


def kind_point(prompt: ClickPrompt, earlier: dict[str, KindResult], hw: tuple[int, int]) -> PromptArgs:
    """The clicks alone."""
    return _point_prompt(prompt)


def kind_point_box(prompt: ClickPrompt, earlier: dict[str, KindResult], hw: tuple[int, int]) -> PromptArgs:
    """The clicks plus the XYXY box of the ``point`` kind's highest-IoU mask.

    Where that mask is empty, a square of a tenth of the image's longer side around the first
    positive click.
    """
    if "point" not in earlier:
        raise InputError("prompt kind 'point_box' needs the 'point' kind before it")
    prev = earlier["point"]
    best = prev.iou.argmax(dim=1)
    boxes = prev.boxes[torch.arange(len(best)), best].cpu().numpy().astype(np.float64)
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if empty.any():
        half = max(hw) / 20.0
        p = prompt.first[empty]
        boxes[empty] = np.concatenate([p - half, p + half], axis=1)
    return {**_point_prompt(prompt), "boxes": boxes}


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
