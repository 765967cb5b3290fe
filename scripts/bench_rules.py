"""What each selection rule of `sap select` costs or gains, with a perfect network.

A stand-in network (:class:`OracleNet`) scores every box by its IoU with the true box of the
object it best overlaps: stage 0 then picks the proposal closest to the truth and stage 1 the
box of its bag closest to the truth, each at a chosen class probability (the top-1 score). Its
picks go through the real :class:`~pseudolabel.selector.mil.SelectorStep` (top-1 box, BMS, PPG,
final box-to-mask match) under each rule set, so the table shows what the rules alone make of
perfect scores: the ceiling of every trained selector.

Bags are built from the ground-truth masks of real photos (:mod:`pseudolabel.testing.synthetic`:
part, whole, merged-with-neighbour, eroded, small part, background band) on ``tests/data/coco_cc_by``
and the 100 COCO photos of ``../shared`` (when present), two seeds (points and proposals)::

    python scripts/bench_rules.py                     # every rule, official → sap, both seeds
    python scripts/bench_rules.py --scores 0.05,0.9   # other top-1 scores

The naive reference printed beside the rules is SAM's top-1 and a random pick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.points import derive_points  # noqa: E402
from pseudolabel.core.rle import box_iou_xyxy, rle_iou, segmentation_to_rle  # noqa: E402
from pseudolabel.selector.data import Sample  # noqa: E402
from pseudolabel.selector.mil import SelectorStep  # noqa: E402
from pseudolabel.selector.options import SelectConfig  # noqa: E402
from pseudolabel.selector.reference import REFERENCES, SAP_RULES  # noqa: E402
from pseudolabel.testing.synthetic import synthetic_bags  # noqa: E402


class OracleNet(nn.Module):
    """A selector network that knows the truth: box rows are ``(image, x1, y1, x2, y2)``; a box's
    class output is ``score`` at the label of the true box it overlaps most, and its instance
    logit is ``sharpness × IoU`` with that box (so the box closest to the truth wins its bag)."""

    stages = 2

    def __init__(self, truths: list[tuple[np.ndarray, np.ndarray]], num_classes: int, score: float,
                 sharpness: float = 60.0) -> None:
        super().__init__()
        self.truths, self.num_classes, self.score, self.sharpness = truths, num_classes, score, sharpness
        self.dummy = nn.Parameter(torch.zeros(1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def box_features(self, feats, boxes: list[torch.Tensor], image_hw) -> torch.Tensor:
        return torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b.double()], 1) for i, b in enumerate(boxes)])

    def box_logits(self, x: torch.Tensor, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_out = self.num_classes + (1 if stage == 0 else 0)
        cls = torch.full((len(x), n_out), float(np.log((1 - self.score) / max(1, n_out - 1))))
        ins = torch.zeros(len(x), n_out)
        for r, row in enumerate(x.numpy()):
            boxes, labels = self.truths[int(row[0])]
            iou = box_iou_xyxy(row[None, 1:], boxes)[0]
            j = int(np.argmax(iou))
            cls[r, labels[j]] = float(np.log(self.score))
            ins[r, :] = self.sharpness * float(iou[j])
        return cls, ins


def ceiling_choices(gt: dict, bags: dict, cfg: SelectConfig, score: float) -> dict[int, int]:
    """The proposal the perfect network ends at, per annotation id, under ``cfg``'s rules."""
    cats = sorted({c["id"] for c in gt["categories"]})
    index = {c: i for i, c in enumerate(cats)}
    truth = {a["id"]: a for a in gt["annotations"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    out = {}
    for image_id, image_bags in bags.items():
        if not image_bags:
            continue
        h, w = sizes[image_id]
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (truth[b.ann_id]["bbox"] for b in image_bags)])
        labels = np.array([index[b.category_id] for b in image_bags])
        step = SelectorStep(OracleNet([(boxes, labels)], len(cats), score), cfg)
        sample = Sample(image_id, None, (h, w), (1.0, 1.0), False, [b.ann_id for b in image_bags],
                        np.array([b.point for b in image_bags], dtype=np.float64), labels,
                        [np.asarray(b.boxes, dtype=np.float64) for b in image_bags])
        with torch.no_grad():
            for c in step(torch.zeros(1, 1, h, w), [sample], train=False):
                out[c.ann_id] = c.index
    return out


def rule_sets(leave_one_out: bool = False) -> dict[str, dict]:
    """``official``, each rule of the ``sap`` preset alone on top of it, the preset, and with
    ``leave_one_out`` the preset without each rule (that rule back at its official value)."""
    sets = {"official": {}}
    for key, value in SAP_RULES.items():
        sets[f"{key}: {value}"] = {key: value}
    sets["sap (all)"] = {"reference": "sap"}
    if leave_one_out:
        for key in SAP_RULES:
            sets[f"sap without {key}"] = {"reference": "sap", key: REFERENCES["official"][key]}
    return sets


