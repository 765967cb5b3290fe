"""COCO mask AP through pycocotools' ``COCOeval`` (the glue every stage that scores a model shares).

AP values are in percent (0–100); masks may be polygons or RLE on both sides.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from .coco import load_coco_json
from .errors import InputError
from .rle import rle_area, rle_to_bbox_xywh, segmentation_to_rle

AP_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _gt_for_cocoeval(gt: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``gt`` that pycocotools' ``COCO`` accepts (``area``/``iscrowd`` filled in)."""
    heights = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt["images"]}
    anns = []
    for ann in gt.get("annotations", []):
        if "segmentation" not in ann or ann["segmentation"] in (None, [], {}):
            raise InputError(f"ground-truth annotation {ann.get('id')} has no mask (segmentation)")
        a = dict(ann)
        h, w = heights[a["image_id"]]
        try:
            rle = segmentation_to_rle(a["segmentation"], h, w)
        except InputError as e:
            raise InputError(f"ground-truth annotation {ann.get('id')} of image {ann.get('image_id')}: {e}") from None
        a["segmentation"] = rle
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(rle_area(rle))
        if "bbox" not in a:
            a["bbox"] = rle_to_bbox_xywh(rle)
        anns.append(a)
    cats = gt.get("categories") or [{"id": c} for c in sorted({a["category_id"] for a in anns})]
    return {
        "info": gt.get("info", {}),
        "images": gt["images"],
        "annotations": anns,
        "categories": cats,
    }


def load_gt(gt: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """``gt`` itself, or the COCO dataset at that path (structure-checked)."""
    return load_coco_json(gt) if isinstance(gt, (str, os.PathLike)) else gt


def coco_mask_ap(gt: dict | str | Path, results: list[dict], source: str = "the predictions") -> dict[str, float]:
    """COCO mask AP family of ``results`` against ``gt`` through pycocotools' ``COCOeval``.

    Args:
        gt: a COCO dataset (dict or path to its JSON) whose annotations have masks (polygon or
            RLE).
        results: COCO result dicts ``{"image_id", "category_id", "segmentation": RLE, "score"}``.
            Results on images absent from ``gt`` are ignored (predicting on a larger folder than
            the ground truth covers is fine); an empty list gives all zeros.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in percent (0–100). A value COCOeval
        cannot compute (no ground truth of that size) is reported as 0.

    Raises:
        InputError: ground truth without masks, a malformed result (no finite ``score``, a
            category absent from the ground truth's, a bad mask: named by ``source`` and index),
            or results of which none is on an image of ``gt``.
    """
    gt = load_gt(gt)
    zeros = {k: 0.0 for k in AP_KEYS}
    if not results or not gt.get("annotations"):
        return zeros
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = {im["id"] for im in gt["images"]}
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt["images"]}
    known_cats = {c["id"] for c in gt.get("categories") or []} or {a.get("category_id") for a in gt["annotations"]}
    dets = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "segmentation", "score"} <= r.keys():
            raise InputError(f"{source}: result {i} is not a COCO result: it needs image_id, category_id, "
                             "segmentation and score")
        if r["image_id"] not in image_ids:
            continue
        score = r["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score or abs(score) == float("inf"):
            raise InputError(f"{source}: result {i} (image {r['image_id']}) has the score {score!r}, not a number")
        if r["category_id"] not in known_cats:
            raise InputError(f"{source}: result {i} (image {r['image_id']}) has category {r['category_id']!r}, "
                             "absent from the ground truth's categories")
        h, w = sizes[r["image_id"]]
        try:
            rle = segmentation_to_rle(r["segmentation"], h, w)
        except InputError as e:
            raise InputError(f"{source}: result {i} (image {r['image_id']}): {e}") from None
        dets.append(
            {
                "image_id": r["image_id"],
                "category_id": r["category_id"],
                "segmentation": {"size": rle["size"], "counts": rle["counts"]},
                "score": float(score),
            }
        )
    if not dets:
        raise InputError("no prediction is on an image of the ground truth; are the files from the same dataset?")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = _gt_for_cocoeval(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats[:6]
    return {k: (float(v) * 100.0 if v >= 0 else 0.0) for k, v in zip(AP_KEYS, stats)}
