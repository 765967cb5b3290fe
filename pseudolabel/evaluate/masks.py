"""Mask-to-mask measures that need pixels: COCO size buckets and boundary IoU (Cheng et al. 2021).

Conventions: masks ``H×W`` (bool or 0/1); boxes ``XYXY`` with exclusive max; IoUs in ``[0, 1]``.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from pseudolabel.core.rle import mask_to_box_xyxy

SIZE_BUCKETS: tuple[str, ...] = ("small", "medium", "large")
SMALL_AREA = 32**2
MEDIUM_AREA = 96**2
BOUNDARY_DILATION_RATIO = 0.02


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
