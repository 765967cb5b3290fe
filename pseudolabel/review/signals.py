"""How likely each pseudo-label is wrong: one number per signal, each in [0, 1] (1 = suspicious).

Signals come from what the stages already wrote; a signal a file does not carry is absent for
that annotation (never guessed):

===================  ==========================================================================
``sam_iou``          1 − SAM's predicted IoU of the chosen proposal (proposal cache, or the
                     ``score`` of a ``sam-top1`` choice)
``stability``        1 − SAM's stability score of the chosen proposal (proposal cache)
``margin``           1 − the selector's margin between its top two proposals (``sap.margin``)
``refine_change``    1 − IoU between the selected mask and the refined one
``refine_iou``       1 − refine's predicted IoU of the refined mask (``refine_iou``)
``refine_iters``     iterations refine needed to converge ÷ its limit (``sap.refine_iters`` /
                     ``sap.refine_max_iters``, or top-level ``refine_iters``), when recorded
``stage_disagree``   1 − IoU between SAM's top-1 and the selected mask
``model_disagree``   1 − best IoU with a same-class prediction of the trained model
``tiny``             1 − √area / 32, clipped: objects under 32² px are hard to get right
``fragmented``       share of the mask outside its largest connected part
``point_outside``    1 when the annotated click lies outside the mask
===================  ==========================================================================

:func:`combine` turns them into one risk (a weighted noisy-or). Masks are compressed RLEs;
points ``(x, y)`` in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pseudolabel.core.coco import is_locked
from pseudolabel.core.rle import decode_rle, rle_iou, rle_to_bbox_xywh, segmentation_to_rle

#: weight of each signal in the combined risk (see :func:`combine`)
WEIGHTS: dict[str, float] = {
    "sam_iou": 1.0, "stability": 1.0, "margin": 2.0, "refine_change": 1.0, "refine_iou": 1.0,
    "refine_iters": 0.5, "stage_disagree": 2.0, "model_disagree": 1.0, "tiny": 1.0, "fragmented": 1.0,
    "point_outside": 3.0,
}
SIGNALS = tuple(WEIGHTS)


def evidence(signals: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """``Σ w · −log(1 − s)`` over the signals present (absent = no evidence; ``s`` capped at 0.999):
    the queue's sort key, which keeps ordering objects that several signals flag at once."""
    weights = weights or WEIGHTS
    return sum(weights.get(k, 0.0) * -math.log1p(-min(max(v, 0.0), 0.999)) for k, v in signals.items())


def combine(signals: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """Weighted noisy-or: ``1 − Π (1 − s)^w = 1 − exp(−evidence)``, the risk shown for an item.

    One strong signal is enough to rank an object high; several weak ones add up.
    """
    return 1.0 - math.exp(-evidence(signals, weights))


@dataclass
class Context:
    """What the signals may read besides the annotation (all optional).

    Attributes:
        selected: annotation id → the selection's annotation (before refine).
        sam_top1: annotation id → SAM's top-1 annotation.
        bags: annotation id → its proposal :class:`~pseudolabel.core.bags.Bag`.
        predictions: image id → the trained model's predictions on that image.
    """

    selected: dict[Any, dict] | None = None
    sam_top1: dict[Any, dict] | None = None
    bags: dict[Any, Any] | None = None
    predictions: dict[Any, list[dict]] | None = None


def _rle(ann: dict | None, h: int, w: int) -> dict | None:
    if not ann or not ann.get("segmentation"):
        return None
    try:
        return segmentation_to_rle(ann["segmentation"], h, w)
    except Exception:  # an unreadable mask is its own finding, not a crash of the review
        return None


def _iou(a: dict | None, b: dict | None) -> float | None:
    if a is None or b is None:
        return None
    return float(rle_iou([a], [b])[0, 0])


def shape_signals(mask: np.ndarray, point: Any, box_xywh: Any = None) -> dict[str, float]:
    """``tiny``, ``fragmented`` and ``point_outside`` of one ``H×W`` mask (``point`` = (x, y) or
    None; ``box_xywh``: the mask's tight COCO box when known, which saves a pass over the image)."""
    if box_xywh is None:
        ys, xs = np.nonzero(mask)
        box_xywh = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] if len(xs) else [0, 0, 0, 0]
    x0, y0, bw, bh = (int(round(float(v))) for v in box_xywh)
    crop = mask[y0:y0 + bh, x0:x0 + bw].astype(np.uint8)
    area = int(crop.sum())
    out = {"tiny": float(min(max(1.0 - math.sqrt(area) / 32.0, 0.0), 1.0))}
    if area:
        n, _, stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8)
        largest = int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else area
        out["fragmented"] = 1.0 - largest / area
    if isinstance(point, (list, tuple)) and len(point) == 2:
        x, y = int(math.floor(float(point[0]))), int(math.floor(float(point[1])))
        inside = 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x])
        out["point_outside"] = 0.0 if inside else 1.0
    return out


