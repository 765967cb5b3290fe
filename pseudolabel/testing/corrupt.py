"""`sap corrupt`: DAVIS-585-style coarse masks made from ground truth, to measure refinement.

DAVIS-585 degrades true masks with the defects real coarse masks have. Each non-crowd instance
mask here gets, in this order:

1. boundary jitter: the signed distance to the outline plus smooth random noise (Gaussian-
   filtered, correlation length ``jitter_scale·√area``, amplitude ``jitter·√area``), cut at 0;
2. a missing part (with probability ``missing_prob``): the pixels beyond a random straight cut,
   a share of the mask drawn from ``missing_share``;
3. holes inside: up to ``holes`` ellipses (radius ``hole_size·√area`` × U(0.5, 1.5)) removed
   around random interior pixels;
4. false-positive blobs outside: up to ``blobs`` ellipses (radius ``blob_size·√area`` ×
   U(0.5, 1.5)) added around random background pixels within ``0.3·√area`` of the object.

``severity`` scales every amplitude and size. The random stream of an annotation depends only
on ``(seed, annotation id)``, so the result does not depend on file order and is repeatable.
An operation that would empty the mask is skipped.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pseudolabel.core.coco import load_coco_json
from pseudolabel.core.config import sidecar_path, to_jsonable, write_run_config
from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.progress import logger, progress
from pseudolabel.core.rle import decode_rle, encode_mask, rle_area, rle_to_bbox_xywh


@dataclass
class CorruptConfig:
    """Settings of `sap corrupt` (sizes relative to √(mask area))."""

    seed: int = 0
    severity: float = 1.0
    jitter: float = 0.05
    jitter_scale: float = 0.15
    missing_prob: float = 0.5
    missing_share: tuple[float, float] = (0.05, 0.2)
    holes: int = 2
    hole_size: float = 0.08
    blobs: int = 2
    blob_size: float = 0.1
    skip_crowd: bool = True


def annotation_rng(seed: int, ann_id: Any) -> np.random.Generator:
    """The random stream of one annotation: a function of ``(seed, id)`` only."""
    key = ann_id if isinstance(ann_id, int) and ann_id >= 0 else \
        int(hashlib.sha256(str(ann_id).encode()).hexdigest()[:16], 16)
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, key]))


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def corrupt_mask(mask: np.ndarray, rng: np.random.Generator, cfg: CorruptConfig = CorruptConfig()) -> np.ndarray:
    """One coarse version of an ``H×W`` mask (see the module docstring); same shape, bool."""
    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    if area == 0:
        return mask.copy()
    s = cfg.severity
    size = np.sqrt(area)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    pad = int(np.ceil(0.45 * size * max(s, 0.1))) + 3
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + 1 + pad, h)
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + 1 + pad, w)
    win = mask[y0:y1, x0:x1]
    shape = win.shape

    # 1. boundary jitter
    signed = ndimage.distance_transform_edt(win) - ndimage.distance_transform_edt(~win)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(1.0, cfg.jitter_scale * size))
    noise /= max(float(noise.std()), 1e-12)
    out = signed + s * cfg.jitter * size * noise > 0
    if not out.any():
        out = win.copy()

    # 2. a missing part beyond a straight cut
    if rng.random() < cfg.missing_prob:
        theta = rng.uniform(0, 2 * np.pi)
        share = min(s * rng.uniform(*cfg.missing_share), 0.9)
        py, px = np.nonzero(out)
        proj = np.cos(theta) * px + np.sin(theta) * py
        cut = np.quantile(proj, 1.0 - share)
        keep = out.copy()
        keep[py[proj > cut], px[proj > cut]] = False
        if keep.any():
            out = keep

    # 3. holes around interior pixels
    inner = np.argwhere(out)
    for _ in range(int(rng.integers(0, cfg.holes + 1))):
        cy, cx = inner[rng.integers(len(inner))]
        r = s * cfg.hole_size * size * rng.uniform(0.5, 1.5, size=2)
        hole = _ellipse(shape, cy, cx, max(r[0], 0.5), max(r[1], 0.5), rng.uniform(0, np.pi))
        if (out & ~hole).any():
            out &= ~hole

    # 4. false-positive blobs near the object
    near = ~out & (ndimage.distance_transform_edt(~out) <= max(0.3 * size * s, 1.0))
    cand = np.argwhere(near)
    for _ in range(int(rng.integers(0, cfg.blobs + 1))):
        if len(cand) == 0:
            break
        cy, cx = cand[rng.integers(len(cand))]
        r = s * cfg.blob_size * size * rng.uniform(0.5, 1.5, size=2)
        out |= _ellipse(shape, cy, cx, max(r[0], 0.5), max(r[1], 0.5), rng.uniform(0, np.pi))

    full = np.zeros_like(mask)
    full[y0:y1, x0:x1] = out
    return full


def corrupt_coco(gt: str | os.PathLike, out: str | os.PathLike, cfg: CorruptConfig | None = None) -> dict[str, int]:
    """Write a copy of the COCO file ``gt`` whose instance masks are corrupted.

    Every annotation keeps its id and fields; ``segmentation`` (compressed RLE), ``bbox`` and
    ``area`` are replaced for corrupted ones. Crowd annotations (unless ``skip_crowd`` is off),
    annotations without a mask and unusable masks pass through unchanged.

    Returns:
        Counts: ``corrupted``, ``passed_through``.
    """
    from refine.inputs import classify_segmentation

    cfg = cfg or CorruptConfig()
    coco = load_coco_json(gt)
    images = {img["id"]: img for img in coco["images"]}
    counts = {"corrupted": 0, "passed_through": 0}
    anns = []
    for a in progress(coco["annotations"], desc="corrupt", unit="ann"):
        img = images[a["image_id"]]
        rle, _ = classify_segmentation(a.get("segmentation"), img["height"], img["width"])
        if rle is None or (cfg.skip_crowd and a.get("iscrowd", 0)):
            anns.append(a)
            counts["passed_through"] += 1
            continue
        coarse = encode_mask(corrupt_mask(decode_rle(rle), annotation_rng(cfg.seed, a["id"]), cfg))
        new = copy.deepcopy(a)
        new.update(segmentation=coarse, bbox=rle_to_bbox_xywh(coarse), area=float(rle_area(coarse)))
        anns.append(new)
        counts["corrupted"] += 1
    result = {k: v for k, v in coco.items() if k != "annotations"}
    result["annotations"] = anns
    info = dict(coco["info"]) if isinstance(coco.get("info"), dict) else {}
    info["sap_corrupt"] = {"source": str(gt), "settings": to_jsonable(cfg), **counts}
    result["info"] = info
    write_json_atomic(out, result)
    write_run_config(sidecar_path(Path(out)), "corrupt", cfg, inputs={"gt": str(gt)}, counts=counts)
    logger.debug("corrupt: %s", counts)
    return counts
