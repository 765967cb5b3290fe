"""How far SOLOv2's training targets in ``sap`` are from AdelaiDet's rules, measured on a COCO file.

    python scripts/fidelity_targets.py [--data tests/data/coco_cc_by] [--epochs 2] [--sizes 640-800]

Each image is drawn ``--epochs`` times at training sizes (short side from ``--sizes``, flips), its
masks resized as ``sap train`` resizes them, and padded alone to a multiple of 32 (one image per
pass; passes of 2 differ only by the partner's padding). Printed, for the rules of
docs/fidelity.md "SOLOv2 training":

* cell conflicts: the share of positive cells (all levels) that two or more instances claim; of
  those, the share where AdelaiDet's winner (the later annotation) has another class than ours
  (the smaller instance); and the extra mask targets AdelaiDet trains there (one per claimant);
* the stride-4 mask target: mean IoU between ``sap``'s (4×4 cells at least half covered) and
  AdelaiDet's (OpenCV bilinear resize to ``int(w/4 + 0.5)``, values rounded), each instance;
* the centre of mass: the share of instances whose centre region changes when pixel ``i`` sits at
  ``i`` (AdelaiDet) instead of ``i + 0.5`` (``sap``), and the change in positive cells.

The AdelaiDet rules here are rewritten from its adet/modeling/solov2/solov2.py
(``get_ground_truth_single``) for this measurement; they are not used for training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from pseudolabel.core.rle import decode_rles
from segtrain.data import draw_augmentation, load_dataset, masks_to_input_frame, parse_min_sizes, resized_hw
from segtrain.model import SOLOv2Config
from segtrain.targets import centre_region, downsample_stride4, targets_from_masks

REPO = Path(__file__).resolve().parents[1]


def claims(centers: np.ndarray, wh: np.ndarray, padded: tuple[int, int], cfg: SOLOv2Config) -> list[dict]:
    """Per level, cell → indices of the instances whose centre region holds it (annotation order)."""
    scale = np.sqrt(wh[:, 0] * wh[:, 1])
    out = []
    for s, (lo, hi) in zip(cfg.num_grids, cfg.scale_ranges):
        cells: dict[tuple[int, int], list[int]] = {}
        for i in np.nonzero((scale >= lo) & (scale <= hi))[0]:
            t, b, l, r = centre_region(tuple(centers[i]), tuple(wh[i]), padded, s, cfg.sigma)
            for y in range(t, b + 1):
                for x in range(l, r + 1):
                    cells.setdefault((y, x), []).append(int(i))
        out.append(cells)
    return out


def adelaidet_stride4(mask: np.ndarray) -> np.ndarray:
    """AdelaiDet's ``imrescale(mask, 1/4)``: OpenCV bilinear to ``int(w/4 + 0.5)``, uint8 rounding."""
    h, w = mask.shape
    return cv2.resize(mask.astype(np.uint8), (int(w * 0.25 + 0.5), int(h * 0.25 + 0.5)),
                      interpolation=cv2.INTER_LINEAR)


def iou_padded(a: np.ndarray, b: np.ndarray) -> float:
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    pa, pb = np.zeros((h, w), bool), np.zeros((h, w), bool)
    pa[:a.shape[0], :a.shape[1]], pb[:b.shape[0], :b.shape[1]] = a > 0, b > 0
    union = (pa | pb).sum()
    return float((pa & pb).sum() / union) if union else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "tests" / "data" / "coco_cc_by"),
                    help="folder with annotations.json and images/")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sizes", default="640-800")
    ap.add_argument("--max-size", type=int, default=1333)
    args = ap.parse_args()
    data = Path(args.data)
    records, _, stats = load_dataset(data / "annotations.json", data / "images")
    cfg, sizes = SOLOv2Config(), parse_min_sizes(args.sizes)
    pos = conflict = class_differs = extra_masks = 0
    ious, moved, instances, pos_half = [], 0, 0, 0
    for epoch in range(args.epochs):
        for k, rec in enumerate(records):
            short, flip = draw_augmentation(epoch * len(records) + k, sizes, 0.5)
            h, w = resized_hw(rec.height, rec.width, short, args.max_size)
            full = masks_to_input_frame(decode_rles(rec.rles), (h, w), flip)
            t = targets_from_masks(torch.from_numpy(full), torch.tensor(rec.labels), mask_target="sap", centre="sap")
            alive = full.reshape(len(full), -1).any(axis=1)
            ours4 = downsample_stride4(torch.from_numpy(full[alive])).numpy()
            ious += [iou_padded(o, adelaidet_stride4(m)) for o, m in zip(ours4, full[alive])]
            padded = (-(-h // 32) * 32, -(-w // 32) * 32)
            boxes, labels = t.boxes.double().numpy(), t.labels.numpy()
            wh = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
            centers = t.centers.double().numpy()
            area = wh[:, 0] * wh[:, 1]
            here, half = claims(centers, wh, padded, cfg), claims(centers - 0.5, wh, padded, cfg)
            for cells in here:
                pos += len(cells)
                for owners in cells.values():
                    if len(owners) > 1:
                        conflict += 1
                        extra_masks += len(owners) - 1
                        smallest = min(owners, key=lambda i: (area[i], -i))
                        class_differs += int(labels[owners[-1]] != labels[smallest])
            pos_half += sum(len(c) for c in half)
            instances += len(labels)
            for i in range(len(labels)):
                a = [sorted(c for c, o in cells.items() if i in o) for cells in here]
                b = [sorted(c for c, o in cells.items() if i in o) for cells in half]
                moved += int(a != b)
    print(f"{data.name}: {stats.summary()}; {args.epochs} draws per image at short side {args.sizes}, "
          f"each image padded alone to a multiple of 32")
    print(f"cell conflicts: {conflict / pos:.2%} of {pos} positive cells have 2+ claimants; "
          f"AdelaiDet's class differs from ours on {class_differs / max(conflict, 1):.1%} of those "
          f"({class_differs / pos:.2%} of positive cells); AdelaiDet trains {extra_masks / pos:.2%} more mask "
          f"targets per positive cell")
    print(f"stride-4 mask target: mean IoU {np.mean(ious):.3f} (median {np.median(ious):.3f}, "
          f"5th percentile {np.percentile(ious, 5):.3f}) over {len(ious)} instances")
    print(f"centre of mass at i instead of i + 0.5: {moved / instances:.2%} of {instances} instances own other "
          f"cells; positive cells {pos_half / pos - 1:+.2%}")


if __name__ == "__main__":
    main()
