"""Crops around the points for the selector on large images, cut as P2BNet tiles TinyPerson.

SAPNet's network sees each image resized into ``max_size × min_size`` (1333 × 800), so on a large
image a small object shrinks to a few pixels. ``sap select --crops auto|PIXELS`` trains and runs
the selector on tiles of the image instead, each resized like an image (docs/windows.md):

* **Tiles** (P2BNet's ``huicv/corner_dataset``): squares of ``side`` px stepping by
  ``side - overlap`` from ``(0, 0)``; the last row and column are cut at the image's edge.
  ``auto``: ``side`` = the network's short side (``min_size``), so a tile keeps its native
  scale; the overlap is P2BNet's 100 px, at most a quarter of the side.
* **Which points a tile holds**: those at least 2 px inside it (``margin <= x - x0 < w - margin``,
  the same in y). In training a point near an overlap trains in every tile that holds it.
* **Boxes**: each proposal's box is clipped to the tile and moved into its coordinates; a box
  clipped to nothing keeps 1 px (so no box is empty); no proposal is dropped, so a choice's index
  is the index in the point's full-image bag and the output masks are the cache's.
* **Selection**: each point is chosen once, in the tile that holds it where it lies farthest
  from a border (a border on the image's edge does not count: :func:`border_distance`).
* **When**: ``auto`` crops an image that the resize would shrink by more than 1.25× (the
  proposals' ``--windows auto`` factor); ``PIXELS`` crops every image larger than a tile.

Coordinates: points ``(x, y)`` in image pixels; tiles and boxes ``XYXY`` with exclusive
right/bottom edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pseudolabel.core.errors import InputError
from pseudolabel.core.windows import AUTO_FACTOR, Window, border_distance

#: P2BNet's tile overlap (px), capped at a quarter of the tile
OVERLAP = 100
#: a tile holds a point at least this many px inside it (P2BNet's ``min_dis_to_edge``)
MARGIN = 2


@dataclass(frozen=True)
class CropRule:
    """``mode`` ``off``, ``auto`` or ``fixed``; tiles of ``side`` px overlapping by ``overlap``."""

    mode: str
    side: int = 0
    overlap: int = 0
    factor: float = AUTO_FACTOR

    def applies(self, width: int, height: int, scale: float) -> bool:
        """Whether an image is cut into tiles (``scale``: its resize factor into the network)."""
        if self.mode == "auto":
            return scale * self.factor < 1.0
        return self.mode == "fixed" and max(width, height) > self.side


def crop_rule(spec: str | int | None, min_size: int) -> CropRule:
    """Parse ``--crops off|auto|PIXELS`` (``auto``: tiles of ``min_size`` px).

    Raises:
        InputError: a value that is neither ``off``, ``auto`` nor a whole number of at least 32.
    """
    text = str(spec if spec is not None else "off").strip().lower()
    if text == "off":
        return CropRule("off")
    if text == "auto":
        side = int(min_size)
        return CropRule("auto", side, min(OVERLAP, side // 4))
    try:
        side = int(text)
    except ValueError:
        raise InputError(f"--crops must be auto, off or a tile side in pixels, not {spec!r}") from None
    if side < 32:
        raise InputError(f"--crops {side} is too small: a tile must be at least 32 px (the network's stride)")
    return CropRule("fixed", side, min(OVERLAP, side // 4))


def tile_grid(width: int, height: int, side: int, overlap: int) -> list[Window]:
    """P2BNet's tiles of a ``width × height`` image: starts every ``side - overlap`` px from 0
    while inside the image, each ``side`` px or cut at the image's edge; row by row."""
    step = max(side - overlap, 1)
    return [Window(x0, y0, min(x0 + side, width), min(y0 + side, height))
            for y0 in range(0, height, step) for x0 in range(0, width, step)]


def points_inside(xy: np.ndarray, tile: Window, margin: int = MARGIN) -> np.ndarray:
    """``N`` bools: which ``N×2`` ``(x, y)`` points lie at least ``margin`` px inside ``tile``."""
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2) - tile.origin
    h, w = tile.hw
    return (p[:, 0] >= margin) & (p[:, 0] < w - margin) & (p[:, 1] >= margin) & (p[:, 1] < h - margin)


def boxes_in_tile(boxes: np.ndarray, tile: Window) -> np.ndarray:
    """``K×4`` XYXY image boxes clipped to ``tile`` and moved into its coordinates; a box
    clipped to nothing keeps 1 px at the nearest edge (so none is empty)."""
    h, w = tile.hw
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - [tile.x0, tile.y0, tile.x0, tile.y0]
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    for lo, hi, size in ((0, 2, w), (1, 3, h)):
        b[:, hi] = np.maximum(b[:, hi], np.minimum(b[:, lo] + 1, size))
        b[:, lo] = np.minimum(b[:, lo], b[:, hi] - 1)
    return b


def training_tiles(xy: np.ndarray, width: int, height: int, rule: CropRule) -> list[tuple[Window, np.ndarray]]:
    """The tiles an image trains on: every tile that holds a point, with the indexes of the
    points it holds (a point may be in several)."""
    out = []
    for tile in tile_grid(width, height, rule.side, rule.overlap):
        idx = np.flatnonzero(points_inside(xy, tile))
        if len(idx):
            out.append((tile, idx))
    return out


def selection_tiles(xy: np.ndarray, width: int, height: int, rule: CropRule) -> list[tuple[Window, np.ndarray]]:
    """The tiles an image is selected in, each point in exactly one: among the tiles that hold
    it, the one where it lies farthest from a border that is not the image's edge (the first
    on ties); a point no tile holds (within 2 px of the image's edge) goes to the tile it lies in."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    tiles = tile_grid(width, height, rule.side, rule.overlap)
    dist = np.stack([np.where(points_inside(xy, t), border_distance(xy, t, (height, width)), -np.inf)
                     for t in tiles])  # tiles × N
    inside = np.stack([points_inside(xy, t, 0) for t in tiles])
    dist = np.where(np.isneginf(dist).all(0) & inside, 0.0, dist)
    best = np.argmax(dist, axis=0)
    return [(tiles[t], np.flatnonzero(best == t)) for t in sorted(set(best.tolist()))]