def _refine_iters(ann: dict) -> float | None:
    sap = ann.get("sap") if isinstance(ann.get("sap"), dict) else {}
    iters = sap.get("refine_iters", ann.get("refine_iters"))
    limit = sap.get("refine_max_iters", ann.get("refine_max_iters", 5))
    if isinstance(iters, (int, float)) and isinstance(limit, (int, float)) and limit > 0:
        return float(min(max(iters / limit, 0.0), 1.0))
    return None


def annotation_signals(ann: dict, h: int, w: int, ctx: Context) -> tuple[dict[str, float], dict | None]:
    """The signals of one annotation and the runner-up's RLE (None when unknown).

    Locked annotations (a person's corrections) get no signals: they are done.
    """
    if is_locked(ann):
        return {}, None
    sap = ann.get("sap") if isinstance(ann.get("sap"), dict) else {}
    rle = _rle(ann, h, w)
    out: dict[str, float] = {}
    bag = (ctx.bags or {}).get(ann["id"])
    index = sap.get("proposal_index")
    if bag is not None and isinstance(index, int) and 0 <= index < len(bag):
        out["sam_iou"] = 1.0 - float(bag.scores[index])
        if not math.isnan(float(bag.stability[index])):
            out["stability"] = 1.0 - float(bag.stability[index])
    elif sap.get("method") == "sam-top1" and isinstance(ann.get("score"), (int, float)):
        out["sam_iou"] = 1.0 - float(ann["score"])
    if isinstance(sap.get("margin"), (int, float)):
        out["margin"] = 1.0 - float(min(max(sap["margin"], 0.0), 1.0))
    selected = (ctx.selected or {}).get(ann["id"])
    refined = isinstance(ann.get("refine_iou"), (int, float))
    if refined:
        out["refine_iou"] = 1.0 - float(ann["refine_iou"])
        iou = _iou(_rle(selected, h, w), rle)
        if iou is not None:
            out["refine_change"] = 1.0 - iou
    if (it := _refine_iters(ann)) is not None:
        out["refine_iters"] = it
    top1 = (ctx.sam_top1 or {}).get(ann["id"])
    iou = _iou(_rle(top1, h, w), _rle(selected, h, w) if selected is not None else rle)
    if iou is not None:
        out["stage_disagree"] = 1.0 - iou
    if ctx.predictions is not None and rle is not None:
        preds = [p for p in ctx.predictions.get(ann["image_id"], []) if p.get("category_id") == ann.get("category_id")]
        rles = [r for r in (_rle(p, h, w) for p in preds) if r is not None]
        out["model_disagree"] = 1.0 - (float(rle_iou([rle], rles).max()) if rles else 0.0)
    if rle is not None:
        out.update(shape_signals(decode_rle(rle), ann.get("point"), rle_to_bbox_xywh(rle)))
    runner = None
    alts = ann.get("alternatives")
    if alts:
        runner = _rle({"segmentation": alts[0]}, h, w)
    elif bag is not None and len(sap.get("order") or []) > 1:
        runner = bag.rles[int(sap["order"][1])]
    return {k: round(v, 5) for k, v in out.items()}, runner
