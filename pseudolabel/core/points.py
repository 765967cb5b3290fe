"""Point annotations: reading them from COCO JSON and deriving them from full masks.

A point is ``(x, y)`` in continuous original-image pixel coordinates: pixel ``(col, row)``
covers ``[col, col+1) × [row, row+1)``, so the pixel under a point is ``(floor x, floor y)``.

Accepted conventions per annotation: ``point: [x, y]`` (P2BNet/SAPNet) and detectron2
PointSup's ``point_coords: [[x, y], ...]`` with ``point_labels: [1|0, ...]``. An object may carry
several clicks: :attr:`PointAnn.clicks` keeps all of them (positive 1, negative 0) and
:attr:`PointAnn.x`/``y`` is the first positive one, the click SAPNet's network uses. The
canonical point file (``sap points``) writes ``point`` and, for several clicks, ``point_coords``
and ``point_labels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .coco import annotation_rle, annotations_by_image, check_categories
from .errors import InputError
from .rle import decode_rle


@dataclass(frozen=True)
class PointAnn:
    """One annotated object: annotation id, image id, category id, its first positive click
    ``(x, y)`` and, when it has more than that one click, every click as ``(x, y, label)``
    (label 1 positive, 0 negative; ``()`` = the single positive click ``(x, y)``)."""

    ann_id: int
    image_id: int
    category_id: int
    x: float
    y: float
    clicks: tuple[tuple[float, float, int], ...] = ()

    def all_clicks(self) -> tuple[tuple[float, float, int], ...]:
        """Every click ``(x, y, label)`` in annotation order (at least the first positive)."""
        return self.clicks or ((self.x, self.y, 1),)


def _xy(value: Any, ann: dict[str, Any], field: str) -> tuple[float, float]:
    """A ``[x, y]`` pair of real numbers (not strings, not booleans), as floats."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise InputError(f"annotation {ann.get('id')}: {field!r} must be [x, y] as two numbers, not {value!r}")
    return float(value[0]), float(value[1])


def read_point(ann: dict[str, Any]) -> tuple[float, float] | None:
    """The ``(x, y)`` point of an annotation, or None if it carries none.

    Raises:
        InputError: a point that is not two numbers (a string such as ``"12,30"`` included).
    """
    point = ann.get("point")
    if point is not None:
        return _xy(point, ann, "point")
    coords = ann.get("point_coords")
    if coords:
        if not isinstance(coords, (list, tuple)):
            raise InputError(f"annotation {ann.get('id')}: 'point_coords' must be a list of [x, y]")
        labels = ann.get("point_labels") or [1] * len(coords)
        if not isinstance(labels, (list, tuple)) or len(labels) != len(coords):
            raise InputError(f"annotation {ann.get('id')}: 'point_labels' must have one label per point")
        for xy, label in zip(coords, labels):
            if label not in (0, 1) or isinstance(label, bool):
                raise InputError(f"annotation {ann.get('id')}: point labels are 1 or 0, not {label!r}")
            if label == 1:
                return _xy(xy, ann, "point_coords")
    return None


def read_clicks(ann: dict[str, Any]) -> list[tuple[float, float, int]] | None:
    """Every click of an annotation as ``(x, y, label)``, or None if it carries none.

    PointSup's ``point_coords``/``point_labels`` give all clicks (labels default to positive);
    otherwise ``point`` is the one positive click.

    Raises:
        InputError: a malformed point or label, or an object whose clicks are all negative.
    """
    coords = ann.get("point_coords")
    if not coords:
        p = read_point(ann)
        return None if p is None else [(p[0], p[1], 1)]
    if not isinstance(coords, (list, tuple)):
        raise InputError(f"annotation {ann.get('id')}: 'point_coords' must be a list of [x, y]")
    labels = ann.get("point_labels") or [1] * len(coords)
    if not isinstance(labels, (list, tuple)) or len(labels) != len(coords):
        raise InputError(f"annotation {ann.get('id')}: 'point_labels' must have one label per point")
    bad = [label for label in labels if label not in (0, 1) or isinstance(label, bool)]
    if bad:
        raise InputError(f"annotation {ann.get('id')}: point labels are 1 or 0, not {bad[0]!r}")
    clicks = [(*_xy(xy, ann, "point_coords"), int(label)) for xy, label in zip(coords, labels)]
    if not any(label == 1 for *_, label in clicks):
        raise InputError(f"annotation {ann.get('id')} has only negative clicks ({len(clicks)}); "
                         "an object needs at least one positive click")
    return clicks


