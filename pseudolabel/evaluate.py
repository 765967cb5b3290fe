"""Measuring masks against ground truth.

Two kinds of result are measured:

* **pseudo-labels** (one mask per ground-truth object, same annotation ``id``):
  :func:`evaluate_pseudo` matches them by id and reports mean mask IoU, mean box IoU, mean
  boundary IoU (Cheng et al. 2021), the share of masks with IoU ≥ 0.5 and ≥ 0.75, overall and by
  the COCO size of the ground-truth object;
* **model predictions** (COCO result dicts with scores): :func:`coco_mask_ap` runs pycocotools'
  ``COCOeval`` with ``iouType="segm"`` and returns the mask AP family.

:func:`compare` and :func:`format_table` put several results side by side.

Conventions: masks ``H×W``; boxes ``XYXY`` unless named ``xywh`` (COCO ``[x, y, w, h]``);
all IoUs in ``[0, 1]``, AP values in percent (0–100).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError
from .rle import (
    box_iou_xyxy,
    decode_rle,
    mask_to_box_xyxy,
    rle_area,
    rle_iou,
    rle_to_bbox_xywh,
    segmentation_to_rle,
    xywh_to_xyxy,
)

AP_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SIZE_BUCKETS: tuple[str, ...] = ("small", "medium", "large")
SMALL_AREA = 32**2
MEDIUM_AREA = 96**2
BOUNDARY_DILATION_RATIO = 0.02


# ---- COCO mask AP ---------------------------------------------------------------------------


def _gt_for_cocoeval(gt: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``gt`` that pycocotools' ``COCO`` accepts (``area``/``iscrowd`` filled in)."""
    heights = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt["images"]}
    anns = []
    for ann in gt.get("annotations", []):
        if "segmentation" not in ann or ann["segmentation"] in (None, [], {}):
            raise InputError(f"ground-truth annotation {ann.get('id')} has no mask (segmentation)")
        a = dict(ann)
        h, w = heights[a["image_id"]]
        rle = segmentation_to_rle(a["segmentation"], h, w)
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


