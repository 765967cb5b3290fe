"""Split-then-merge (STM): turn one class's semantic mask into object-like regions.

A semantic mask of a class may hold several objects, and one object may be broken into pieces
by the coarse labelling. STM splits the mask into 8-connected components, drops specks, and
merges pieces whose boxes overlap enough and jointly fill their union box (ALGORITHMS.md §4):

    merge i, j  when  box_i + box_j > mu·U  and  (m_i + m_j) / U > min(mu, min(fill_i, fill_j) − 0.1),

with box areas ``box_*``, mask areas ``m_*``, ``U`` the area of the box enclosing both boxes and
``fill = m / box``. Merging is greedy: among all pairs that qualify, the one with the highest
``(m_i + m_j) / U`` merges first (ties: lowest indices), then the test starts over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class Region:
    """A group of components: their pixel count and enclosing ``XYXY`` box (exclusive edge)."""

    labels: list[int]
    area: int
    box: tuple[int, int, int, int]

    @property
    def box_area(self) -> int:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1)


def _union_box(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def should_merge(a: Region, b: Region, mu: float = 0.5) -> tuple[bool, float]:
    """The STM merge test for two regions; also returns ``(m_a + m_b) / U`` for ranking."""
    ux1, uy1, ux2, uy2 = _union_box(a.box, b.box)
    union = (ux2 - ux1) * (uy2 - uy1)
    joint_fill = (a.area + b.area) / union
    fill = min(a.area / a.box_area, b.area / b.box_area)
    ok = (a.box_area + b.box_area) > mu * union and joint_fill > min(mu, fill - 0.1)
    return ok, joint_fill


def split_then_merge(mask: np.ndarray, mu: float = 0.5, min_size: int = 5) -> list[np.ndarray]:
    """Split a binary mask into components and greedily merge the ones that form one object.

    Args:
        mask: ``H×W`` binary mask (one class of a semantic map).
        mu: merge threshold (ALGORITHMS.md: 0.5).
        min_size: components with fewer pixels are dropped (5).

    Returns:
        The regions as ``H×W`` bool masks, ordered by their first pixel in row-major order.
    """
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=EIGHT_CONNECTED)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    slices = ndimage.find_objects(labels)
    regions: list[Region] = []
    for k in range(1, n + 1):
        if areas[k] < min_size:
            continue
        sy, sx = slices[k - 1]
        regions.append(Region([k], int(areas[k]), (sx.start, sy.start, sx.stop, sy.stop)))
    while len(regions) > 1:
        best: tuple[float, int, int] | None = None
        for i in range(len(regions)):
            for j in range(i + 1, len(regions)):
                ok, score = should_merge(regions[i], regions[j], mu)
                if ok and (best is None or score > best[0]):
                    best = (score, i, j)
        if best is None:
            break
        _, i, j = best
        a, b = regions[i], regions[j]
        regions[i] = Region(a.labels + b.labels, a.area + b.area, _union_box(a.box, b.box))
        del regions[j]
    out = [np.isin(labels, r.labels) for r in regions]
    out.sort(key=lambda m: int(np.argmax(m.ravel())))
    return out

def official_split_then_merge(mask: np.ndarray, mu: float = 0.5, min_size: int = 5) -> list[np.ndarray]:
    """Split-then-merge as the official script does it (sem2ins_mask.py ``merge_regions``).

    Differences from :func:`split_then_merge`: components are OpenCV's 8-connected labels (in
    OpenCV's order); a mask of a single component is returned as it is, however small; merging
    is sequential — each region, in label order, absorbs every later region that passes the test
    against its current extent — instead of best pair first; box areas count inclusive pixels
    (``(w + 1)(h + 1)``) but the union area does not (``(x1 − x0)(y1 − y0)``; a zero union area
    always merges).

    Returns:
        The regions as ``H×W`` bool masks, in the order of their region ids.
    """
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, dtype=np.uint8), connectivity=8)
    n -= 1  # label 0 is the background
    if n <= 1:
        return [labels == k for k in range(1, n + 1)]
    area = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    x0, y0 = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    boxes = np.stack([x0, y0, x0 + stats[1:, cv2.CC_STAT_WIDTH] - 1, y0 + stats[1:, cv2.CC_STAT_HEIGHT] - 1], 1)
    region = np.where(area >= min_size, np.arange(n), -1)  # component → region id (-1: dropped)

    def extent(rid: int) -> tuple[np.ndarray, int, int]:
        members = region == rid
        b = boxes[members]
        box = np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])
        return box, int(area[members].sum()), int((box[2] - box[0] + 1) * (box[3] - box[1] + 1))

    for i in range(n):
        ri = region[i]
        if ri < 0:
            continue
        bi, mi, ai = extent(ri)
        for j in range(i + 1, n):
            rj = region[j]
            if rj < 0 or rj == ri:
                continue
            bj, mj, aj = extent(rj)
            union = int((max(bi[2], bj[2]) - min(bi[0], bj[0])) * (max(bi[3], bj[3]) - min(bi[1], bj[1])))
            joint = (mi + mj) / union if union else float("inf")
            if ai + aj > union * mu and joint > min(mu, min(mi / ai, mj / aj) - 0.1):
                region[region == rj] = ri
                bi, mi, ai = extent(ri)
    return [np.isin(labels, np.flatnonzero(region == rid) + 1) for rid in np.unique(region[region >= 0])]


STM_RULES = {"official": official_split_then_merge, "greedy": split_then_merge}
