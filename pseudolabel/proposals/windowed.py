"""Proposals of a large image in windows that follow its points (:mod:`pseudolabel.core.windows`).

An image the window rule applies to is cut into the windows its points chose; each window is
encoded once at its own resolution and its points decoded against it, and the masks are placed
back at the image's full size (the cache and every later stage see no difference). Other images
are one job each, the whole image, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pseudolabel.core.points import PointAnn
from pseudolabel.core.windows import Window, WindowRule, layout_windows


@dataclass
class EncodeJob:
    """One encoder input: an image (``window`` None) or one of its windows, with its points.

    Attributes:
        slot: the image's index in its group.
        window: XYXY in image pixels, or None for the whole image.
        points: the points decoded against this input (image coordinates).
    """

    slot: int
    window: Window | None
    points: list[PointAnn]


def plan_jobs(slot: int, hw: tuple[int, int], points: list[PointAnn], rule: WindowRule,
              whole_without_points: bool) -> list[EncodeJob]:
    """The encoder inputs of one ``(H, W)`` image: its windows when ``rule`` applies, else the
    whole image (only if it has points or ``whole_without_points``)."""
    if points and rule.applies(hw):
        xy = np.array([[p.x, p.y] for p in points], dtype=np.float64)
        windows, index = layout_windows(xy, hw, rule.side, rule.halo)
        return [EncodeJob(slot, win, [p for p, i in zip(points, index) if i == k]) for k, win in enumerate(windows)]
    return [EncodeJob(slot, None, points)] if points or whole_without_points else []
