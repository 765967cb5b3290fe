"""SAMRefiner on a large image, in windows around the coarse masks.

When the image exceeds the engine's frame by the proposals' rule (:class:`WindowRule`), each
coarse mask is refined in a window that holds its box grown by a margin (:func:`object_windows`):
a window `sap proposals --save-embeddings` stored for the image when one holds the grown box,
else the grid window of its box's centre (the proposals' layout, so objects nearby share one
encoder call) when the grown box fits in it, else a square of the grown box's size. The masks are cropped
to the window, refined there (points, CEBox and the Gaussian mask prompt all in window
coordinates), and placed back at the image's full size; the ``--dump-prompts`` records are
shifted back to image coordinates. A mask cannot grow past its window.

Coordinates: boxes and windows ``XYXY`` in image pixels, right/bottom exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pseudolabel.core.rle import decode_rle
from pseudolabel.core.windows import Window, WindowRule, border_distance, layout_windows, paste_rle

MARGIN_FRACTION = 0.5  # a mask's box is grown by half its longer side on every side ...
MIN_MARGIN = 16  # ... and at least this many pixels


@dataclass
class WindowedImage:
    """An image refined in windows: its ``(H, W)``, the rule, and ``encode(window)`` → the
    :class:`~pseudolabel.core.engines.base.ImageEmbedding` of that part of it."""

    hw: tuple[int, int]
    rule: WindowRule
    encode: Callable
    stored: tuple[Window, ...] = ()  # windows whose embeddings a proposal cache holds


def grown_box(box: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An XYXY box grown by the margin on each side, clipped to the ``(H, W)`` image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    m = max(MIN_MARGIN, MARGIN_FRACTION * max(x1 - x0, y1 - y0))
    return np.array([max(0, x0 - m), max(0, y0 - m), min(hw[1], x1 + m), min(hw[0], y1 + m)])


def _holds(win: Window, g: np.ndarray) -> bool:
    return g[0] >= win.x0 and g[1] >= win.y0 and g[2] <= win.x1 and g[3] <= win.y1


def object_windows(boxes: np.ndarray, hw: tuple[int, int], side: int, halo: int,
                   prefer: tuple[Window, ...] = ()) -> tuple[list[Window], np.ndarray]:
    """The window of each object (see the module docstring).

    Args:
        boxes: ``N×4`` XYXY boxes of the coarse masks.
        hw: the image's ``(H, W)``.
        side, halo: the window rule's (image pixels).
        prefer: windows already encoded (a proposal cache's): an object whose grown box one of
            them holds takes it (the one where the box lies farthest from a border that counts).

    Returns:
        ``(windows, index)``: distinct windows and each object's index into them.
    """
    h, w = hw
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    grid, cell = layout_windows(centres, hw, side, halo)
    chosen: list[Window] = []
    for n, box in enumerate(boxes):
        g = grown_box(box, hw)
        held = [v for v in prefer if _holds(v, g)]
        win = max(held, key=lambda v: border_distance(centres[n], v, hw)[0]) if held else grid[cell[n]]
        if not _holds(win, g):
            size = int(np.ceil(max(g[2] - g[0], g[3] - g[1], side)))
            x0 = int(min(max((g[0] + g[2]) / 2 - size / 2, 0), max(w - size, 0)))
            y0 = int(min(max((g[1] + g[3]) / 2 - size / 2, 0), max(h - size, 0)))
            win = Window(x0, y0, min(x0 + size, w), min(y0 + size, h))
        chosen.append(win)
    distinct = sorted(set(chosen), key=lambda v: (v.y0, v.x0, v.y1, v.x1))
    where = {v: i for i, v in enumerate(distinct)}
    return distinct, np.array([where[v] for v in chosen], dtype=int)


def shift_records(records: list[dict], origin: tuple[int, int]) -> list[dict]:
    """``--dump-prompts`` records of a window (``pos``/``neg`` points, ``box``/``cebox`` XYXY)
    moved to image coordinates by the window's ``origin`` ``(x, y)``."""
    dx, dy = origin
    out = []
    for rec in records:
        new = dict(rec)
        new["pos"] = [[x + dx, y + dy] for x, y in rec["pos"]]
        new["neg"] = [[x + dx, y + dy] for x, y in rec["neg"]]
        for key in ("box", "cebox"):
            if rec.get(key) is not None:
                new[key] = [rec[key][0] + dx, rec[key][1] + dy, rec[key][2] + dx, rec[key][3] + dy]
        out.append(new)
    return out


def refine_windowed(engine, encode_window, rles: list[dict], hw: tuple[int, int], rule: WindowRule, cfg,
                    record: bool = False, prefer: tuple[Window, ...] = ()):
    """Refine one large image's coarse masks window by window.

    Args:
        engine: the :class:`~pseudolabel.core.engines.base.PromptEngine`.
        encode_window: ``Window → ImageEmbedding`` of that part of the image.
        rles: the coarse masks (COCO RLE at the image's size).
        hw: the image's ``(H, W)``.
        rule: the window rule (its side and halo).
        cfg: the :class:`~refine.refiner.RefineConfig`.
        record: keep each iteration's prompts (in image coordinates).
        prefer: windows already encoded (:func:`object_windows`).

    Returns:
        ``(rles, scores, kept_coarse, prompts)`` in the order of ``rles`` (prompts None unless
        ``record``).
    """
    from pseudolabel.core.rle import rle_to_bbox_xywh

    from .refiner import refine_masks

    n = len(rles)
    boxes = np.array([rle_to_bbox_xywh(r) for r in rles], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    windows, index = object_windows(boxes, hw, rule.side, rule.halo, prefer)
    out_rles: list = [None] * n
    scores, kept = np.full(n, np.nan), np.zeros(n, dtype=bool)
    prompts: list | None = [None] * n if record else None
    for k, win in enumerate(windows):
        members = np.flatnonzero(index == k)
        crops = np.stack([decode_rle(rles[i])[win.y0:win.y1, win.x0:win.x1] for i in members]).astype(bool)
        result = refine_masks(engine, encode_window(win), crops, cfg, record=record)
        for j, i in enumerate(members):
            out_rles[i] = paste_rle(result.masks[j], win.origin, hw)
            scores[i], kept[i] = result.scores[j], result.kept_coarse[j]
            if record:
                prompts[i] = shift_records(result.prompts[j], win.origin)
    return out_rles, scores, kept, prompts
