"""Drawing primitives: instances on an image, titled panels, grids, PNG files.

:func:`draw_instances` paints instances on an image: each its own colour (a translucent fill
and a solid outline), the annotated point, and the category name. Images are ``H×W×3``
``uint8`` RGB; masks ``H×W`` (non-zero = foreground); points ``(x, y)`` in original-image
pixels; boxes ``XYXY``. Colours come from the annotation id (:func:`instance_color`), so an
object keeps its colour across panels, files and runs. PNGs are written atomically.
"""

from __future__ import annotations

import colorsys
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pseudolabel.core.errors import InputError
from pseudolabel.core.io import atomic_path
from pseudolabel.core.rle import decode_rle, mask_to_box_xyxy, segmentation_to_rle, xywh_to_xyxy

RGB = tuple[int, int, int]
BACKGROUND: RGB = (30, 30, 30)
TEXT: RGB = (255, 255, 255)
DEFAULT_ALPHA = 0.45


def instance_color(key: Any) -> RGB:
    """A vivid RGB colour that depends only on ``key`` (an annotation id): the same id gets
    the same colour in every picture and every run."""
    h = zlib.crc32(str(key).encode("utf-8"))
    hue = (h % 3600) / 3600.0
    sat = 0.65 + 0.3 * (((h >> 12) % 100) / 99.0)
    val = 0.80 + 0.2 * (((h >> 20) % 100) / 99.0)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


@dataclass
class Instance:
    """One thing to draw.

    Attributes:
        mask: ``H×W`` mask, or None (then ``box`` is outlined if given).
        color: RGB fill/outline colour.
        label: text written at the top-left of the object (category name), or None.
        point: ``(x, y)`` annotated point in pixels, or None.
        box: ``XYXY`` box, drawn only when there is no mask.
        fill: translucent fill inside the mask (False: outline only).
    """

    mask: np.ndarray | None
    color: RGB
    label: str | None = None
    point: tuple[float, float] | None = None
    box: np.ndarray | None = None
    fill: bool = True
    _area: int = field(default=0, repr=False)


def _line_width(h: int, w: int) -> int:
    return max(1, int(round(math.hypot(h, w) / 600)))


def _font_scale(h: int, w: int) -> float:
    return float(np.clip(min(h, w) / 900.0, 0.35, 1.2))


