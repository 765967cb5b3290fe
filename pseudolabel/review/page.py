"""The review page on disk: thumbnails with overlays, ``items.js`` and ``index.html``.

A thumbnail is the object's neighbourhood (the union of the chosen mask's box, the runner-up's
and the click, padded by a fifth of its size), at most ``size`` pixels on its long side, with
the chosen mask filled in its colour (:func:`pseudolabel.viz.instance_color`), the runner-up
proposal outlined in magenta and the click as a white dot. Images are read once each.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from pseudolabel.core.errors import ImageError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.io import atomic_path, write_text_atomic
from pseudolabel.core.progress import logger, progress
from pseudolabel.core.rle import decode_rle, mask_to_box_xyxy, segmentation_to_rle
from pseudolabel.viz import instance_color

from .template import PAGE

RUNNER_UP = (255, 79, 216)


def thumb_name(ann_id: Any) -> str:
    s = str(ann_id)
    return f"thumbs/{s}.jpg" if re.fullmatch(r"[A-Za-z0-9_.-]+", s) else f"thumbs/x{abs(hash(s)):x}.jpg"


def crop_box(boxes: list[np.ndarray], point: Any, h: int, w: int, min_side: int = 48) -> tuple[int, int, int, int]:
    """Integer ``XYXY`` crop (exclusive max) around ``boxes`` (``XYXY``) and ``point``, padded by 20 %."""
    xs, ys = [], []
    for b in boxes:
        if b is not None and b[2] > b[0]:
            xs += [b[0], b[2]]
            ys += [b[1], b[3]]
    if isinstance(point, (list, tuple)) and len(point) == 2:
        xs.append(float(point[0]))
        ys.append(float(point[1]))
    if not xs:
        return 0, 0, w, h
    x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
    pad = 0.2 * max(x2 - x1, y2 - y1, min_side / 2)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1, min_side) / 2 + pad
    return (int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half))),
            int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half))))


def draw_thumb(rgb: np.ndarray, mask: np.ndarray | None, runner: np.ndarray | None, point: Any,
               color: tuple[int, int, int], size: int = 192) -> np.ndarray:
    """The thumbnail (``h×w×3`` RGB uint8) of one object on its image ``rgb`` (``H×W×3``)."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = crop_box([mask_to_box_xyxy(m) if m is not None else None for m in (mask, runner)], point, h, w)
    crop = rgb[y1:y2, x1:x2]
    scale = size / max(crop.shape[:2])
    tw, th = max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))
    out = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR).copy()
    if mask is not None:
        m = cv2.resize(mask[y1:y2, x1:x2].astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
        out[m] = (0.55 * out[m] + 0.45 * np.array(color)).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, 2)
    if runner is not None:
        r = cv2.resize(runner[y1:y2, x1:x2].astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(r, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, RUNNER_UP, 1)
    if isinstance(point, (list, tuple)) and len(point) == 2:
        p = (int(round((float(point[0]) - x1) * scale)), int(round((float(point[1]) - y1) * scale)))
        cv2.circle(out, p, 5, (0, 0, 0), -1)
        cv2.circle(out, p, 3, (255, 255, 255), -1)
    return out


def write_thumbnails(labels: dict[str, Any], items: list[dict], runner: dict[Any, dict],
                     images_dir: str | os.PathLike, out: str | os.PathLike, size: int = 192) -> dict[Any, str]:
    """Write one JPEG per item under ``OUT/thumbs/``; set ``item["thumb"]``.

    Returns:
        Failed images: image id → reason (their items get no thumbnail).
    """
    images = {img["id"]: img for img in labels["images"]}
    anns = {a["id"]: a for a in labels["annotations"]}
    by_image: dict[Any, list[dict]] = {}
    for it in items:
        by_image.setdefault(it["image_id"], []).append(it)
    failed: dict[Any, str] = {}
    for image_id in progress(list(by_image), desc="thumbnails", unit="img"):
        objects = [(it, anns[it["id"]], runner.get(it["id"])) for it in by_image[image_id]]
        reason = write_image_thumbnails(images[image_id], objects, images_dir, out, size)
        if reason is not None:
            failed[image_id] = reason
    return failed


def write_image_thumbnails(img: dict[str, Any], objects: list[tuple[dict, dict, dict | None]],
                           images_dir: str | os.PathLike, out: str | os.PathLike, size: int = 192) -> str | None:
    """The thumbnails of one image's objects ``(item, annotation, runner-up RLE or None)``, the
    image read once; set ``item["thumb"]``. Returns why the image could not be read, else None."""
    out, images_dir = Path(out), Path(images_dir)
    h, w = int(img["height"]), int(img["width"])
    try:
        rgb = load_image_rgb(images_dir / img["file_name"], (w, h))
    except ImageError as e:
        logger.warning("image %s: %s", img["id"], e)
        return str(e)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    for it, ann, ru in objects:
        mask = None
        if ann.get("segmentation"):
            try:
                mask = decode_rle(segmentation_to_rle(ann["segmentation"], h, w)).astype(bool)
            except Exception:  # an unreadable mask: the thumbnail shows the click only
                mask = None
        thumb = draw_thumb(rgb, mask, decode_rle(ru).astype(bool) if ru is not None else None,
                           ann.get("point"), instance_color(it["id"]), size)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        name = thumb_name(it["id"])
        with atomic_path(out / name) as tmp:
            Path(tmp).write_bytes(buf.tobytes())
        it["thumb"] = name
    return None


def image_href(file_name: str, images_dir: str | os.PathLike, out: str | os.PathLike) -> str:
    """A link from ``OUT/index.html`` to the image: relative when possible, else a file URI."""
    target = (Path(images_dir) / file_name).resolve()
    try:
        return Path(os.path.relpath(target, Path(out).resolve())).as_posix()
    except ValueError:  # another drive
        return target.as_uri()


def write_page(out: str | os.PathLike, items: list[dict], title: str, page_size: int = 120) -> Path:
    """Write ``OUT/items.js`` and ``OUT/index.html`` (see :mod:`.template`)."""
    signals = sorted({k for it in items for k in it["signals"]})
    classes = sorted({it["category"] for it in items})
    return write_page_stream(out, iter(items), title, page_size, signals, classes)


def write_page_stream(out: str | os.PathLike, items: Iterator[dict], title: str, page_size: int,
                      signals: list[str], classes: list[str]) -> Path:
    """:func:`write_page` with the items streamed, in queue order (the signal and class names
    known beforehand): the same bytes, never the whole list in memory."""
    out = Path(out)

    def dump(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")

    with atomic_path(out / "items.js") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(f"window.SAP_REVIEW = {{\"title\":{dump(title)},\"items\":[")
        for i, it in enumerate(items):
            f.write(("," if i else "") + dump(it))
        f.write(f"],\"signals\":{dump(signals)},\"classes\":{dump(classes)},\"page_size\":{dump(page_size)}}};\n")
    return write_text_atomic(out / "index.html", PAGE)
