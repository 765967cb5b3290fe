"""Benchmark of `sap eval`'s pseudo-label measurement on ../shared/data/coco_train2017_100 (or tests/data).

Pseudo-labels are the ground-truth masks shifted a few pixels (so IoUs are not all 1). Reports
annotations per second of :func:`evaluate_pseudo` with and without boundary IoU, and checks
the cropped boundary IoU against a naive reference (whole-image masks, 3×3 erosion repeated
d times on a zero-padded copy) for equality and speed.

    .venv/bin/python scripts/bench_eval.py [--data DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from pseudolabel.evaluate.masks import boundary_dilation, boundary_iou
from pseudolabel.evaluate.pseudo import evaluate_pseudo
from pseudolabel.core.rle import decode_rle, encode_mask, segmentation_to_rle

REPO = Path(__file__).resolve().parents[1]


def naive_boundary_iou(g: np.ndarray, p: np.ndarray) -> float:
    h, w = g.shape
    d = boundary_dilation(h, w)

    def band(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m.astype(np.uint8), 1)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
        return (m > 0) & (eroded == 0)

    bg, bp = band(g), band(p)
    union = (bg | bp).sum()
    return float((bg & bp).sum() / union) if union else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=next(p for p in (REPO.parent / "shared" / "data" / "coco_train2017_100", REPO / "tests" / "data" / "coco_cc_by") if p.is_dir()))
    ap.add_argument("--limit", type=int, default=None, help="at most this many annotations")
    args = ap.parse_args()
    gt = json.loads((args.data / "annotations.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    anns = [a for a in gt["annotations"] if not a.get("iscrowd", 0)][: args.limit]
    pseudo, pairs = [], []
    rng = np.random.default_rng(0)
    for a in anns:
        h, w = sizes[a["image_id"]]
        g = decode_rle(segmentation_to_rle(a["segmentation"], h, w))
        p = np.roll(g, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
        pseudo.append({"id": a["id"], "image_id": a["image_id"], "segmentation": encode_mask(p)})
        pairs.append((g, p))
    sub = {**gt, "annotations": anns}

    t = time.perf_counter()
    m = evaluate_pseudo(sub, pseudo)
    full_s = time.perf_counter() - t
    t = time.perf_counter()
    evaluate_pseudo(sub, pseudo, boundary=False)
    rle_s = time.perf_counter() - t

    t = time.perf_counter()
    fast = [boundary_iou(g, p) for g, p in pairs]
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    slow = [naive_boundary_iou(g, p) for g, p in pairs]
    slow_s = time.perf_counter() - t
    diff = float(np.max(np.abs(np.array(fast) - np.array(slow))))

    n = len(anns)
    o = m["overall"]
    print(f"{n} annotations on {len(sizes)} images (shift of up to 4 px)")
    print(f"  mask mIoU {100 * o['mask_miou']:.1f}  box mIoU {100 * o['box_miou']:.1f}  "
          f"boundary mIoU {100 * o['boundary_miou']:.1f}")
    print(f"  evaluate_pseudo with boundary IoU: {full_s:.2f} s ({n / full_s:.0f} ann/s)")
    print(f"  evaluate_pseudo without:           {rle_s:.2f} s ({n / rle_s:.0f} ann/s)")
    print(f"  boundary IoU cropped: {1e3 * fast_s / n:.2f} ms/ann; naive whole image: "
          f"{1e3 * slow_s / n:.2f} ms/ann ({slow_s / fast_s:.1f}x); max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
