"""Pseudo-labels (one mask per ground-truth object, same annotation ``id``) against ground truth.

:func:`evaluate_pseudo` matches by id and reports mean mask IoU, mean box IoU, mean boundary IoU,
the share of masks with IoU ≥ 0.5 and ≥ 0.75, overall, by COCO size and by category;
:func:`evaluate_predictions` wraps COCO mask AP for model predictions; :func:`image_disagreement`
ranks images by how much two files disagree. IoUs in ``[0, 1]``, AP in percent.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pseudolabel.core.cocoeval import coco_mask_ap, load_gt
from pseudolabel.core.errors import InputError
from pseudolabel.core.progress import progress
from pseudolabel.core.rle import (box_iou_xyxy, decode_rle, rle_area, rle_iou, rle_to_bbox_xywh, segmentation_to_rle,
                                  xywh_to_xyxy)

from .masks import BOUNDARY_DILATION_RATIO, SIZE_BUCKETS, boundary_iou, size_bucket


def _pseudo_annotations(pseudo: dict | list[dict], source: str = "the pseudo-labels") -> list[dict]:
    """The annotation list of a COCO dict or a plain list, each with an ``id``."""
    if isinstance(pseudo, dict):
        anns = pseudo.get("annotations")
        if not isinstance(anns, list):
            raise InputError(f"{source} are not a COCO dataset: they need an 'annotations' list")
    elif isinstance(pseudo, list):
        anns = pseudo
    else:
        raise InputError(f"{source} must be a COCO dataset or a list of annotations")
    seen: set = set()
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or "id" not in a:
            raise InputError(
                f"{source}: entry {i} has no annotation 'id' to match against the ground truth "
                "(model predictions without ids are measured with --pred)"
            )
        if a["id"] in seen:
            raise InputError(f"{source}: annotation id {a['id']} appears twice")
        seen.add(a["id"])
    return anns


def _has_mask(ann: dict) -> bool:
    seg = ann.get("segmentation")
    return seg is not None and seg != [] and seg != {}


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _summary(records: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    n = len(records)
    if n == 0:  # nothing to average: None (JSON null), shown as "-"
        return {"count": 0, "mask_miou": None, "box_miou": None, "boundary_miou": None,
                "iou50": None, "iou75": None}
    m = np.array([r["mask_iou"] for r in records])
    return {
        "count": n,
        "mask_miou": float(m.mean()),
        "box_miou": float(np.mean([r["box_iou"] for r in records])),
        "boundary_miou": _mean_or_none([r["boundary_iou"] for r in records]),
        "iou50": float((m >= 0.5).mean()),
        "iou75": float((m >= 0.75).mean()),
    }


def annotation_ious(
    gt: dict, pseudo: dict | list[dict], boundary: bool = True,
    ratio: float = BOUNDARY_DILATION_RATIO, source: str = "the pseudo-labels",
    gt_source: str = "the ground truth",
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Per-annotation IoUs of ``pseudo`` against ``gt``, matched by annotation ``id``.

    Args:
        gt: COCO dataset with masks (polygon or RLE). Crowd annotations (``iscrowd=1``) are
            skipped; so are annotations without a mask (counted).
        pseudo: a COCO dataset or a list of annotation dicts, each with the ``id`` of the ground
            truth annotation it labels and a ``segmentation`` (polygon or RLE) on the same image.
        boundary: compute boundary IoU too (needs decoding; the other two work on RLE).
        ratio: boundary width as a share of the image diagonal.

    Returns:
        ``(records, counts)``: one record per matched annotation, in ground-truth order,
        ``{"id", "image_id", "category_id", "area", "size", "mask_iou", "box_iou",
        "boundary_iou"}`` (area and size from the ground truth's ``area``, else its mask); box
        IoU compares the tight boxes of both masks; ``boundary_iou`` is None when
        ``boundary`` is off. ``counts`` has ``gt`` (evaluated ground
        truth objects), ``matched``, ``gt_without_pseudo``, ``pseudo_without_gt``,
        ``pseudo_without_mask``, ``crowd_skipped``, ``gt_without_mask``.

    Raises:
        InputError: no ground-truth mask at all, no pseudo-label id matching a ground-truth id,
            a pseudo-label on another image than its ground truth, or a mask of the wrong size.
    """
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
        raise InputError("the ground truth is not a COCO dataset: it needs an 'images' list")
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt["images"]}
    anns = _pseudo_annotations(pseudo, source)
    pairs, counts = _match_by_id(gt, anns, source)
    records = [_pair_record(g, p, sizes[g["image_id"]], boundary, ratio, source, gt_source)
               for g, p in progress(pairs, desc="eval", total=len(pairs), unit="ann")]
    counts["matched"] = len(records)
    return records, counts