def make_point(ann_id: int, image_id: int, category_id: int, clicks: list[tuple[float, float, int]],
               point: tuple[float, float] | None = None) -> PointAnn:
    """A :class:`PointAnn` from an object's clicks ``(x, y, label)`` (at least one positive);
    its ``(x, y)`` is ``point`` when the annotation gives one, else the first positive click."""
    x, y = point or next((cx, cy) for cx, cy, label in clicks if label == 1)
    multi = tuple((float(cx), float(cy), int(lab)) for cx, cy, lab in clicks) if len(clicks) > 1 else ()
    return PointAnn(int(ann_id), int(image_id), int(category_id), float(x), float(y), multi)


def point_annotation(p: PointAnn) -> dict[str, Any]:
    """The canonical point file's annotation of ``p``: ``point`` and, for several clicks,
    PointSup's ``point_coords``/``point_labels``."""
    ann: dict[str, Any] = {"id": p.ann_id, "image_id": p.image_id, "category_id": p.category_id,
                           "point": [p.x, p.y], "iscrowd": 0}
    if p.clicks:
        ann["point_coords"] = [[cx, cy] for cx, cy, _ in p.clicks]
        ann["point_labels"] = [label for *_, label in p.clicks]
    return ann


@dataclass
class PointReport:
    """What :func:`collect_points` kept and skipped."""

    points: int = 0
    images: int = 0
    crowd_skipped: int = 0


def collect_points(coco: dict[str, Any], source: str = "the point file"
                   ) -> tuple[dict[int, list[PointAnn]], PointReport]:
    """Read every non-crowd annotation's point, grouped by image id (every image present).

    Raises:
        InputError: an annotation has no point, a point lies outside its image, or a category
            id is not in the categories list.
    """
    check_categories(coco, source)
    images = {img["id"]: img for img in coco["images"]}
    report = PointReport(images=len(images))
    out: dict[int, list[PointAnn]] = {}
    missing: list[int] = []
    for image_id, anns in annotations_by_image(coco).items():
        img = images[image_id]
        w, h = float(img["width"]), float(img["height"])
        pts = []
        for ann in anns:
            if ann.get("iscrowd", 0):
                report.crowd_skipped += 1
                continue
            try:
                clicks = read_clicks(ann)
            except InputError as e:
                raise InputError(f"{source}: {e}") from None
            if clicks is None:
                missing.append(ann["id"])
                continue
            point = read_point(ann)
            for x, y, _ in clicks if point is None else [*clicks, (*point, 1)]:
                if not np.isfinite([x, y]).all():
                    raise InputError(f"{source}: the point ({x:g}, {y:g}) of annotation {ann['id']} is not a "
                                     f"finite number (NaN or infinity)")
                if not (0.0 <= x <= w and 0.0 <= y <= h):
                    raise InputError(
                        f"{source}: the point ({x:g}, {y:g}) of annotation {ann['id']} lies outside its "
                        f"{int(w)}×{int(h)} image {image_id}")
            pts.append(make_point(ann["id"], image_id, ann["category_id"], clicks, point))
        out[image_id] = pts
        report.points += len(pts)
    if missing:
        raise InputError(
            f"{source}: {len(missing)} annotation(s) have no point (first: id {missing[0]}); each "
            "needs 'point': [x, y] or PointSup's 'point_coords'/'point_labels'")
    return out, report


# ---- deriving points from masks ----------------------------------------------------------------

