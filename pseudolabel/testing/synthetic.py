"""Synthetic proposal bags made from ground-truth masks, for tests and benchmarks.

Each point gets 6 proposals in SAPNet's layout (3 of the ``point`` kind, then 3 of
``point_box``), drawn from its object's true mask M the way SAM tends to err:

* ``point``: a part of M (M cut by a half-plane near the point), M itself, and M merged with
  its nearest same-class neighbour (else its nearest neighbour of any class; M with a wide
  background band only when it is alone in the image);
* ``point_box``: a part of M (M inside a box of half its size around the point), M slightly
  eroded, and M with a background band (M dilated).

SAM-like predicted IoUs favour the parts, so SAM's top-1 is usually a part. Everything is a
function of the seed and the annotation id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pseudolabel.core.bags import Bag
from pseudolabel.core.rle import decode_rle, encode_masks, masks_to_boxes_xyxy, rle_area, segmentation_to_rle

KINDS = ("point", "point", "point", "point_box", "point_box", "point_box")
RANKS = (0, 1, 2, 0, 1, 2)
LABELS = ("part_cut", "whole", "merged", "part_box", "whole_eroded", "background")
# SAM-like predicted IoU ranges per proposal: parts score highest.
SCORE_RANGES = ((0.93, 0.99), (0.85, 0.93), (0.80, 0.90), (0.90, 0.97), (0.84, 0.92), (0.78, 0.88))


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def _part_cut(mask: np.ndarray, point: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """M on one side of a random line a little behind the point (the side holding the point)."""
    ys, xs = np.nonzero(mask)
    extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    theta = rng.uniform(0, 2 * np.pi)
    n = np.array([np.cos(theta), np.sin(theta)])
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    side = (xx + 0.5 - point[0]) * n[0] + (yy + 0.5 - point[1]) * n[1] >= -0.15 * extent
    part = mask & side
    area = mask.sum()
    if part.sum() < 0.1 * area or part.sum() > 0.8 * area:  # retry through the centroid
        c = _centroid(mask)
        part = mask & ((xx + 0.5 - c[0]) * n[0] + (yy + 0.5 - c[1]) * n[1] >= 0)
    return part if part.any() else mask


def _part_box(mask: np.ndarray, point: np.ndarray) -> np.ndarray:
    """M inside a box centred on the point, half the size of M's box."""
    ys, xs = np.nonzero(mask)
    hw, hh = (xs.max() - xs.min() + 1) / 4, (ys.max() - ys.min() + 1) / 4
    x1, x2 = int(max(0, point[0] - hw)), int(np.ceil(point[0] + hw))
    y1, y2 = int(max(0, point[1] - hh)), int(np.ceil(point[1] + hh))
    part = np.zeros_like(mask)
    part[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
    return part if part.any() else mask


def object_proposals(mask: np.ndarray, point: tuple[float, float], neighbour: np.ndarray | None,
                     rng: np.random.Generator) -> np.ndarray:
    """The 6 synthetic proposals (``6×H×W`` bool) of one object, in :data:`LABELS` order."""
    mask = mask.astype(bool)
    pt = np.asarray(point, dtype=np.float64)
    size = np.sqrt(mask.sum())
    band = _disk(max(3, 0.12 * size))
    dilated = cv2.dilate(mask.astype(np.uint8), band).astype(bool)
    if neighbour is not None:
        merged = mask | neighbour.astype(bool)
    else:
        merged = cv2.dilate(mask.astype(np.uint8), _disk(max(6, 0.3 * size))).astype(bool)
    eroded = cv2.erode(mask.astype(np.uint8), _disk(1)).astype(bool)
    eroded = eroded if eroded.any() else mask
    return np.stack([_part_cut(mask, pt, rng), mask, merged, _part_box(mask, pt), eroded, dilated])


def synthetic_bags(gt: dict[str, Any], points: dict[str, Any], seed: int = 0) -> dict[int, list[Bag]]:
    """Bags for every point of ``points`` whose annotation has a mask in ``gt``.

    Args:
        gt: ground-truth COCO (masks; matched to the points by annotation id).
        points: a point file (``point: [x, y]`` per annotation, e.g. from
            :func:`pseudolabel.core.points.derive_points`).
        seed: the random source, with the annotation id.

    Returns:
        Bags by image id, 6 proposals each (SAPNet's layout, see the module docstring).
    """
    images = {img["id"]: img for img in gt["images"]}
    gt_anns = {a["id"]: a for a in gt["annotations"]}
    by_image: dict[int, list[dict]] = {}
    for a in points["annotations"]:
        if a["id"] in gt_anns and not gt_anns[a["id"]].get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    out: dict[int, list[Bag]] = {}
    for image_id, pts in by_image.items():
        img = images[image_id]
        h, w = int(img["height"]), int(img["width"])
        masks = {a["id"]: decode_rle(segmentation_to_rle(gt_anns[a["id"]]["segmentation"], h, w)).astype(bool)
                 for a in pts}
        centres = {k: _centroid(m) for k, m in masks.items() if m.any()}
        bags = []
        for a in pts:
            mask = masks[a["id"]]
            if not mask.any():
                continue
            others = [b for b in pts if b["id"] != a["id"] and b["id"] in centres]
            same = [b["id"] for b in others if b["category_id"] == a["category_id"]]
            neighbour = None
            if same or others:  # SAM's larger answer takes in a neighbour, of the same class if any
                near = min(same or [b["id"] for b in others],
                           key=lambda k: float(np.linalg.norm(centres[k] - centres[a["id"]])))
                neighbour = masks[near]
            rng = np.random.default_rng([seed, int(a["id"])])
            props = object_proposals(mask, tuple(a["point"]), neighbour, rng)
            scores = [rng.uniform(lo, hi) for lo, hi in SCORE_RANGES]
            bags.append(Bag(ann_id=int(a["id"]), image_id=int(image_id), category_id=int(a["category_id"]),
                            point=(float(a["point"][0]), float(a["point"][1])),
                            boxes=masks_to_boxes_xyxy(props), rles=encode_masks(props), scores=scores,
                            kinds=list(KINDS), ranks=list(RANKS)))
        out[image_id] = bags
    return out


def write_bags_cache(cache_dir: str | os.PathLike, points: dict[str, Any], bags: dict[int, list[Bag]],
                     images_dir: str | os.PathLike | None = None) -> Path:
    """Store bags as a `sap proposals` cache (one shard), as if SAM had made them.

    Every point of an image with bags is stored; points without a bag get no proposals.
    """
    from pseudolabel.core.cache import ShardWriter, shard_filename
    from pseudolabel.core.images import file_sha256
    from pseudolabel.core.points import collect_points

    by_image, _ = collect_points(points)
    cache_dir = Path(cache_dir)
    writer = ShardWriter(cache_dir / shard_filename(0, 1), {"synthetic": True, "prompt_kinds": ["point", "point_box"]},
                         overwrite=True)
    try:
        bag_of = {b.ann_id: b for bs in bags.values() for b in bs}
        for img in points["images"]:
            if img["id"] not in bags:
                continue
            path = Path(images_dir) / img["file_name"] if images_dir else None
            rows = []
            for p in by_image.get(img["id"], []):
                bag = bag_of.get(p.ann_id)
                for k in range(len(bag) if bag is not None else 0):
                    rle = bag.rles[k]
                    x1, y1, x2, y2 = bag.boxes[k]
                    rows.append((bag.ann_id, bag.image_id, ["point", "point_box"].index(bag.kinds[k]),
                                 bag.kinds[k], int(bag.ranks[k]), rle["counts"], rle["size"][0], rle["size"][1],
                                 float(bag.scores[k]), 1.0, float(x1), float(y1), float(x2 - x1), float(y2 - y1),
                                 rle_area(rle)))
            writer.write_image({"image_id": img["id"], "file_name": img["file_name"],
                                "sha256": file_sha256(path) if path and path.is_file() else None,
                                "width": img["width"], "height": img["height"]},
                               by_image.get(img["id"], []), rows)
    finally:
        writer.close()
    return cache_dir
