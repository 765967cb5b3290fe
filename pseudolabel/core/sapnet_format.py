"""The official SAPNet training format, both ways.

The official loader (``CocoFmtDataset._parse_ann_info``, TOV_mmdetection/mmdet/datasets/
cocofmt.py of zhaoyangwei123/SAPNet) reads a COCO file whose annotations carry, instead of one
box and one mask, their SAM proposals:

* ``bbox``: exactly 6 COCO ``[x, y, w, h]`` boxes, the first 3 from the point prompt;
* ``segmentation``: exactly 6 masks (RLE or polygons), in the same order;
* ``true_bbox``: ``[x, y, w, h]`` with ``w, h ≥ 1``; its centre is the point the official
  network uses (PDG distances);
* ``area``: a number > 0 (the loader compares it with 0: a list breaks it);
* ``scores``: SAM's predicted IoUs of the 3 point-prompt proposals (the official data files;
  the code does not read them).

We write all of these (``true_bbox`` is the 1×1 box centred on the point, ``area`` the area of
the first proposal's mask, at least 1) plus ``point: [x, y]``, ``score`` (the predicted IoUs of
all 6 proposals), ``proposal_kinds`` and ``proposal_ranks``, so that a round trip keeps them.
Reading accepts both ``scores`` and ``score``; what is missing is said, never filled silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bags import Bag
from .coco import load_coco_json
from .errors import InputError
from .progress import logger
from .rle import rle_area, segmentation_to_rle, xywh_to_xyxy, xyxy_to_xywh

PROPOSALS = 6          # the official code reshapes every bag to 6 proposals
POINT_PROPOSALS = 3    # the first 3 come from the point prompt (BMS, ``scores``)


def _check_exportable(bag: Bag) -> None:
    if len(bag) != PROPOSALS:
        raise InputError(f"annotation {bag.ann_id} has {len(bag)} proposals; the SAPNet format needs exactly "
                         f"{PROPOSALS} (make them with `sap proposals --prompts point,point_box`)")
    if list(bag.kinds[:POINT_PROPOSALS]) != ["point"] * POINT_PROPOSALS:
        raise InputError(f"annotation {bag.ann_id}: the SAPNet format needs the point prompt's 3 proposals first, "
                         f"not {bag.kinds[:POINT_PROPOSALS]} (use --prompts point,point_box)")


def bags_to_sapnet(coco_points: dict[str, Any], bags: dict[int, list[Bag]]) -> dict[str, Any]:
    """A SAPNet-format COCO dict: the point file's images and categories, one annotation per bag.

    Raises:
        InputError: a bag does not hold exactly 6 proposals, the point prompt's 3 first.
    """
    anns = []
    for image_id in sorted(bags):
        for bag in bags[image_id]:
            _check_exportable(bag)
            x, y = float(bag.point[0]), float(bag.point[1])
            anns.append({
                "id": bag.ann_id, "image_id": bag.image_id, "category_id": bag.category_id,
                "point": [x, y], "true_bbox": [x - 0.5, y - 0.5, 1.0, 1.0], "iscrowd": 0,
                "bbox": [[float(v) for v in b] for b in xyxy_to_xywh(bag.boxes)],
                "segmentation": [dict(r) for r in bag.rles],
                "area": float(max(rle_area(bag.rles[0]), 1)),
                "scores": [float(s) for s in bag.scores[:POINT_PROPOSALS]],
                "score": [float(s) for s in bag.scores],
                "proposal_kinds": list(bag.kinds),
                "proposal_ranks": [int(r) for r in bag.ranks],
            })
    return {"info": {**(coco_points.get("info") or {}), "sap_format": "sapnet-proposals"},
            "images": coco_points["images"], "categories": coco_points.get("categories", []),
            "annotations": anns}


def _default_kinds(k: int) -> tuple[list[str], list[int]]:
    kinds = [("point" if i < 3 else "point_box" if i < 6 else f"prompt{i // 3}") for i in range(k)]
    return kinds, [i % 3 for i in range(k)]


def _scores(ann: dict[str, Any], k: int, path: str | Path) -> tuple[np.ndarray, bool]:
    """The K predicted IoUs (NaN where the file has none) and whether some are missing."""
    if "score" in ann:  # ours: one per proposal
        s = np.asarray(ann["score"], dtype=np.float64).reshape(-1)
    elif "scores" in ann:  # official: the point prompt's proposals
        s = np.asarray(ann["scores"], dtype=np.float64).reshape(-1)
    else:
        return np.full(k, np.nan), True
    if len(s) > k:
        raise InputError(f"{path}: annotation {ann['id']} has {len(s)} scores for {k} proposals")
    return np.concatenate([s, np.full(k - len(s), np.nan)]), len(s) < k


def read_sapnet(path: str | Path) -> dict[int, list[Bag]]:
    """Bags by image id from a SAPNet-format JSON file.

    ``point`` is the annotated point, or (official files without one) the centre of
    ``true_bbox``; ``true_bbox`` is kept on the bag (PDG's point under ``--reference official``).
    Scores come from ``score`` (one per proposal) or ``scores`` (the official 3); proposals
    without one get NaN and a warning says how many bags lack scores.

    Raises:
        InputError: an annotation lacks the proposal lists, its category or any point, or the
            lists differ in length.
    """
    coco = load_coco_json(path)
    images = {im["id"]: im for im in coco["images"]}
    out: dict[int, list[Bag]] = {}
    partial = none = from_true = 0
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        if ann.get("iscrowd", 0):
            continue
        boxes, segs = ann.get("bbox"), ann.get("segmentation")
        if not (isinstance(boxes, list) and boxes and isinstance(boxes[0], (list, tuple))
                and isinstance(segs, list)):
            raise InputError(f"{path}: annotation {ann['id']} is not in the SAPNet proposal format "
                             "('bbox' and 'segmentation' must be lists of proposals)")
        if len(boxes) != len(segs):
            raise InputError(f"{path}: annotation {ann['id']} has {len(boxes)} boxes but {len(segs)} masks")
        if "category_id" not in ann or ann["image_id"] not in images:
            raise InputError(f"{path}: annotation {ann['id']} lacks a category or names an unknown image")
        true_box = None
        if ann.get("true_bbox") is not None:
            true_box = xywh_to_xyxy(np.asarray(ann["true_bbox"], dtype=np.float64).reshape(1, 4))[0]
        point = ann.get("point")
        if point is None:
            if true_box is None:
                raise InputError(f"{path}: annotation {ann['id']} has neither 'point' nor 'true_bbox'")
            point = (true_box[:2] + true_box[2:]) / 2
            from_true += 1
        img = images[ann["image_id"]]
        rles = [segmentation_to_rle(s, img["height"], img["width"]) for s in segs]
        k = len(rles)
        scores, missing = _scores(ann, k, path)
        none += bool(np.isnan(scores).all())
        partial += bool(missing and not np.isnan(scores).all())
        kinds, ranks = _default_kinds(k)
        out.setdefault(ann["image_id"], []).append(Bag(
            ann_id=ann["id"], image_id=ann["image_id"], category_id=ann["category_id"],
            point=(float(point[0]), float(point[1])),
            boxes=xywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)),
            rles=rles, scores=scores, kinds=list(ann.get("proposal_kinds", kinds)),
            ranks=ann.get("proposal_ranks", ranks), true_box=true_box))
    if from_true:
        logger.warning(f"{path}: {from_true} annotations have no 'point'; using the centre of their "
                       "'true_bbox', as the official SAPNet code does")
    if partial:
        logger.warning(f"{path}: {partial} bags have SAM scores for only some proposals (the official "
                       "'scores' covers the point prompt's 3); SAM's top-1 is taken among those")
    if none:
        logger.warning(f"{path}: {none} bags have no SAM scores ('score' or 'scores'); "
                       "--method sam-top1 cannot rank them")
    return out


def export_sapnet(cache_dir: str | Path, points_json: str | Path | None = None) -> dict[str, Any]:
    """The SAPNet-format dict of a cache (images and categories from the point file if given).

    Raises:
        InputError: a bag does not hold exactly 6 proposals (see :func:`bags_to_sapnet`).
    """
    from .cache import CacheReader

    with CacheReader(cache_dir) as reader:
        bags = reader.bags()
        rows = reader.images()
    if points_json is not None:
        base = load_coco_json(points_json)
    else:
        base = {"images": [{"id": r["image_id"], "file_name": r["file_name"], "width": r["width"],
                            "height": r["height"]} for r in rows if r["status"] == "done"],
                "categories": [{"id": c, "name": str(c)} for c in
                               sorted({b.category_id for bs in bags.values() for b in bs})]}
    return bags_to_sapnet(base, bags)
