"""Prompts mined from a coarse mask: distance-guided points and the tight box (pure NumPy).

SAMRefiner's observation: the pixel of a coarse mask farthest from its background is almost
always on the object even when the mask's outline is wrong, and the background pixel of the box
farthest from the mask is almost always off it. Both come from the distance maps of
:mod:`refine.distance` (the official chamfer transform or the exact Euclidean one).

Conventions: masks are ``H×W`` (non-zero = foreground); points are ``(x, y)`` integer pixel
indices handed to SAM as they are (SAM's prompt encoder adds the half-pixel shift itself); boxes
are ``(x0, y0, x1, y1)`` with an *inclusive* max, as SAM's ``batched_mask_to_box`` and the
official code make them.
"""

from __future__ import annotations

import numpy as np

from .distance import DistanceMaps, distance_maps, first_argmax_xy, tight_box

NEGATIVE_FALLBACKS = ("origin", "omit")
NEGATIVE_REGIONS = ("box_half_open", "box")

__all__ = ["NEGATIVE_FALLBACKS", "NEGATIVE_REGIONS", "box_center_point", "negative_point",
           "point_of", "positive_point", "tight_box"]


def positive_point(maps: DistanceMaps) -> tuple[int, int]:
    """The object pixel farthest from the background: first maximum in row-major order.

    Returns:
        ``(x, y)`` pixel indices.
    """
    x, y = first_argmax_xy(maps.interior)  # row-major order within a crop is the image's
    return x + maps.origin[0], y + maps.origin[1]


def negative_point(maps: DistanceMaps, region: str = "box_half_open",
                   fallback: str = "origin") -> tuple[int, int] | None:
    """The background pixel of the box farthest from the object (first maximum, row-major).

    Args:
        maps: the mask's distance maps.
        region: ``box_half_open``: the tight box without its last row and column (the official
            code slices ``box[ymin:ymax, xmin:xmax]`` with the inclusive max); ``box``: all of it.
        fallback: when the region holds no background pixel: ``origin`` → pixel ``(0, 0)``
            (the official code: the first maximum of an all-zero map), ``omit`` → None.

    Returns:
        ``(x, y)`` pixel indices, or None.
    """
    if region not in NEGATIVE_REGIONS:
        raise ValueError(f"region must be one of {NEGATIVE_REGIONS}, got {region!r}")
    if fallback not in NEGATIVE_FALLBACKS:
        raise ValueError(f"fallback must be one of {NEGATIVE_FALLBACKS}, got {fallback!r}")
    ext = maps.exterior[:-1, :-1] if region == "box_half_open" else maps.exterior
    if ext.size == 0 or not ext.max() > 0:
        return (0, 0) if fallback == "origin" else None
    x, y = first_argmax_xy(ext)
    return x + maps.box[0], y + maps.box[1]


def point_of(mask: np.ndarray, distance: str = "chamfer") -> tuple[int, int]:
    """:func:`positive_point` of one non-empty mask by the transform ``distance``."""
    return positive_point(distance_maps([mask], distance)[0])


def box_center_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel at the centre of the tight box: the naive point the paper compares against.

    Returns ``(x, y)`` pixel indices (``floor`` of the box centre).
    """
    box = tight_box(np.asarray(mask, dtype=bool))
    if box is None:
        raise ValueError("box_center_point needs a non-empty mask")
    x0, y0, x1, y1 = box
    return (x0 + x1) // 2, (y0 + y1) // 2
