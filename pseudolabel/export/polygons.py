"""Masks to polygons, pure geometry: outlines, holes bridged into their outline, parts joined.

Conventions: a mask is ``H×W`` (non-zero = foreground); a ring is an ``N×2`` float array of
``(x, y)`` vertices in pixel coordinates where pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``
(COCO's convention), not closed (the last vertex is not the first repeated). Outlines follow the
outer edges of the boundary pixels, so a polygon rasterised by pycocotools or by
``cv2.fillPoly`` covers the same pixels as the mask up to the simplification ``tolerance``.

* :func:`mask_rings` — every part's outline and its holes, simplified (Douglas-Peucker);
* :func:`bridge` — one ring that holds a second one, joined by a zero-width cut at their
  closest vertices (a hole inside an outline, or a second part): under the even-odd fill rule
  (pycocotools, ``cv2.fillPoly``) the cut covers nothing;
* :func:`single_ring` — a whole object as one ring (YOLO-seg has one polygon per object);
* :func:`rings_iou` — IoU between a mask and polygons rasterised by pycocotools.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as mask_utils


@dataclass
class Part:
    """One connected part of a mask: its outline and the outlines of its holes (``N×2`` rings)."""

    outline: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)


def mask_rings(mask: np.ndarray, tolerance: float = 1.0, min_vertices: int = 3) -> tuple[list[Part], int, int]:
    """The parts of ``mask`` with their holes, each simplified to ``tolerance`` pixels.

    Outlines are traced on the mask upsampled 2× (so a 1-pixel line keeps an area) and mapped
    back onto the pixel edges (:func:`_edge_coords`).

    Returns:
        ``(parts, dropped_parts, dropped_holes)``: rings with fewer than ``min_vertices``
        vertices after simplification are dropped and counted.
    """
    m = np.ascontiguousarray(mask.astype(np.uint8))
    if not m.any():
        return [], 0, 0
    up = np.pad(np.repeat(np.repeat(m, 2, axis=0), 2, axis=1), 1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return [], 0, 0
    hierarchy = hierarchy[0]
    parts: list[Part] = []
    index: dict[int, int] = {}
    dropped_parts = dropped_holes = 0
    for i, c in enumerate(contours):
        if hierarchy[i][3] < 0:  # an outer contour
            ring = _ring(c, tolerance)
            if len(ring) < min_vertices:
                dropped_parts += 1
                continue
            index[i] = len(parts)
            parts.append(Part(ring))
    for i, c in enumerate(contours):
        parent = hierarchy[i][3]
        if parent >= 0:
            ring = _ring(c, tolerance)
            if parent not in index or len(ring) < min_vertices:
                dropped_holes += 1
                continue
            parts[index[parent]].holes.append(ring)
    return parts, dropped_parts, dropped_holes


def _edge_coords(c: np.ndarray) -> np.ndarray:
    """Contour pixels of the 2×-upsampled, 1-padded mask → original coordinates on pixel edges.

    Foreground comes in 2×2 blocks, so an upsampled pixel ``u`` (pad removed) is the first half
    of original pixel ``u // 2`` when even (its edge towards the outside, or towards a hole, is
    ``u / 2``) and the second half when odd (edge ``(u + 1) / 2``); outlines and hole outlines
    alike, since both are traced on the foreground.
    """
    p = c.reshape(-1, 2).astype(np.float64) - 1.0
    return np.where(p % 2 == 0, p / 2.0, (p + 1.0) / 2.0)


def _ring(c: np.ndarray, tolerance: float) -> np.ndarray:
    ring = _dedupe(_edge_coords(c))
    if tolerance > 0 and len(ring) >= 3:
        ring = cv2.approxPolyDP(ring.reshape(-1, 1, 2).astype(np.float32), tolerance, True)
        ring = _dedupe(ring.reshape(-1, 2).astype(np.float64))
    return ring


def _dedupe(ring: np.ndarray) -> np.ndarray:
    """Drop consecutive repeated vertices (and a last one equal to the first)."""
    if len(ring) == 0:
        return ring
    keep = np.ones(len(ring), dtype=bool)
    keep[1:] = np.any(ring[1:] != ring[:-1], axis=1)
    ring = ring[keep]
    if len(ring) > 1 and np.all(ring[0] == ring[-1]):
        ring = ring[:-1]
    return ring


def bridge(ring: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``ring`` with ``other`` spliced in at their closest pair of vertices (a zero-width cut).

    The result walks ``ring`` to vertex ``i``, jumps to ``other[j]``, goes once round ``other``
    back to ``other[j]``, and returns to ``ring[i]``: ``len(ring) + len(other) + 2`` vertices.
    """
    d = ((ring[:, None, :] - other[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    loop = np.concatenate([other[j:], other[:j], other[j:j + 1]])
    return np.concatenate([ring[:i + 1], loop, ring[i:]])


def part_ring(part: Part) -> np.ndarray:
    """One ring for a part: its outline with every hole bridged in."""
    ring = part.outline
    for hole in part.holes:
        ring = bridge(ring, hole)
    return ring


def single_ring(parts: list[Part]) -> np.ndarray | None:
    """The whole object as one ring: holes bridged into their part, parts joined to the largest."""
    if not parts:
        return None
    rings = sorted((part_ring(p) for p in parts), key=lambda r: -abs(_area(r)))
    out = rings[0]
    for r in rings[1:]:
        out = bridge(out, r)
    return out


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def rings_to_rle(rings: list[np.ndarray], height: int, width: int) -> dict:
    """Rasterise flat-listed rings with pycocotools (union of the rings, each even-odd)."""
    polys = [r.reshape(-1).tolist() for r in rings if len(r) >= 3]
    if not polys:
        return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))


def rings_iou(mask: np.ndarray, rings: list[np.ndarray]) -> float:
    """Mask IoU between ``mask`` (``H×W``) and ``rings`` rasterised by pycocotools."""
    h, w = mask.shape
    ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return float(mask_utils.iou([rings_to_rle(rings, h, w)], [ref], [0])[0, 0])
