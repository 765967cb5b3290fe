"""Learnable scenes for the selector: textured shapes whose class a CNN from scratch can learn.

Each image is a ``size × size`` square with 5–8 objects, close together, on a smooth noise
background. An object
is a disc, a square or a triangle (rotated squares and triangles too) filled with a texture
(stripes, checks, dots or blotches in two random colours). Objects do not overlap, except that
with probability ``touch`` an object is placed against an earlier one of the same class, so that
the two touch: the case where "the object merged with its neighbour" is a plausible wrong answer.

What decides the category (``class_by``):

* ``"shape"`` (default): the silhouette; textures and colours are drawn from one pool for every
  class. A crop inside an object says nothing about its class: only a proposal that shows the
  whole outline does. This is what SAPNet's MIL needs to find whole objects (on real photos an
  ImageNet backbone provides it: the whole object is what tells a class apart). Measured: this premise
  does not hold for the selector: a trained PSM names the class of parts as well as of whole
  objects (docs/selector.md, "What the selector learns").
* ``"texture"``: the texture kind (stripes, checks, dots, blotches) with random shapes. Every part
  of an object tells its class, and the purest part (the least background) is what a MIL
  selector prefers: the classic part-domination failure, kept as a contrast.
* ``"spots"``: how many spots (2, 3 or 4, evenly spaced on a circle around the centre) a plain
  shape of random form and colour carries. A part of an object shows fewer spots and the object
  merged with its neighbour more: both look like *another* class, as a part of one COCO object
  can look like another category.
* ``"both"``: 3 shapes × 2 textures.

Everything is a pure function of the arguments. Masks are exact (the drawn pixels); points and
SAM-like bags are made from them by :func:`pseudolabel.core.points.derive_points` and
:func:`pseudolabel.testing.synthetic.synthetic_bags`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.rle import encode_mask, rle_area, rle_to_bbox_xywh

SHAPES = ("disc", "square", "triangle")
TEXTURES = ("stripes", "checks", "dots", "blotches")
CLASS_BY = ("shape", "texture", "both", "spots")
BOTH_TEXTURES = TEXTURES[:2]  # class_by="both": 3 shapes × 2 textures
SPOTS = (2, 3, 4)  # class_by="spots": how many spots an object of each class carries


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """``size × size`` bool mask of one shape centred at ``(cx, cy)`` (pixels, x right, y down)."""
    mask = np.zeros((size, size), np.uint8)
    if shape == "disc":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius)), 1, -1, lineType=cv2.LINE_8)
        return mask.astype(bool)
    n, r = (4, radius * 1.2) if shape == "square" else (3, radius * 1.35)
    t = angle + 2 * np.pi * np.arange(n) / n
    pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size × size × 3`` float RGB texture of one kind, two random colours, random scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 9)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "stripes":
        t = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif kind == "checks":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "dots":
        t = (((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2 < (period / 3.2) ** 2)
        t = t.astype(np.float32)
    else:  # blotches: thresholded smooth noise
        noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), period / 2.5)
        t = (noise > 0).astype(np.float32)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(c1 - c2).sum() < 150:  # keep the pattern visible
        c2 = rng.uniform(0, 255, 3)
    return t[..., None] * c1 + (1 - t[..., None]) * c2


def _spots(mask: np.ndarray, count: int, cx: float, cy: float, radius: float, rng: np.random.Generator
           ) -> np.ndarray | None:
    """``count`` round spots evenly spaced on a circle of ``0.45·radius`` around ``(cx, cy)``.

    Returns the ``size × size`` bool mask of the spots, or None when one does not fit inside
    ``mask`` (a narrow triangle corner, a shape cut by its neighbour).
    """
    r_spot = max(2.0, 0.19 * radius)
    phase = rng.uniform(0, 2 * np.pi)
    spots = np.zeros(mask.shape, np.uint8)
    for k in range(count):
        t = phase + 2 * np.pi * k / count
        one = np.zeros(mask.shape, np.uint8)
        cv2.circle(one, (int(round(cx + 0.45 * radius * np.cos(t))), int(round(cy + 0.45 * radius * np.sin(t)))),
                   int(round(r_spot)), 1, -1, lineType=cv2.LINE_8)
        if (one.astype(bool) & ~mask).any():
            return None
        spots |= one
    return spots.astype(bool)


def _plain_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A body colour and a spot colour far from it (RGB floats)."""
    body, dot = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(body - dot).sum() < 200:
        dot = rng.uniform(0, 255, 3)
    return body, dot


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth, low-contrast noise background."""
    noise = rng.normal(0, 1, (size, size, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), rng.uniform(6, 14))
    smooth = smooth / (smooth.std() + 1e-6)
    return rng.uniform(70, 180, 3) + 25 * smooth + rng.normal(0, 4, (size, size, 3))


def _place(shape: str, size: int, radius: float, taken: np.ndarray, rng: np.random.Generator,
           near: tuple[float, float, float] | None, gap: int, tries: int = 60) -> tuple[np.ndarray, float, float] | None:
    """A mask of ``shape`` that does not overlap ``taken`` (touching ``near`` if given), or None."""
    for _ in range(tries):
        angle = rng.uniform(0, 2 * np.pi)
        if near is not None:
            nx, ny, nr = near
            d = nr + radius * rng.uniform(0.95, 1.1)
            phi = rng.uniform(0, 2 * np.pi)
            cx, cy = nx + d * np.cos(phi), ny + d * np.sin(phi)
        else:
            cx, cy = rng.uniform(radius, size - radius), rng.uniform(radius, size - radius)
        if not (radius * 0.8 <= cx <= size - radius * 0.8 and radius * 0.8 <= cy <= size - radius * 0.8):
            continue
        mask = _shape_mask(shape, size, cx, cy, radius, angle)
        if near is None:  # keep a gap to everything placed so far
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)).astype(bool)
            if (grown & taken).any():
                continue
        else:  # touching: allowed to meet its partner, but not to cover much of anything
            if (mask & taken).sum() > 0.08 * mask.sum():
                continue
            mask &= ~taken
        if mask.sum() >= 0.5 * np.pi * radius ** 2 * 0.6:
            return mask, cx, cy
    return None


def render_scene(rng: np.random.Generator, size: int = 128, class_by: str = "shape", touch: float = 0.35,
                 objects: tuple[int, int] = (5, 8), radius: tuple[float, float] = (0.08, 0.15), gap: int = 1
                 ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene.

    Args:
        rng: the random source.
        size: side of the square image in pixels.
        class_by: one of :data:`CLASS_BY` (see the module docstring).
        touch: probability that an object is placed against an earlier one of its class.
        objects: how many objects are attempted (inclusive range); crowded ones are dropped.
        radius: object radius range as a fraction of ``size``.
        gap: the least distance in pixels between objects that do not touch (small: cluttered
            scenes, where a proposal with a background band takes in bits of other objects).

    Returns:
        ``(image, objects)``: ``size × size × 3`` uint8 RGB and a list of ``(class index, mask)``
        with ``size × size`` bool masks that do not overlap.
    """
    if class_by not in CLASS_BY:
        raise ValueError(f"class_by must be one of {CLASS_BY}")
    img = _background(size, rng)
    taken = np.zeros((size, size), bool)
    placed: list[tuple[int, np.ndarray, float, float, float]] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        r = rng.uniform(*radius) * size
        partner = None
        if placed and rng.random() < touch:
            partner = placed[int(rng.integers(len(placed)))]
        if class_by == "shape":
            cls = partner[0] if partner else int(rng.integers(len(SHAPES)))
            shape, tex = SHAPES[cls], TEXTURES[int(rng.integers(len(TEXTURES)))]
        elif class_by == "both":
            cls = partner[0] if partner else int(rng.integers(len(SHAPES) * len(BOTH_TEXTURES)))
            shape, tex = SHAPES[cls // len(BOTH_TEXTURES)], BOTH_TEXTURES[cls % len(BOTH_TEXTURES)]
        elif class_by == "spots":
            cls = partner[0] if partner else int(rng.integers(len(SPOTS)))
            shape, tex = SHAPES[int(rng.integers(len(SHAPES)))], "plain"
        else:
            cls = partner[0] if partner else int(rng.integers(len(TEXTURES)))
            shape, tex = SHAPES[int(rng.integers(len(SHAPES)))], TEXTURES[cls]
        got = _place(shape, size, r, taken, rng, partner[2:] if partner else None, gap)
        if got is None:
            continue
        mask, cx, cy = got
        if class_by == "spots":
            spots = _spots(mask, SPOTS[cls], cx, cy, r, rng)
            if spots is None:
                continue
            body, dot = _plain_colours(rng)
            img[mask] = body
            img[spots] = dot
        else:
            img[mask] = _texture(tex, size, rng)[mask]
        taken |= mask
        placed.append((cls, mask, cx, cy, r))
    return np.clip(img, 0, 255).astype(np.uint8), [(c, m) for c, m, *_ in placed]


def make_scenes(out_dir: str | os.PathLike, n_images: int = 120, seed: int = 0, size: int = 128,
                class_by: str = "shape", touch: float = 0.35) -> tuple[Path, Path]:
    """Write ``images/*.png`` and ``annotations.json`` (COCO, RLE masks) under ``out_dir``.

    Categories are ids 1.. in the order of :data:`SHAPES` (``class_by="shape"``) or
    :data:`TEXTURES` (``"texture"``). Returns ``(annotations_json, images_dir)``.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    names = {"shape": SHAPES, "texture": TEXTURES,
             "both": tuple(f"{s} {t}" for s in SHAPES for t in BOTH_TEXTURES),
             "spots": tuple(f"{n} spots" for n in SPOTS)}[class_by]
    rng = np.random.default_rng([seed, size, CLASS_BY.index(class_by) if class_by in CLASS_BY else 9])
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in range(n_images):
        img, objects = render_scene(rng, size, class_by, touch)
        name = f"scene_{i:05d}.png"
        cv2.imwrite(str(images_dir / name), img[..., ::-1])
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for cls, mask in objects:
            rle = encode_mask(mask)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls + 1, "segmentation": rle,
                         "area": rle_area(rle), "bbox": rle_to_bbox_xywh(rle), "iscrowd": 0})
    gt = {"info": {"description": f"sap selector scenes (class by {class_by})", "seed": seed},
          "images": images, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
          "annotations": anns}
    return write_json_atomic(out_dir / "annotations.json", gt), images_dir