def mask_ious(gt: dict, bags: dict) -> dict[int, np.ndarray]:
    """Mask IoU of every proposal with its object's true mask, by annotation id."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    truth = {a["id"]: a for a in gt["annotations"]}
    return {b.ann_id: rle_iou(b.rles, [segmentation_to_rle(truth[b.ann_id]["segmentation"], *sizes[b.image_id])])[:, 0]
            for bs in bags.values() for b in bs}


def rule_table(gt: dict, bags: dict, scores: list[float]) -> dict[str, dict[float, float]]:
    """mIoU of the perfect network's final pick under every rule set, at every top-1 score."""
    ious = mask_ious(gt, bags)
    table = {}
    for name, flags in rule_sets(leave_one_out=True).items():
        cfg = replace(SelectConfig(method="sapnet"), **flags)
        table[name] = {}
        for s in scores:
            picks = ceiling_choices(gt, bags, cfg, s)
            table[name][s] = float(np.mean([ious[a][k] for a, k in picks.items()]))
    all_ious = np.concatenate([v[None] for v in ious.values()])
    table["sam-top1"] = {s: float(np.mean([ious[b.ann_id][int(np.argmax(b.scores))] for bs in bags.values()
                                           for b in bs])) for s in scores}
    table["random pick"] = {s: float(all_ious.mean()) for s in scores}
    table["oracle"] = {s: float(all_ious.max(1).mean()) for s in scores}
    return table


def trained_table(work: Path, seed: int, size: int) -> dict[str, float]:
    """A trained sapnet of ``scripts/bench_select.py --out WORK`` (its ``sapnet/selector.pt``) selects
    again under every rule set (same network, other rules); mIoU of the picks per rule set."""
    from pseudolabel.selector import run_select

    gt = json.loads((work / "data" / "annotations.json").read_text())
    points = json.loads((work / "points.json").read_text())
    ious = mask_ious(gt, synthetic_bags(gt, points, seed=seed))
    base = SelectConfig(method="sapnet", weights=str(work / "sapnet" / "selector.pt"), backbone="resnet18",
                        min_size=size, max_size=size, workers=0, seed=seed)
    table = {}
    for name, flags in rule_sets().items():
        out = work / f"rules_{name.split(':')[0].replace(' ', '').replace('(', '').replace(')', '')}.json"
        if not out.is_file():
            run_select(work / "points.json", work / "cache", out, replace(base, work_dir=str(out.with_suffix("")), **flags),
                       images=work / "data" / "images")
        picks = [(a["id"], a["sap"]["proposal_index"]) for a in json.loads(out.read_text())["annotations"]]
        table[name] = float(np.mean([ious[a][k] for a, k in picks]))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, action="append", default=None, help="COCO folders (annotations.json)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--scores", default="0.1,0.9", help="top-1 class probabilities of the perfect network")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--trained", type=Path, action="append", default=None,
                    help="instead: a `bench_select.py --scenes shapes --out DIR` folder whose sapnet selects again "
                         "under every rule set (its seed is the folder name's last digit)")
    ap.add_argument("--size", type=int, default=128, help="--trained: the input size it was trained at")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.trained:
        for work in args.trained:
            table = trained_table(work, int(str(work)[-1]), args.size)
            print(f"\n{work}: trained sapnet, mask mIoU of the final pick")
            print("| rules | mask mIoU |\n|---|---|")
            for name, v in table.items():
                print(f"| {name} | {v:.3f} |")
        return
    shared = Path(os.environ.get("SAP_COCO100", REPO.parent / "shared" / "data" / "coco_train2017_100"))
    folders = args.data or [p for p in (REPO / "tests" / "data" / "coco_cc_by", shared) if p.is_dir()]
    scores = [float(s) for s in args.scores.split(",")]
    results = {}
    for folder in folders:
        gt = json.loads((folder / "annotations.json").read_text())
        for seed in map(int, args.seeds.split(",")):
            points, _ = derive_points(gt, "qc", seed=seed)
            bags = synthetic_bags(gt, points, seed=seed)
            table = rule_table(gt, bags, scores)
            key = f"{folder.name} seed {seed}"
            results[key] = table
            n = sum(len(b) for b in bags.values())
            print(f"\n{key}: {n} points, perfect network; mask mIoU of the final pick")
            print("| rules | " + " | ".join(f"top-1 score {s}" for s in scores) + " |")
            print("|---|" + "---|" * len(scores))
            for name, row in table.items():
                print(f"| {name} | " + " | ".join(f"{row[s]:.3f}" for s in scores) + " |")
    if args.json:
        args.json.write_text(json.dumps({k: {n: {str(s): v for s, v in r.items()} for n, r in t.items()}
                                         for k, t in results.items()}, indent=1))


if __name__ == "__main__":
    main()