def _pixel_centres(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.stack([cols + 0.5, rows + 0.5], axis=1)


def point_center(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """Centre of the mask pixel farthest from the background (first maximum in row-major order)."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(c) + 0.5, float(r) + 0.5


def point_uniform(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A point uniform over the mask: a uniform mask pixel plus uniform sub-pixel offset."""
    rows, cols = np.nonzero(mask)
    i = rng.integers(len(rows))
    return float(cols[i] + rng.random()), float(rows[i] + rng.random())


def point_qc(mask: np.ndarray, rng: np.random.Generator, sigma: float = 0.25,
             ellipse: float = 0.25, cap: float = 96.0) -> tuple[float, float]:
    """P2BNet's quasi-centre point.

    A mask pixel drawn with weight ``N(0, sigma²)`` in box-normalised coordinates (the box
    spans [-1, 1] on each axis), restricted to the central ellipse with radii
    ``ellipse·w/2`` and ``ellipse·h/2`` (each capped at ``cap`` px) — or to the whole mask when
    the ellipse holds no mask pixel — then uniform jitter of ±0.5 px around the pixel centre.
    """
    rows, cols = np.nonzero(mask)
    x1, x2 = cols.min(), cols.max() + 1
    y1, y2 = rows.min(), rows.max() + 1
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    half_w, half_h = (x2 - x1) / 2.0, (y2 - y1) / 2.0
    centres = _pixel_centres(rows, cols)
    u = (centres[:, 0] - cx) / half_w
    v = (centres[:, 1] - cy) / half_h
    rx, ry = min(ellipse * half_w, cap), min(ellipse * half_h, cap)
    inside = ((centres[:, 0] - cx) / rx) ** 2 + ((centres[:, 1] - cy) / ry) ** 2 <= 1.0
    if inside.any():
        centres, u, v = centres[inside], u[inside], v[inside]
    weights = np.exp(-(u ** 2 + v ** 2) / (2 * sigma ** 2))
    i = rng.choice(len(centres), p=weights / weights.sum())
    jitter = rng.uniform(-0.5, 0.5, size=2)
    return float(centres[i, 0] + jitter[0]), float(centres[i, 1] + jitter[1])


POINT_MODES: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[float, float]]] = {
    "center": point_center,
    "qc": point_qc,
    "uniform": point_uniform,
}


def derive_points(gt: dict[str, Any], mode: str = "center", seed: int = 0,
                  source: str = "the ground truth") -> tuple[dict[str, Any], dict]:
    """Make a point file from a fully annotated COCO dataset.

    Every non-crowd annotation with a non-empty mask gets ``point: [x, y]`` by ``mode`` (see
    :data:`POINT_MODES`); ids, image ids and categories are kept, masks and boxes are not
    copied. The draw for an annotation depends only on ``(seed, annotation id)``.

    Returns:
        ``(point_coco, counts)`` with counts of points made, crowd and empty masks skipped.
    """
    if mode not in POINT_MODES:
        raise InputError(f"unknown point mode {mode!r}; choose one of {', '.join(POINT_MODES)}")
    fn = POINT_MODES[mode]
    images = {img["id"]: img for img in gt["images"]}
    anns_out = []
    counts = {"points": 0, "crowd_skipped": 0, "empty_skipped": 0}
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            counts["crowd_skipped"] += 1
            continue
        if "segmentation" not in ann:
            raise InputError(f"annotation {ann['id']} has no 'segmentation' to derive a point from")
        img = images[ann["image_id"]]
        mask = decode_rle(annotation_rle(ann, img, source))
        if not mask.any():
            counts["empty_skipped"] += 1
            continue
        rng = np.random.default_rng([seed, int(ann["id"])])
        x, y = fn(mask, rng)
        anns_out.append({"id": ann["id"], "image_id": ann["image_id"],
                         "category_id": ann["category_id"], "point": [x, y], "iscrowd": 0})
        counts["points"] += 1
    info = dict(gt.get("info") or {})
    info["sap_points"] = {"mode": mode, "seed": seed}
    out = {"info": info, "images": gt["images"], "categories": gt.get("categories", []),
           "annotations": anns_out}
    if "licenses" in gt:
        out["licenses"] = gt["licenses"]
    return out, counts
