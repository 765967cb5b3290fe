"""Procedural scenes with exact instance and part masks: the pocket SAM's training and test data.

A scene is a textured background with 2–9 shapes (discs and ellipses, rotated boxes, triangles,
stars, rings) drawn in order, so later shapes occlude earlier ones; the stored masks are what is
visible. A shape's fill is flat, noisy, striped, a gradient or a checker, and about a third of the
shapes carry a *part* of another colour (a band, a cap cut by a straight line or a spot), so a
click has a "part" and a "whole" answer. Some scenes add clutter: many small shapes. The demo's
scenes (``pseudolabel.pipeline.demo``) are one corner of this distribution.

Every scene is a pure function of its seed (``numpy.random.default_rng``), drawn with OpenCV at
its own size (longest side ~224–320 px); the SAM engine resizes it to its 1024 frame as usual.
Coordinates are pixels, ``(x, y)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: shape kinds; COCO category ids are their index + 1 (see :func:`coco_categories`)
KINDS = ("disc", "box", "triangle", "star", "ring")
MIN_AREA = 12  # smaller visible remnants are not objects


@dataclass
class Scene:
    """One generated image with its objects.

    Attributes:
        image: ``H×W×3`` uint8 RGB.
        masks: visible mask of every object, ``H×W`` bool each, drawing order.
        kinds: index into :data:`KINDS` of every object.
        parts: ``(object index, H×W bool mask)`` for every visible part of another colour.
    """

    image: np.ndarray
    masks: list[np.ndarray]
    kinds: list[int]
    parts: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def targets(self) -> list[np.ndarray]:
        """Every mask a prompt may ask for: the objects, then the parts."""
        return list(self.masks) + [m for _, m in self.parts]


def _shape_mask(kind: int, h: int, w: int, size: float, rng: np.random.Generator,
                centre: tuple[float, float] | None = None) -> np.ndarray:
    """A filled shape of radius ~``size`` px at ``centre`` ``(x, y)`` or a random place (may
    leave the frame)."""
    import cv2

    m = np.zeros((h, w), np.uint8)
    cx, cy = centre if centre is not None else (rng.uniform(0.05, 0.95) * w, rng.uniform(0.05, 0.95) * h)
    angle = rng.uniform(0, 2 * np.pi)
    name = KINDS[kind]
    if name == "disc":
        axes = (int(size), int(size * rng.uniform(0.55, 1.0)))
        cv2.ellipse(m, (int(cx), int(cy)), axes, float(np.degrees(angle)), 0, 360, 1, -1)
    elif name == "ring":
        outer = size
        cv2.circle(m, (int(cx), int(cy)), int(outer), 1, -1)
        cv2.circle(m, (int(cx), int(cy)), int(outer * rng.uniform(0.35, 0.6)), 0, -1)
    else:
        if name == "box":
            a, b = size, size * rng.uniform(0.45, 1.1)
            pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        elif name == "triangle":
            t = angle + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
            pts = np.stack([np.cos(t), np.sin(t)], 1) * size
        else:  # star: alternating outer and inner radii
            n = int(rng.integers(4, 7))
            t = np.arange(2 * n) * np.pi / n
            r = np.where(np.arange(2 * n) % 2 == 0, size, size * rng.uniform(0.4, 0.6))
            pts = np.stack([np.cos(t) * r, np.sin(t) * r], 1)
        c, s = np.cos(angle), np.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]]) + [cx, cy]
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def _colour(rng: np.random.Generator, away_from: np.ndarray | None = None) -> np.ndarray:
    """A random RGB colour, at least ~80 levels from ``away_from`` when given."""
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if away_from is None or np.abs(c - away_from).sum() > 120:
            return c
    return 255.0 - away_from


def _fill(h: int, w: int, colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``H×W×3`` float texture around ``colour``: flat, noisy, striped, gradient or checker."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    style = rng.choice(["flat", "noise", "stripes", "gradient", "checker"], p=[0.3, 0.25, 0.15, 0.15, 0.15])
    out = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if style == "stripes":
        t = np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy
        out = out + (np.sin(t / rng.uniform(1.5, 4)) > 0)[..., None] * rng.uniform(-45, 45, 3)
    elif style == "gradient":
        t = np.cos(rng.uniform(0, 2 * np.pi)) * xx + np.sin(rng.uniform(0, 2 * np.pi)) * yy
        out = out + (t / max(h, w))[..., None] * rng.uniform(-70, 70, 3)
    elif style == "checker":
        p = rng.uniform(3, 8)
        out = out + (((xx // p) + (yy // p)) % 2)[..., None] * rng.uniform(-40, 40, 3)
    if style != "flat":
        out = out + rng.normal(0, rng.uniform(2, 10), (h, w, 3)).astype(np.float32)
    return out


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``mask``'s pixels of ``img`` (``H×W×3`` float, in place) with a texture around
    ``colour``, drawn over the mask's bounding box only."""
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    tex = _fill(box[0].stop - box[0].start, box[1].stop - box[1].start, colour, rng)
    sub = mask[box]
    img[box][sub] = tex[sub]


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A textured ``H×W×3`` float background (the demo's sinusoid is one of the styles)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    style = rng.choice(["sinusoid", "texture", "blobs"], p=[0.4, 0.35, 0.25])
    if style == "sinusoid":
        img = base + 40 * np.sin(xx[..., None] / rng.uniform(8, 20)) * np.cos(yy[..., None] / rng.uniform(8, 20))
    elif style == "texture":
        img = _fill(h, w, base, rng)
    else:  # soft low-contrast blobs: structure that is not an object
        import cv2

        noise = rng.normal(0, 1, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
        img = base + 35 * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    return img + rng.normal(0, rng.uniform(2, 9), (h, w, 3))


def _part(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A part of ``obj``: a band across it, a cap beyond a straight cut, or a spot inside."""
    ys, xs = np.nonzero(obj)
    h, w = obj.shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = ys.mean(), xs.mean()
    extent = max(np.ptp(ys), np.ptp(xs), 2)
    kind = rng.choice(["band", "cap", "spot"])
    if kind == "spot":
        r = extent * rng.uniform(0.15, 0.3)
        i = rng.integers(len(ys))
        oy, ox = cy + (ys[i] - cy) * 0.4, cx + (xs[i] - cx) * 0.4
        part = (yy - oy) ** 2 + (xx - ox) ** 2 <= r * r
    else:
        t = rng.uniform(0, np.pi)
        d = np.cos(t) * (xx - cx) + np.sin(t) * (yy - cy)
        if kind == "band":
            c = rng.uniform(-0.25, 0.25) * extent
            part = np.abs(d - c) <= extent * rng.uniform(0.08, 0.18)
        else:
            part = d >= rng.uniform(0.0, 0.3) * extent
    return part & obj


def make_scene(seed: int, size: tuple[int, int] | None = None, n_objects: tuple[int, int] = (2, 7),
               part_prob: float = 0.35, clutter_prob: float = 0.2) -> Scene:
    """Draw one scene, a pure function of its arguments.

    Args:
        seed: random seed.
        size: ``(height, width)``; default random, longest side 224–320 px, aspect 0.6–1.
        n_objects: inclusive range of main shapes (radius 1/10–1/3 of the shorter side).
        part_prob: chance that a shape carries a part of another colour.
        clutter_prob: chance of 5–12 extra small shapes (radius 3–8 % of the shorter side).

    Returns:
        The scene; objects whose visible area is under :data:`MIN_AREA` px are dropped.
    """
    rng = np.random.default_rng(seed)
    if size is None:
        long = int(rng.integers(224, 321))
        short = int(long * rng.uniform(0.6, 1.0))
        size = (long, short) if rng.random() < 0.3 else (short, long)
    h, w = size
    img = _background(h, w, rng)
    short_side = min(h, w)
    sizes = list(rng.uniform(0.1, 0.33, int(rng.integers(n_objects[0], n_objects[1] + 1))) * short_side)
    if rng.random() < clutter_prob:
        sizes += list(rng.uniform(0.03, 0.08, int(rng.integers(5, 13))) * short_side)
    masks: list[np.ndarray] = []
    kinds: list[int] = []
    parts: list[tuple[int, np.ndarray]] = []
    for r in sizes:
        kind = int(rng.integers(len(KINDS)))
        m = _shape_mask(kind, h, w, max(r, 3.0), rng)
        if not m.any():
            continue
        colour = _colour(rng)
        _paint(img, m, colour, rng)
        part = None
        if r > 0.12 * short_side and rng.random() < part_prob:
            part = _part(m, rng)
            if part.any():
                _paint(img, part, _colour(rng, away_from=colour), rng)
        masks = [v & ~m for v in masks]
        parts = [(i, p & ~m) for i, p in parts]
        masks.append(m)
        kinds.append(kind)
        if part is not None and part.any():
            parts.append((len(masks) - 1, part))
    keep = [i for i, m in enumerate(masks) if m.sum() >= MIN_AREA]
    index = {old: new for new, old in enumerate(keep)}
    parts = [(index[i], p) for i, p in parts if i in index and MIN_AREA <= p.sum() < masks[i].sum()]
    image = np.clip(img, 0, 255).astype(np.uint8)
    return Scene(image, [masks[i] for i in keep], [kinds[i] for i in keep], parts)


def coco_categories() -> list[dict]:
    """COCO categories of :data:`KINDS` (id = index + 1)."""
    return [{"id": i + 1, "name": k} for i, k in enumerate(KINDS)]


@dataclass
class LargeScene:
    """A large scene of many small objects, each mask kept in its own box (a full-size mask per
    object would not fit in memory at 4,096² and 200 objects).

    Attributes:
        image: ``H×W×3`` uint8 RGB.
        boxes: ``N×4`` int XYXY (exclusive right/bottom) of each object's mask.
        masks: each object's ``h×w`` bool mask inside its box.
        kinds: index into :data:`KINDS` of every object.
    """

    image: np.ndarray
    boxes: np.ndarray
    masks: list[np.ndarray]
    kinds: list[int]


def make_large_scene(seed: int, size: tuple[int, int], n_objects: int,
                     diameters: tuple[float, float] = (12, 64)) -> LargeScene:
    """A textured ``(height, width)`` background with ``n_objects`` shapes of the given diameter
    range (px) at places where they do not touch one another (fewer if the image is full), so
    every mask is whole. A pure function of its arguments; objects have no parts."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = _background(h, w, rng).astype(np.float32)
    taken = np.zeros((h // 8 + 1, w // 8 + 1), bool)  # 8-px cells already used (with a margin)
    boxes, masks, kinds = [], [], []
    for _ in range(20 * n_objects):
        if len(masks) == n_objects:
            break
        r = rng.uniform(*diameters) / 2
        half = int(np.ceil(r)) + 2
        cx, cy = int(rng.integers(half, w - half)), int(rng.integers(half, h - half))
        cells = (slice((cy - half) // 8, (cy + half) // 8 + 2), slice((cx - half) // 8, (cx + half) // 8 + 2))
        if taken[cells].any():
            continue
        kind = int(rng.integers(len(KINDS)))
        m = _shape_mask(kind, 2 * half + 1, 2 * half + 1, max(r, 3.0), rng, centre=(half, half))
        if m.sum() < MIN_AREA:
            continue
        x0, y0 = cx - half, cy - half
        _paint(img[y0:y0 + 2 * half + 1, x0:x0 + 2 * half + 1], m, _colour(rng), rng)
        taken[cells] = True
        ys, xs = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        boxes.append([x0 + xs[0], y0 + ys[0], x0 + xs[-1] + 1, y0 + ys[-1] + 1])
        masks.append(m[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1])
        kinds.append(kind)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return LargeScene(image, np.array(boxes, dtype=int).reshape(-1, 4), masks, kinds)
