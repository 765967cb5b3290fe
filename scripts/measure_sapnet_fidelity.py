"""Measure what each official-vs-paper SAPNet rule changes (the figures of docs/fidelity.md).

On the 100-image COCO subset with synthetic SAM-like bags (as scripts/bench_select.py), written
as an official SAPNet training file whose ``true_bbox`` is the ground-truth box (as in the
official data), the script:

1. trains the selector once with ``--reference official`` and selects with it;
2. selects again with the same weights, one selection-time rule switched to its other value
   (``rule_bms``, ``rule_ppg_box``, ``rule_roi_align``, ``rule_pdg_point``): the share of points
   whose final mask differs isolates that rule;
3. trains and selects once per training-time rule switched (``rule_bn``, ``rule_neg_norm``,
   ``rule_pdg_point``, ``rule_roi_align``) and once with ``--reference paper``: the share that
   differs then includes the drift of training (compare with the ``seed`` row: the official
   setting retrained with another seed);
4. counts the MPS targets (ranks 2, 4, 6) that differ between the official and paper rules;
5. compares RoIAlign features (official aligned/adaptive vs legacy) and the two normalisations of
   the negative loss on one batch.

CPU-sized by default (ResNet-18 from random weights, short side 192, 1 epoch, 40 images): the
shares measure how often a rule changes the decision of a weakly trained selector, not the
paper's accuracy. ::

    python scripts/measure_sapnet_fidelity.py [--images 40] [--epochs 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.coco import mps_alternatives  # noqa: E402
from pseudolabel.core.points import derive_points  # noqa: E402
from pseudolabel.core.sapnet_format import bags_to_sapnet, read_sapnet  # noqa: E402
from pseudolabel.evaluate import evaluate_pseudo  # noqa: E402
from pseudolabel.selector import SelectConfig, run_select  # noqa: E402
from pseudolabel.testing.synthetic import synthetic_bags  # noqa: E402

SELECTION_RULES = {"rule_bms": "paper", "rule_ppg_box": "paper", "rule_roi_align": "legacy",
                   "rule_pdg_point": "paper"}
TRAINING_RULES = {"rule_bn": "frozen", "rule_neg_norm": "negatives", "rule_pdg_point": "paper",
                  "rule_roi_align": "legacy"}


def official_file(gt: dict, points: dict, n_images: int, seed: int, path: Path) -> Path:
    """Synthetic bags as an official SAPNet training file, ``true_bbox`` = the ground-truth box."""
    keep = {img["id"] for img in gt["images"][:n_images]}
    points = {**points, "images": [im for im in points["images"] if im["id"] in keep],
              "annotations": [a for a in points["annotations"] if a["image_id"] in keep]}
    bags = synthetic_bags(gt, points, seed=seed)
    data = bags_to_sapnet(points, bags)
    boxes = {a["id"]: a["bbox"] for a in gt["annotations"]}
    for ann in data["annotations"]:
        ann["true_bbox"] = [float(v) for v in boxes[ann["id"]]]
    path.write_text(json.dumps(data))
    (path.parent / "points.json").write_text(json.dumps(points))
    return path


def chosen(path: Path) -> dict[int, int]:
    return {a["id"]: a["sap"]["proposal_index"] for a in json.loads(path.read_text())["annotations"]}


def differs(a: dict[int, int], b: dict[int, int]) -> float:
    common = set(a) & set(b)
    return sum(a[k] != b[k] for k in common) / max(len(common), 1)


def miou(gt: dict, path: Path) -> float:
    m = evaluate_pseudo(gt, json.loads(path.read_text()), boundary=False)
    return float(m["overall"]["mask_miou"]) if "overall" in m else float("nan")


def mps_share(path: Path) -> float:
    """Share of MPS targets (ranks 2, 4, 6) that differ between the official and paper rules."""
    same = total = 0
    for a in json.loads(path.read_text())["annotations"]:
        off = mps_alternatives({**a, "sap": {**a["sap"], "mps": "official"}})
        pap = mps_alternatives({**a, "sap": {**a["sap"], "mps": "paper"}})
        for r in (2, 4, 6):
            if r - 2 < min(len(off), len(pap)):
                same += off[r - 2] == pap[r - 2]
                total += 1
    return 1 - same / max(total, 1)


def batch_figures(ann: Path, proposals: Path, images: Path, base: SelectConfig) -> dict[str, float]:
    """RoIAlign feature difference and negative-loss normalisations on one batch."""
    from pseudolabel.selector.data import BagDataset, collate
    from pseudolabel.selector.train import build_model

    points = json.loads(ann.read_text())
    bags = read_sapnet(proposals)
    cats = sorted(c["id"] for c in points["categories"])
    data = BagDataset(points["images"], bags, images, {c: i for i, c in enumerate(cats)}, base.max_size,
                      base.min_size, 0.0, 0)
    batch = collate([data[i] for i in range(min(4, len(data)))])
    step = build_model(replace(base, method="sapnet"), len(cats))
    step.eval()
    with torch.no_grad():
        feats = step.net.features(batch.images)
        boxes = [torch.as_tensor(np.concatenate(s.boxes), dtype=torch.float32) for s in batch.samples]
        from pseudolabel.selector.model import SelectorNet

        legacy = SelectorNet(len(cats), 2, base.backbone, "none", roi_align="legacy").roi_align
        a = step.net.roi_align(feats, boxes, batch.image_hw)
        b = legacy(feats, boxes, batch.image_hw)
        trace: dict = {}
        step(batch.images, batch.samples, True, np.random.default_rng(0), trace=trace)
    points_n = sum(len(s.boxes) for s in batch.samples)
    negs = sum(len(n) for n in trace["negs"])
    return {"roi_rel_diff": float((a - b).norm() / b.norm()), "negatives": negs, "points": points_n,
            "neg_norm_ratio": negs / points_n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "coco_train2017_100")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--backbone-weights", default="none")
    ap.add_argument("--min-size", type=int, default=192)
    ap.add_argument("--max-size", type=int, default=320)
    ap.add_argument("--npg-num", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    gt = json.loads((args.data / "annotations.json").read_text())
    points, _ = derive_points(gt, "qc", seed=args.seed)
    work = args.out or Path(tempfile.mkdtemp(prefix="measure_sapnet_"))
    work.mkdir(parents=True, exist_ok=True)
    props = official_file(gt, points, args.images, args.seed, work / "sapnet_official.json")
    ann, images = work / "points.json", args.data / "images"
    base = SelectConfig(method="sapnet", epochs=args.epochs, backbone=args.backbone,
                        backbone_weights=args.backbone_weights, min_size=args.min_size, max_size=args.max_size,
                        batch_size=4, warmup_iters=5, npg_num=args.npg_num, workers=0, seed=args.seed)
    t0 = time.perf_counter()
    ref = work / "official.json"
    run_select(ann, props, ref, base, images=images)
    weights = work / "official.selector" / "selector.pt"
    rows = [("official (reference)", "-", 0.0, miou(gt, ref))]
    for rule, value in SELECTION_RULES.items():
        out = work / f"select_{rule}.json"
        run_select(ann, props, out, replace(base, weights=str(weights), **{rule: value}), images=images)
        rows.append((f"{rule}: {value}", "selection only", differs(chosen(ref), chosen(out)), miou(gt, out)))
    for name, over in [("seed 1 (training drift)", {"seed": args.seed + 1}),
                       *[(f"{r}: {v}", {r: v}) for r, v in TRAINING_RULES.items()],
                       ("reference: paper", {"reference": "paper"})]:
        out = work / f"train_{name.split(':')[0].split(' ')[0]}.json"
        run_select(ann, props, out, replace(base, work_dir=str(work / (out.stem + ".selector")), **over),
                   images=images)
        rows.append((name, "retrained", differs(chosen(ref), chosen(out)), miou(gt, out)))
    extra = batch_figures(ann, props, images, base)
    n_points = len(chosen(ref))
    print(f"{args.images} images, {n_points} points; {args.backbone} ({args.backbone_weights}), "
          f"{args.min_size}x{args.max_size}, {args.epochs} epoch(s), {args.npg_num} NPG draws; "
          f"{time.perf_counter() - t0:.0f} s\n")
    print("| rule switched from official | how | final mask differs | mask mIoU |")
    print("|---|---|---|---|")
    for name, how, share, m in rows:
        print(f"| {name} | {how} | {100 * share:.1f} % | {100 * m:.1f} |")
    print(f"\nMPS targets (ranks 2, 4, 6) that differ, official vs paper rule: {100 * mps_share(ref):.1f} %")
    print(f"RoIAlign official vs legacy, relative feature difference: {100 * extra['roi_rel_diff']:.1f} %")
    print(f"negative loss: {extra['negatives']} negatives for {extra['points']} points in a batch of 4 images; "
          f"dividing by points instead of negatives multiplies it by {extra['neg_norm_ratio']:.0f}")
    print(f"\noutputs in {work}")


if __name__ == "__main__":
    main()
