"""The official SAPNet training format, both ways.

SAPNet's code reads a COCO file whose annotations carry, instead of one box and one mask, the
lists of its SAM proposals: ``bbox`` (K COCO ``[x, y, w, h]`` boxes), ``segmentation`` (K masks),
plus ``point: [x, y]`` and ``score`` (K predicted IoUs). Its MIL code expects K = 6, the first
three from the point prompt. ``sap`` adds ``proposal_kinds`` and ``proposal_ranks`` so that a
round trip keeps them; files without them get ``point`` ×3 then ``point_box`` ×3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bags import Bag
from .cache import CacheReader
from .coco import load_coco_json
from .errors import InputError
from .rle import rle_area, segmentation_to_rle, xywh_to_xyxy, xyxy_to_xywh


def bags_to_sapnet(coco_points: dict[str, Any], bags: dict[int, list[Bag]]) -> dict[str, Any]:
    """A SAPNet-format COCO dict: the point file's images and categories, one annotation per bag."""
    anns = []
    for image_id in sorted(bags):
        for bag in bags[image_id]:
            anns.append({
                "id": bag.ann_id, "image_id": bag.image_id, "category_id": bag.category_id,
                "point": [bag.point[0], bag.point[1]], "iscrowd": 0,
                "bbox": [[float(v) for v in b] for b in xyxy_to_xywh(bag.boxes)],
                "segmentation": [dict(r) for r in bag.rles],
                "area": [rle_area(r) for r in bag.rles],
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


def read_sapnet(path: str | Path) -> dict[int, list[Bag]]:
    """Bags by image id from a SAPNet-format JSON file.

    Raises:
        InputError: an annotation lacks the proposal lists or its point, or the lists differ
            in length.
    """
    coco = load_coco_json(path)
    images = {im["id"]: im for im in coco["images"]}
    out: dict[int, list[Bag]] = {}
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
        point = ann.get("point")
        if point is None:
            raise InputError(f"{path}: annotation {ann['id']} has no 'point'")
        img = images[ann["image_id"]]
        rles = [segmentation_to_rle(s, img["height"], img["width"]) for s in segs]
        k = len(rles)
        scores = ann.get("score", [float("nan")] * k)
        kinds, ranks = _default_kinds(k)
        kinds = ann.get("proposal_kinds", kinds)
        ranks = ann.get("proposal_ranks", ranks)
        out.setdefault(ann["image_id"], []).append(Bag(
            ann_id=ann["id"], image_id=ann["image_id"], category_id=ann["category_id"],
            point=(float(point[0]), float(point[1])),
            boxes=xywh_to_xyxy(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)),
            rles=rles, scores=scores, kinds=list(kinds), ranks=ranks))
    return out


def export_sapnet(cache_dir: str | Path, points_json: str | Path | None = None) -> dict[str, Any]:
    """The SAPNet-format dict of a cache (images and categories from the point file if given)."""
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
