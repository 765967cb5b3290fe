"""Distance maps of coarse masks: the 3×3 chamfer transform of the official code, or exact EDT.

SAMRefiner's points and Gaussian come from distance transforms. The official code uses
FastGeodis ``generalised_geodesic2d(ones, mask, 1e10, 0.0, 2)``, which is *not* the Euclidean
distance: starting from ``1e10`` on the seeds' complement and 0 on the seeds, each of two
iterations runs four raster passes (top→down and bottom→up over rows, then left→right and
right→left over columns); in a pass a pixel takes the minimum of its value and the three
neighbours of the previous row (column) plus 1 (straight) or √2 (diagonal), in float32. The
image border is not background. :func:`chamfer_passes` repeats those passes operation by
operation in float32 NumPy, so the maxima — and their frequent ties — are FastGeodis's exactly
(tests/test_refine_golden.py), without a compiled dependency.

Both transforms are computed on the tight box grown by one pixel only, which leaves every value
the official code reads unchanged: for the interior transform every pixel outside is background,
a seed of value 0 that nothing updates; for the exterior one all seeds (the object's pixels) lie
in the box, and a path that leaves the box is at least 2√2 − 2 longer than one inside, far above
float32 rounding.

Conventions: masks ``H×W`` (non-zero = object); boxes ``(x0, y0, x1, y1)`` with inclusive max.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

DISTANCES = ("chamfer", "euclidean")
SQRT2 = np.float32(np.sqrt(np.float32(2.0)))
ONE = np.float32(1.0)
FAR = np.float32(1e10)  # the official code's initial value on non-seed pixels (v = 1e10)


@dataclass
class DistanceMaps:
    """Distance maps of one non-empty mask.

    Attributes:
        box: tight box ``(x0, y0, x1, y1)``, inclusive max (SAM's ``batched_mask_to_box``).
        interior: distance of each object pixel to the background, 0 on background, on rows
            ``origin[1]…`` and columns ``origin[0]…`` of the image.
        origin: ``(x, y)`` of ``interior[0, 0]``.
        exterior: distance of each background pixel to the object, 0 on the object, over the
            tight box (``(y1 − y0 + 1)×(x1 − x0 + 1)``).
    """

    box: tuple[int, int, int, int]
    interior: np.ndarray
    origin: tuple[int, int]
    exterior: np.ndarray


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of a mask's pixels (inclusive max), None when it is empty."""
    ys = np.flatnonzero(np.any(mask, axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(np.any(mask, axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def chamfer_passes(dist: np.ndarray, valid: np.ndarray | None = None, iterations: int = 2) -> np.ndarray:
    """FastGeodis's raster passes (λ = 0, unit image), in place, on a batch of maps.

    Args:
        dist: ``N×H×W`` float32 initial distances (0 on seeds, ``FAR`` elsewhere).
        valid: ``N×H×W`` bool or None (all valid); pixels outside (padding of smaller maps in
            a batch) are never written and must hold ``inf``, so they act as beyond the border.
        iterations: FastGeodis's ``iter`` (2 in SAMRefiner).

    Returns:
        ``dist``.
    """
    for _ in range(iterations):
        for arr, ok in ((dist, valid), (dist.swapaxes(1, 2), None if valid is None else valid.swapaxes(1, 2))):
            rows, width = arr.shape[1], arr.shape[2]
            near = np.empty((arr.shape[0], width), np.float32)
            diag = np.empty((arr.shape[0], max(width - 2, 0)), np.float32)
            for order, step in ((range(1, rows), -1), (range(rows - 2, -1, -1), 1)):
                for r in order:
                    prev = arr[:, r + step]
                    np.add(prev, ONE, out=near)
                    if width > 2:  # min(a + √2, b + √2) == min(a, b) + √2 in float32 too
                        np.minimum(prev[:, :-2], prev[:, 2:], out=diag)
                        diag += SQRT2
                        np.minimum(near[:, 1:-1], diag, out=near[:, 1:-1])
                    if width > 1:
                        np.minimum(near[:, :1], prev[:, 1:2] + SQRT2, out=near[:, :1])
                        np.minimum(near[:, -1:], prev[:, -2:-1] + SQRT2, out=near[:, -1:])
                    if ok is None:
                        np.minimum(arr[:, r], near, out=arr[:, r])
                    else:
                        np.minimum(arr[:, r], near, out=arr[:, r], where=ok[:, r])
    return dist


def chamfer_maps(masks: Sequence[np.ndarray]) -> list[DistanceMaps]:
    """:class:`DistanceMaps` of non-empty masks by the official chamfer transform.

    Both maps of a mask are computed together on its tight box grown by one pixel (clipped to
    the image); the exterior map is then cut to the tight box.
    """
    out = []
    for m in masks:
        m = np.asarray(m, dtype=bool)
        box = tight_box(m)
        if box is None:
            raise ValueError("distance maps need a non-empty mask")
        x0, y0, x1, y1 = box
        h, w = m.shape
        iy0, ix0 = max(y0 - 1, 0), max(x0 - 1, 0)
        crop = m[iy0:min(y1 + 2, h), ix0:min(x1 + 2, w)]
        dist = np.empty((2,) + crop.shape, np.float32)
        dist[0] = np.where(crop, FAR, np.float32(0))
        dist[1] = np.where(crop, np.float32(0), FAR)
        chamfer_passes(dist)
        ey, ex = y0 - iy0, x0 - ix0
        out.append(DistanceMaps(box, dist[0], (ix0, iy0), dist[1, ey:ey + y1 - y0 + 1, ex:ex + x1 - x0 + 1]))
    return out


def euclidean_maps(masks: Sequence[np.ndarray]) -> list[DistanceMaps]:
    """:class:`DistanceMaps` by exact Euclidean transforms; the image border counts as
    background for the interior map (an object cut by the border gets its point inside)."""
    out = []
    for m in masks:
        m = np.asarray(m, dtype=bool)
        box = tight_box(m)
        if box is None:
            raise ValueError("distance maps need a non-empty mask")
        x0, y0, x1, y1 = box
        crop = m[y0:y1 + 1, x0:x1 + 1]
        interior = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
        exterior = ndimage.distance_transform_edt(~crop) if not crop.all() else np.zeros(crop.shape)
        out.append(DistanceMaps(box, interior, (x0, y0), exterior))
    return out


DISTANCE_MAPS = {"chamfer": chamfer_maps, "euclidean": euclidean_maps}


def distance_maps(masks: Sequence[np.ndarray], kind: str) -> list[DistanceMaps]:
    """:class:`DistanceMaps` of each mask by the transform named ``kind`` (:data:`DISTANCES`)."""
    try:
        fn = DISTANCE_MAPS[kind]
    except KeyError:
        raise ValueError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}") from None
    return fn(masks)


def first_argmax_xy(values: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the first maximum of a 2-D array in row-major order."""
    y, x = divmod(int(np.argmax(values)), values.shape[1])
    return x, y