def _load_gt(gt: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(gt, (str, os.PathLike)):
        from .coco import load_coco_json

        return load_coco_json(gt)
    return gt


def coco_mask_ap(gt: dict | str | Path, results: list[dict]) -> dict[str, float]:
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
        InputError: ground truth without masks, a malformed result, or results of which none
            is on an image of ``gt``.
    """
    gt = _load_gt(gt)
    zeros = {k: 0.0 for k in AP_KEYS}
    if not results or not gt.get("annotations"):
        return zeros
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_ids = {im["id"] for im in gt["images"]}
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt["images"]}
    dets = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "segmentation"} <= r.keys():
            raise InputError(
                f"result {i} is not a COCO result: it needs image_id, category_id and segmentation"
            )
        if r["image_id"] not in image_ids:
            continue
        h, w = sizes[r["image_id"]]
        rle = segmentation_to_rle(r["segmentation"], h, w)
        dets.append(
            {
                "image_id": r["image_id"],
                "category_id": r["category_id"],
                "segmentation": {"size": rle["size"], "counts": rle["counts"]},
                "score": float(r.get("score", 1.0)),
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


# ---- pseudo-labels against ground truth -----------------------------------------------------


def size_bucket(area: float) -> str:
    """COCO size of an object of ``area`` pixels: ``small`` (< 32²), ``medium`` (< 96²), ``large``."""
    if area < SMALL_AREA:
        return "small"
    if area < MEDIUM_AREA:
        return "medium"
    return "large"


def boundary_dilation(height: int, width: int, ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """Boundary width ``d`` in pixels: ``ratio`` × image diagonal, rounded, at least 1."""
    return max(1, int(round(ratio * math.hypot(height, width))))


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Inner boundary band of an ``H×W`` mask: the mask minus its erosion (Cheng et al. 2021).

    A foreground pixel belongs to the band when some pixel within Chebyshev distance
    ``dilation`` of it is background or lies outside the image (so objects touching the image
    border have a band along it). Equals ``dilation`` erosions by a 3×3 square.

    Returns:
        ``H×W`` bool array.
    """
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.ndim != 2:
        raise ValueError(f"mask_boundary expects an H×W mask, got shape {m.shape}")
    k = 2 * int(dilation) + 1
    eroded = cv2.erode(
        m, np.ones((k, k), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return (m > 0) & (eroded == 0)


def _union_crop(boxes_xyxy: Iterable[np.ndarray], margin: int, height: int, width: int) -> tuple[slice, slice]:
    """Rows/cols slices covering the union of ``XYXY`` boxes grown by ``margin``, clipped."""
    b = np.asarray(list(boxes_xyxy), dtype=np.float64)
    x1 = max(0, int(b[:, 0].min()) - margin)
    y1 = max(0, int(b[:, 1].min()) - margin)
    x2 = min(width, int(math.ceil(b[:, 2].max())) + margin)
    y2 = min(height, int(math.ceil(b[:, 3].max())) + margin)
    return slice(y1, max(y1, y2)), slice(x1, max(x1, x2))


def boundary_iou(
    gt_mask: np.ndarray, pred_mask: np.ndarray, dilation: int | None = None,
    ratio: float = BOUNDARY_DILATION_RATIO,
) -> float:
    """Boundary IoU of two ``H×W`` masks (Cheng et al. 2021).

    IoU of the two inner boundary bands (:func:`mask_boundary`) of width ``dilation`` pixels,
    by default :func:`boundary_dilation` (2 % of the image diagonal, at least 1). 0 when both
    bands are empty.
    """
    if gt_mask.shape != pred_mask.shape:
        raise ValueError(f"mask shapes differ: {gt_mask.shape} vs {pred_mask.shape}")
    h, w = gt_mask.shape
    d = boundary_dilation(h, w, ratio) if dilation is None else int(dilation)
    g = gt_mask.astype(bool)
    p = pred_mask.astype(bool)
    boxes = [mask_to_box_xyxy(m) for m in (g, p) if m.any()]
    if not boxes:
        return 0.0
    # Everything outside the union box (+ margin) is background, inside and outside the image,
    # so eroding the crop with a zero border gives the same bands as eroding the whole image.
    rows, cols = _union_crop(boxes, d + 1, h, w)
    bg = mask_boundary(g[rows, cols], d)
    bp = mask_boundary(p[rows, cols], d)
    union = np.logical_or(bg, bp).sum()
    return float(np.logical_and(bg, bp).sum() / union) if union else 0.0


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
    by_id = {a["id"]: a for a in anns}
    counts = dict.fromkeys(
        ("gt", "matched", "gt_without_pseudo", "pseudo_without_gt", "pseudo_without_mask",
         "crowd_skipped", "gt_without_mask"), 0)
    gt_ids: set = set()
    records: list[dict[str, Any]] = []
    work = []
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
        work.append((g, p))
    counts["pseudo_without_gt"] = sum(1 for a in anns if a["id"] not in gt_ids)
    if counts["gt"] == 0:
        raise InputError("the ground truth has no (non-crowd) annotation with a mask to compare against")
    if not work and counts["pseudo_without_mask"] == 0:
        raise InputError(
            f"no annotation id of {source} matches a ground-truth annotation id; "
            "are the files from the same dataset?"
        )

    from .progress import progress

    for g, p in progress(work, desc="eval", total=len(work), unit="ann"):
        h, w = sizes[g["image_id"]]
        try:
            rg = segmentation_to_rle(g["segmentation"], h, w)
        except InputError as e:
            raise InputError(f"ground-truth annotation {g['id']}: {e}") from None
        try:
            rp = segmentation_to_rle(p["segmentation"], h, w)
        except InputError as e:
            raise InputError(f"{source}, annotation {p['id']}: {e}") from None
        miou = float(rle_iou([rg], [rp])[0, 0])
        bg = xywh_to_xyxy(np.array(rle_to_bbox_xywh(rg)))
        bp = xywh_to_xyxy(np.array(rle_to_bbox_xywh(rp)))
        biou = float(box_iou_xyxy(bg, bp)[0, 0])
        bdy = boundary_iou(decode_rle(rg), decode_rle(rp), ratio=ratio) if boundary else None
        area = float(g["area"]) if isinstance(g.get("area"), (int, float)) else float(rle_area(rg))
        records.append({
            "id": g["id"], "image_id": g["image_id"], "category_id": g.get("category_id"),
            "area": area, "size": size_bucket(area),
            "mask_iou": miou, "box_iou": biou, "boundary_iou": bdy,
        })
    counts["matched"] = len(records)
    return records, counts


def evaluate_pseudo(
    gt: dict, pseudo: dict | list[dict], boundary: bool = True,
    ratio: float = BOUNDARY_DILATION_RATIO,
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
    records, counts = annotation_ious(gt, pseudo, boundary=boundary, ratio=ratio)
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


def evaluate_predictions(gt: dict | str | Path, results: list[dict]) -> dict[str, Any]:
    """Model predictions against ground truth: ``{"kind": "pred", "ap": coco_mask_ap(...),
    "counts": {"results", "images"}}``."""
    gt = _load_gt(gt)
    return {
        "kind": "pred",
        "ap": coco_mask_ap(gt, results),
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


# ---- comparison tables ----------------------------------------------------------------------

# (row label, path into the metrics dict, formatter kind)
_PSEUDO_ROWS: tuple[tuple[str, tuple, str], ...] = (
    ("matched", ("counts", "matched"), "int"),
    ("GT without pseudo", ("counts", "gt_without_pseudo"), "int"),
    ("pseudo without GT", ("counts", "pseudo_without_gt"), "int"),
    ("mask mIoU", ("overall", "mask_miou"), "pct"),
    ("box mIoU", ("overall", "box_miou"), "pct"),
    ("boundary mIoU", ("overall", "boundary_miou"), "pct"),
    ("IoU >= 0.5", ("overall", "iou50"), "pct"),
    ("IoU >= 0.75", ("overall", "iou75"), "pct"),
    *((f"mask mIoU {s}", ("by_size", s, "mask_miou"), "pct") for s in SIZE_BUCKETS),
    *((f"boundary mIoU {s}", ("by_size", s, "boundary_miou"), "pct") for s in SIZE_BUCKETS),
)
_PRED_ROWS: tuple[tuple[str, tuple, str], ...] = (
    ("results", ("counts", "results"), "int"),
    *((k, ("ap", k), "ap") for k in AP_KEYS),
)


def _dig(metrics: Mapping[str, Any], path: tuple) -> Any:
    cur: Any = metrics
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


def compare(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Put several metric dicts side by side.

    Args:
        results: name → metrics from :func:`evaluate_pseudo` or :func:`evaluate_predictions`
            (kinds may be mixed; a row a result lacks is left empty).

    Returns:
        ``{"columns": [name, ...], "rows": [{"metric": label, "values": [v | None, ...],
        "format": "int" | "pct" | "ap", "best": index | None}, ...]}``. Values are as stored
        (IoUs in ``[0, 1]``, AP in percent); ``best`` marks the highest value of a quality row
        when there are two or more results.
    """
    names = list(results)
    kinds = {m.get("kind") for m in results.values()}
    spec: list[tuple[str, tuple, str]] = []
    if "pseudo" in kinds:
        spec += list(_PSEUDO_ROWS)
    if "pred" in kinds:
        spec += list(_PRED_ROWS)
    rows = []
    for label, path, fmt in spec:
        values = [_dig(results[n], path) for n in names]
        vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
        if not vals:
            continue
        best = None
        if fmt != "int" and len(names) > 1 and len(set(vals)) > 1:
            best = values.index(max(vals))
        rows.append({"metric": label, "values": values, "format": fmt, "best": best})
    return {"columns": names, "rows": rows}


def _cell(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if fmt == "int":
        return str(int(v))
    if fmt == "pct":
        return f"{100.0 * v:.1f}"
    return f"{v:.1f}"


def format_table(table: Mapping[str, Any]) -> str:
    """Plain-text rendering of :func:`compare`'s table: IoUs and shares in percent with one
    decimal, AP in percent, the best value of a row marked with ``*``."""
    header = ["metric", *table["columns"]]
    body = []
    for row in table["rows"]:
        cells = [_cell(v, row["format"]) for v in row["values"]]
        if row["best"] is not None:
            cells[row["best"]] += "*"
        body.append([row["metric"], *cells])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


# ---- files -----------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} is not valid JSON ({e})") from None


def load_pseudo_file(path: str | os.PathLike) -> dict | list[dict]:
    """Read pseudo-labels: a COCO dataset (structure-checked) or a JSON list of annotations."""
    data = _read_json(Path(path), "the pseudo-label file")
    if isinstance(data, dict):
        from .coco import load_coco_json

        return load_coco_json(path)
    if isinstance(data, list):
        return data
    raise InputError(f"{path} holds neither a COCO dataset nor a list of annotations")


def load_results_file(path: str | os.PathLike) -> list[dict]:
    """Read model predictions: a COCO results list, or a COCO dataset whose annotations carry
    scores."""
    data = _read_json(Path(path), "the prediction file")
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise InputError(f"{path} is not a COCO results list")
    return data


def _unique_names(paths: Sequence[Path], given: Sequence[str]) -> list[str]:
    if len(given) > len(paths):
        raise InputError(f"{len(given)} --name values given for {len(paths)} results")
    names = list(given) + [Path(p).stem for p in paths[len(given):]]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def run_eval(
    gt_path: str | os.PathLike,
    pseudo_paths: Sequence[str | os.PathLike] = (),
    pred_paths: Sequence[str | os.PathLike] = (),
    names: Sequence[str] = (),
    out: str | os.PathLike | None = None,
    per_annotation: bool = False,
    boundary: bool = True,
) -> tuple[str, dict[str, Any]]:
    """What ``sap eval`` does: measure every file, build the table, write the JSON atomically.

    Names go to the results in order (every pseudo-label file, then every prediction file);
    missing names default to the file stem.

    Returns:
        ``(table_text, report)`` with ``report = {"gt": str, "results": {name: metrics}}``;
        each metrics dict also holds its ``source`` path (``per_annotation`` only if asked).
    """
    from .coco import load_coco_json
    from .io import write_json_atomic

    pseudo_paths = [Path(p) for p in pseudo_paths]
    pred_paths = [Path(p) for p in pred_paths]
    if not pseudo_paths and not pred_paths:
        raise InputError("give at least one --pseudo or --pred file to measure")
    gt = load_coco_json(gt_path)
    all_paths = [*pseudo_paths, *pred_paths]
    col_names = _unique_names(all_paths, list(names))
    results: dict[str, dict[str, Any]] = {}
    for i, (n, p) in enumerate(zip(col_names, all_paths)):
        if i < len(pseudo_paths):
            m = evaluate_pseudo(gt, load_pseudo_file(p), boundary=boundary)
            if not per_annotation:
                m.pop("per_annotation")
        else:
            m = evaluate_predictions(gt, load_results_file(p))
        m["source"] = str(p)
        results[n] = m
    report = {"gt": str(gt_path), "results": results}
    text = format_table(compare(results))
    if out is not None:
        write_json_atomic(out, report, indent=1)
    return text, report