def _match_by_id(gt: dict, anns: list[dict], source: str) -> tuple[list[tuple[dict, dict]], dict[str, int]]:
    """The (ground truth, pseudo-label) pairs to score, in ground-truth order, and the counts of
    what was skipped (keys as :func:`annotation_ious`'s ``counts``; ``matched`` still 0).

    Raises InputError as :func:`annotation_ious` does, for all but a mask of the wrong size.
    """
    by_id = {a["id"]: a for a in anns}
    counts = dict.fromkeys(
        ("gt", "matched", "gt_without_pseudo", "pseudo_without_gt", "pseudo_without_mask",
         "crowd_skipped", "gt_without_mask"), 0)
    gt_ids: set = set()
    pairs = []
    for g in gt.get("annotations", []):
        gt_ids.add(g["id"])
        if g.get("iscrowd", 0):
            counts["crowd_skipped"] += 1
            continue
        if not _has_mask(g):
            counts["gt_without_mask"] += 1
            continue
        counts["gt"] += 1
        p = by_id.get(g["id"])
        if p is None:
            counts["gt_without_pseudo"] += 1
            continue
        if not _has_mask(p):
            counts["pseudo_without_mask"] += 1
            counts["gt_without_pseudo"] += 1
            continue
        if "image_id" in p and p["image_id"] != g["image_id"]:
            raise InputError(
                f"{source}: annotation {g['id']} is on image {p['image_id']} but the ground "
                f"truth puts it on image {g['image_id']}; are the files from the same dataset?"
            )
        pairs.append((g, p))
    counts["pseudo_without_gt"] = sum(1 for a in anns if a["id"] not in gt_ids)
    if counts["gt"] == 0:
        raise InputError("the ground truth has no (non-crowd) annotation with a mask to compare against")
    if not pairs and counts["pseudo_without_mask"] == 0:
        raise InputError(
            f"no annotation id of {source} matches a ground-truth annotation id; "
            "are the files from the same dataset?"
        )
    return pairs, counts


def _pair_record(g: dict, p: dict, size: tuple[int, int], boundary: bool, ratio: float, source: str,
                 gt_source: str) -> dict[str, Any]:
    """One record of :func:`annotation_ious` for a ground-truth annotation ``g`` and its
    pseudo-label ``p`` on an image of ``size`` (height, width)."""
    h, w = size
    try:
        rg = segmentation_to_rle(g["segmentation"], h, w)
    except InputError as e:
        raise InputError(f"{gt_source}: annotation {g['id']} of image {g['image_id']}: {e}") from None
    try:
        rp = segmentation_to_rle(p["segmentation"], h, w)
    except InputError as e:
        raise InputError(f"{source}: annotation {p['id']} of image {g['image_id']}: {e}") from None
    miou = float(rle_iou([rg], [rp])[0, 0])
    bg = xywh_to_xyxy(np.array(rle_to_bbox_xywh(rg)))
    bp = xywh_to_xyxy(np.array(rle_to_bbox_xywh(rp)))
    biou = float(box_iou_xyxy(bg, bp)[0, 0])
    bdy = boundary_iou(decode_rle(rg), decode_rle(rp), ratio=ratio) if boundary else None
    area = float(g["area"]) if isinstance(g.get("area"), (int, float)) else float(rle_area(rg))
    return {
        "id": g["id"], "image_id": g["image_id"], "category_id": g.get("category_id"),
        "area": area, "size": size_bucket(area),
        "mask_iou": miou, "box_iou": biou, "boundary_iou": bdy,
    }


