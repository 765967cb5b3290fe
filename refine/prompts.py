"""Prompts mined from a coarse mask: distance-guided points and the tight box (pure NumPy).

SAMRefiner's observation: the pixel of a coarse mask farthest from its background is almost
always on the object even when the mask's outline is wrong, and the background pixel of the box
farthest from the mask is almost always off it. Both come from Euclidean distance transforms.

Conventions: masks are ``H×W`` (non-zero = foreground); points are ``(x, y)`` integer pixel
indices (SAM's prompt encoder adds the half-pixel shift itself); boxes are ``XYXY`` with an
exclusive right/bottom edge, as everywhere in ``sap``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

NEGATIVE_FALLBACKS = ("omit", "origin")


def interior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every foreground pixel to the nearest background pixel.

    The image border counts as background (the mask is zero-padded by one pixel first), so an
    object cut by the border gets its positive point inside the image, not on the edge.

    Args:
        mask: ``H×W`` mask.

    Returns:
        ``H×W`` float64 distances, 0 on background.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def exterior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every background pixel to the nearest foreground pixel (``H×W``).

    An empty mask gives all zeros.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.float64)
    return ndimage.distance_transform_edt(~mask)


def _first_argmax_xy(values: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the first maximum of an ``H×W`` array in row-major order."""
    flat = int(np.argmax(values))  # NumPy returns the first occurrence
    y, x = divmod(flat, values.shape[1])
    return x, y


def _crop_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the mask's tight box, or None when it is empty."""
    ys = np.flatnonzero(np.any(mask, axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(np.any(mask, axis=0))
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def interior_distance_crop(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """:func:`interior_distance` on the tight-box crop of a non-empty mask.

    Every pixel around the crop is background or the image border, so the crop's distances are
    exactly those of the whole image.

    Returns:
        ``(dist, (y0, y1, x0, x1))``: the ``(y1−y0)×(x1−x0)`` distances and the crop's rows/cols.
    """
    crop = _crop_box(np.asarray(mask))
    if crop is None:
        raise ValueError("the mask is empty")
    y0, y1, x0, x1 = crop
    return interior_distance(np.asarray(mask)[y0:y1, x0:x1]), crop


def positive_point(mask: np.ndarray,
                   dist_crop: tuple[np.ndarray, tuple[int, int, int, int]] | None = None
                   ) -> tuple[int, int]:
    """The foreground pixel farthest from the background (first maximum in row-major order).

    Args:
        mask: ``H×W`` non-empty mask.
        dist_crop: its :func:`interior_distance_crop`, if already computed.

    Returns:
        ``(x, y)`` pixel indices.

    Raises:
        ValueError: the mask is empty.
    """
    dist, (y0, _, x0, _) = interior_distance_crop(mask) if dist_crop is None else dist_crop
    x, y = _first_argmax_xy(dist)  # row-major order within the crop is that of the image
    return x + x0, y + y0


def tight_box(mask: np.ndarray) -> np.ndarray:
    """Tight ``XYXY`` box (exclusive right/bottom) of a non-empty ``H×W`` mask, float64 ``(4,)``."""
    ys = np.flatnonzero(np.any(mask, axis=1))
    xs = np.flatnonzero(np.any(mask, axis=0))
    if ys.size == 0:
        raise ValueError("tight_box needs a non-empty mask")
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def negative_point(mask: np.ndarray, box: np.ndarray | None = None,
                   fallback: str = "omit") -> tuple[int, int] | None:
    """The background pixel inside the box farthest from the object.

    Args:
        mask: ``H×W`` non-empty mask.
        box: ``XYXY`` box (exclusive right/bottom) to search in; the tight box if None.
        fallback: what to return when the box holds no background pixel (the mask fills its
            box): ``"omit"`` → None (the default, as ALGORITHMS.md prefers), ``"origin"`` →
            pixel ``(0, 0)`` as SAMRefiner's public code does.

    Returns:
        ``(x, y)`` pixel indices, or None.
    """
    if fallback not in NEGATIVE_FALLBACKS:
        raise ValueError(f"fallback must be one of {NEGATIVE_FALLBACKS}, got {fallback!r}")
    mask = np.asarray(mask, dtype=bool)
    tight = _crop_box(mask)
    if tight is None:
        raise ValueError("negative_point needs a non-empty mask")
    h, w = mask.shape
    if box is None:
        by0, by1, bx0, bx1 = tight
    else:
        bx0, by0 = max(int(box[0]), 0), max(int(box[1]), 0)
        bx1, by1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    # Work on the crop holding both the box and the whole mask: distances to the nearest
    # foreground pixel are then exact.
    y0, y1 = min(by0, tight[0]), max(by1, tight[1])
    x0, x1 = min(bx0, tight[2]), max(bx1, tight[3])
    sub = mask[y0:y1, x0:x1]
    candidates = np.zeros_like(sub)
    candidates[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] = True
    candidates &= ~sub
    if not candidates.any():
        return None if fallback == "omit" else (0, 0)
    x, y = _first_argmax_xy(np.where(candidates, exterior_distance(sub), -1.0))
    return x + x0, y + y0


def box_center_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel at the centre of the tight box: the naive point the paper compares against.

    Returns ``(x, y)`` pixel indices (``floor`` of the box centre).
    """
    x1, y1, x2, y2 = tight_box(mask)
    return int((x1 + x2 - 1) // 2), int((y1 + y2 - 1) // 2)