def draw_instances(image: np.ndarray, instances: Sequence[Instance], alpha: float = DEFAULT_ALPHA,
                   thickness: int | None = None) -> np.ndarray:
    """Paint ``instances`` on a copy of ``image`` (``H×W×3`` uint8 RGB).

    Inside a filled mask a pixel becomes ``(1 - alpha) * image + alpha * color`` (rounded);
    outlines (external and hole contours), points and labels are drawn on top in solid colour.
    Larger masks are painted first so small ones stay visible.

    Returns:
        A new ``H×W×3`` uint8 RGB array.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_instances expects an H×W×3 image, got shape {image.shape}")
    h, w = image.shape[:2]
    lw = thickness or _line_width(h, w)
    out = image.astype(np.float32)
    masks: list[tuple[Instance, np.ndarray]] = []
    for inst in instances:
        if inst.mask is not None:
            m = np.asarray(inst.mask).astype(bool)
            if m.shape != (h, w):
                raise ValueError(f"mask of shape {m.shape} does not fit an image of {h}×{w}")
            masks.append((inst, m))
    masks.sort(key=lambda im: -int(im[1].sum()))
    for inst, m in masks:
        if inst.fill:
            out[m] = (1.0 - alpha) * out[m] + alpha * np.asarray(inst.color, np.float32)
    canvas = np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    for inst, m in masks:
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in inst.color), lw, cv2.LINE_8)
    for inst in instances:
        if inst.mask is None and inst.box is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
            cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), inst.color, lw)
    radius = max(3, 2 * lw + 1)
    for inst in instances:
        if inst.point is not None:
            cx, cy = int(math.floor(inst.point[0])), int(math.floor(inst.point[1]))
            cv2.circle(canvas, (cx, cy), radius + lw, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(canvas, (cx, cy), radius, tuple(int(c) for c in inst.color), -1, cv2.LINE_AA)
    scale = _font_scale(h, w)
    for inst in instances:
        if inst.label:
            box = instance_box(inst)
            anchor = (box[0], box[1]) if box is not None else (
                (inst.point[0], inst.point[1]) if inst.point is not None else None)
            if anchor is not None:
                _put_label(canvas, inst.label, anchor, inst.color, scale)
    return canvas


def instance_box(inst: Instance) -> np.ndarray | None:
    if inst.mask is not None:
        m = np.asarray(inst.mask)
        if m.any():
            return mask_to_box_xyxy(m)
        return None
    return None if inst.box is None else np.asarray(inst.box, dtype=np.float64)


def _put_label(canvas: np.ndarray, text: str, anchor: tuple[float, float], color: RGB,
               scale: float) -> None:
    """Write ``text`` on a dark chip of the instance colour just above ``anchor`` ``(x, y)``
    (inside the image)."""
    import cv2

    h, w = canvas.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    pad = 2
    x = int(np.clip(anchor[0], 0, max(0, w - tw - 2 * pad)))
    y_top = int(anchor[1]) - th - base - 2 * pad
    if y_top < 0:
        y_top = int(np.clip(anchor[1], 0, max(0, h - th - base - 2 * pad)))
    chip = tuple(int(c * 0.45) for c in color)
    cv2.rectangle(canvas, (x, y_top), (x + tw + 2 * pad, y_top + th + base + 2 * pad), chip, -1)
    cv2.putText(canvas, text, (x + pad, y_top + pad + th), font, scale, TEXT, 1, cv2.LINE_AA)


# ---- annotations -> instances --------------------------------------------------------------


def _read_point(ann: Mapping[str, Any]) -> tuple[float, float] | None:
    from pseudolabel.core.points import read_point

    try:
        return read_point(dict(ann))
    except (InputError, TypeError, ValueError):
        return None


def annotation_mask(ann: Mapping[str, Any], height: int, width: int) -> np.ndarray | None:
    """``H×W`` uint8 mask of an annotation's segmentation (polygon or RLE), None without one.

    Raises:
        InputError: the segmentation is malformed or of the wrong size.
    """
    seg = ann.get("segmentation")
    if seg is None or seg == [] or seg == {}:
        return None
    try:
        return decode_rle(segmentation_to_rle(seg, height, width))
    except InputError as e:
        raise InputError(f"annotation {ann.get('id')}: {e}") from None


def instances_from_annotations(anns: Iterable[Mapping[str, Any]], height: int, width: int,
                               names: Mapping[Any, str] | None = None, labels: bool = True,
                               fill: bool = True) -> list[Instance]:
    """Instances to draw for the annotations of one ``height×width`` image.

    Colour from the annotation id; label = category name (``names``: category id → name,
    falling back to the id); point from ``point`` / ``point_coords``; the COCO ``bbox`` is
    outlined for annotations without a mask.
    """
    names = names or {}
    out = []
    for a in anns:
        mask = annotation_mask(a, height, width)
        box = None
        if mask is None and isinstance(a.get("bbox"), (list, tuple)) and len(a["bbox"]) == 4:
            box = xywh_to_xyxy(np.asarray(a["bbox"], dtype=np.float64))
        label = None
        if labels and a.get("category_id") is not None:
            label = names.get(a["category_id"], str(a["category_id"]))
        out.append(Instance(mask=mask, color=instance_color(a.get("id")), label=label,
                            point=_read_point(a), box=box, fill=fill))
    return out


# ---- composing pictures --------------------------------------------------------------------


def resize_to_width(image: np.ndarray, width: int) -> np.ndarray:
    """Resize ``H×W×3`` to ``width`` keeping the aspect ratio (area interpolation when
    shrinking)."""
    import cv2

    h, w = image.shape[:2]
    if w == width:
        return image
    height = max(1, int(round(h * width / w)))
    interp = cv2.INTER_AREA if width < w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def titled(image: np.ndarray, title: str, scale: float = 0.5) -> np.ndarray:
    """``image`` with a dark bar on top holding ``title`` (truncated to fit)."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, th), base = cv2.getTextSize("Ag", font, scale, 1)
    bar_h = th + base + 8
    w = image.shape[1]
    if cv2.getTextSize(title, font, scale, 1)[0][0] > w - 8:
        while len(title) > 1 and cv2.getTextSize(title + "..", font, scale, 1)[0][0] > w - 8:
            title = title[:-1]
        title += ".."
    bar = np.full((bar_h, w, 3), BACKGROUND, dtype=np.uint8)
    cv2.putText(bar, title, (4, 4 + th), font, scale, TEXT, 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    out[: image.shape[0], : image.shape[1]] = image
    return out


def hstack_panels(panels: Sequence[tuple[str, np.ndarray]], panel_width: int | None = None,
                  gap: int = 4) -> np.ndarray:
    """Panels side by side, each resized to ``panel_width`` (default: the first one's) and
    titled; shorter panels padded at the bottom."""
    if not panels:
        raise ValueError("hstack_panels needs at least one panel")
    pw = panel_width or panels[0][1].shape[1]
    tiles = [titled(resize_to_width(img, pw), title) for title, img in panels]
    hmax = max(t.shape[0] for t in tiles)
    spacer = np.full((hmax, gap, 3), BACKGROUND, dtype=np.uint8)
    row: list[np.ndarray] = []
    for i, t in enumerate(tiles):
        if i:
            row.append(spacer)
        row.append(_pad_to(t, hmax, t.shape[1]))
    return np.concatenate(row, axis=1)


def grid(tiles: Sequence[np.ndarray], cols: int, gap: int = 8) -> np.ndarray:
    """Tiles in a grid of ``cols`` columns (row-major), each cell padded to its row's height
    and the widest tile."""
    if not tiles:
        raise ValueError("grid needs at least one tile")
    cols = max(1, min(cols, len(tiles)))
    cw = max(t.shape[1] for t in tiles)
    rows = []
    for r in range(0, len(tiles), cols):
        chunk = list(tiles[r: r + cols])
        rh = max(t.shape[0] for t in chunk)
        chunk += [np.full((rh, cw, 3), BACKGROUND, np.uint8)] * (cols - len(chunk))
        cells = []
        for i, t in enumerate(chunk):
            if i:
                cells.append(np.full((rh, gap, 3), BACKGROUND, np.uint8))
            cells.append(_pad_to(t, rh, cw))
        rows.append(np.concatenate(cells, axis=1))
    width = rows[0].shape[1]
    out: list[np.ndarray] = []
    for i, r in enumerate(rows):
        if i:
            out.append(np.full((gap, width, 3), BACKGROUND, np.uint8))
        out.append(r)
    return np.concatenate(out, axis=0)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``H×W×3`` uint8 RGB image as PNG, atomically; returns the path."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.tobytes())
    return Path(path)