def evaluate_pseudo(
    gt: dict, pseudo: dict | list[dict], boundary: bool = True,
    ratio: float = BOUNDARY_DILATION_RATIO, source: str = "the pseudo-labels",
    gt_source: str = "the ground truth",
) -> dict[str, Any]:
    """Pseudo-labels against ground truth, matched by annotation id.

    See :func:`annotation_ious` for the inputs and the matching rules. Means are over the
    matched annotations (a ground-truth object without a pseudo-label is counted in
    ``counts["gt_without_pseudo"]``, not scored 0; ``coverage`` gives the matched share).

    Returns:
        ``{"kind": "pseudo", "overall": S, "by_size": {"small": S, "medium": S, "large": S},
        "by_category": {category_id: S}, "counts": {...}, "coverage": float,
        "boundary_dilation_ratio": ratio, "per_annotation": [record, ...]}`` where ``S`` is
        ``{"count", "mask_miou", "box_miou", "boundary_miou", "iou50", "iou75"}`` (IoUs and
        shares in ``[0, 1]``; ``None`` where ``count`` is 0, and ``boundary_miou`` ``None``
        when ``boundary`` is off).
    """
    records, counts = annotation_ious(gt, pseudo, boundary=boundary, ratio=ratio, source=source,
                                      gt_source=gt_source)
    by_size = {s: _summary([r for r in records if r["size"] == s]) for s in SIZE_BUCKETS}
    by_cat: dict[Any, list] = defaultdict(list)
    for r in records:
        by_cat[r["category_id"]].append(r)
    return {
        "kind": "pseudo",
        "overall": _summary(records),
        "by_size": by_size,
        "by_category": {str(c): _summary(rs) for c, rs in sorted(by_cat.items(), key=lambda kv: str(kv[0]))},
        "counts": counts,
        "coverage": counts["matched"] / counts["gt"] if counts["gt"] else 0.0,
        "boundary_dilation_ratio": ratio,
        "per_annotation": records,
    }


def evaluate_predictions(gt: dict | str | Path, results: list[dict], source: str = "the predictions") -> dict[str, Any]:
    """Model predictions against ground truth: ``{"kind": "pred", "ap": coco_mask_ap(...),
    "counts": {"results", "images"}}``."""
    gt = load_gt(gt)
    return {
        "kind": "pred",
        "ap": coco_mask_ap(gt, results, source),
        "counts": {"results": len(results), "images": len({r.get("image_id") for r in results})},
    }


def image_disagreement(a: dict, b: dict) -> list[dict[str, Any]]:
    """Per image, how much two COCO files with masks agree, matched by annotation id.

    Every annotation id of ``a`` (crowd excluded) scores its mask IoU with ``b``'s annotation of
    the same id, 0 where ``b`` has none; ids only in ``b`` score 0 too.

    Returns:
        ``[{"image_id", "mean_iou", "n"}, ...]`` for images with at least one annotation,
        sorted by ``mean_iou`` ascending (most disagreement first; ties by image id).

    Raises:
        InputError: no annotation id of ``b`` matches one of ``a``.
    """
    records, _ = annotation_ious(a, b, boundary=False, source="the second file")
    a_ids = {x["id"] for x in a.get("annotations", []) if not x.get("iscrowd", 0)}
    per_image: dict[Any, list[float]] = defaultdict(list)
    scored = set()
    for r in records:
        per_image[r["image_id"]].append(r["mask_iou"])
        scored.add(r["id"])
    for x in a.get("annotations", []):
        if x["id"] in a_ids and x["id"] not in scored:
            per_image[x["image_id"]].append(0.0)
    a_all = {x["id"] for x in a.get("annotations", [])}
    a_images = {im["id"] for im in a["images"]}
    for y in _pseudo_annotations(b, "the second file"):
        if y["id"] not in a_all and y.get("image_id") in a_images:
            per_image[y["image_id"]].append(0.0)
    rows = [{"image_id": i, "mean_iou": float(np.mean(v)), "n": len(v)} for i, v in per_image.items()]
    rows.sort(key=lambda r: (r["mean_iou"], str(r["image_id"])))
    return rows
