"""Benchmark of `sap select` on the 100-image COCO subset with synthetic SAM-like bags.

Points come from the ground truth (`sap points`, P2BNet's quasi-centre rule by default); each
point gets 6 synthetic proposals built from its true mask (two parts, the object, the object
merged with a same-class neighbour, the object eroded and with a background band) whose
SAM-like scores favour the parts. The script trains the selector (``mil`` and ``sapnet``) and
reports pseudo-label mask mIoU / box mIoU against the ground truth for:

* ``sam-top1``: SAM's own best (the naive reference; a part by construction here);
* ``mil``: PSM alone; ``sapnet``: the full method;
* ``oracle``: the best proposal of each bag (the ceiling any selector can reach on these bags);

and the selector's training time per image and epoch. CPU-sized by default (resnet18, short
side 192, 1 epoch, 100 NPG draws, random backbone weights unless ``--backbone-weights`` says
otherwise); the official setting is ``--backbone resnet50 --backbone-weights imagenet --epochs 12
--min-size 800 --max-size 1333 --warmup-iters 500 --npg-num 500`` on a GPU::

    python scripts/bench_select.py [--epochs 1] [--backbone resnet18] [--min-size 192]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.evaluate import compare, evaluate_pseudo, format_table  # noqa: E402
from pseudolabel.core.points import derive_points  # noqa: E402
from pseudolabel.core.rle import rle_iou, segmentation_to_rle  # noqa: E402
from pseudolabel.selector import SelectConfig, run_select  # noqa: E402
from pseudolabel.selector.synthetic import LABELS, synthetic_bags, write_bags_cache  # noqa: E402


def oracle_annotations(gt: dict, bags: dict) -> list[dict]:
    """For each point, the proposal of its bag with the highest mask IoU with the truth."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    truth = {a["id"]: a for a in gt["annotations"]}
    out = []
    for image_bags in bags.values():
        for bag in image_bags:
            h, w = sizes[bag.image_id]
            ious = rle_iou(bag.rles, [segmentation_to_rle(truth[bag.ann_id]["segmentation"], h, w)])[:, 0]
            out.append({"id": bag.ann_id, "image_id": bag.image_id, "segmentation": bag.rles[int(ious.argmax())]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=next(p for p in (REPO.parent / "shared" / "data" / "coco_train2017_100", REPO / "tests" / "data" / "coco_cc_by") if p.is_dir()))
    ap.add_argument("--points", default="qc", help="point rule of `sap points` (qc, center, uniform)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--backbone-weights", default="none", help="imagenet | PATH | none")
    ap.add_argument("--min-size", type=int, default=192)
    ap.add_argument("--max-size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup-iters", type=int, default=50, help="official 500; shortened for short runs")
    ap.add_argument("--npg-num", type=int, default=100, help="official 500")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: temporary)")
    args = ap.parse_args()

    gt = json.loads((args.data / "annotations.json").read_text())
    points, _ = derive_points(gt, args.points, seed=args.seed)
    t0 = time.perf_counter()
    bags = synthetic_bags(gt, points, seed=args.seed)
    n_points = sum(len(b) for b in bags.values())
    print(f"{len(bags)} images, {n_points} points, 6 synthetic proposals each "
          f"({', '.join(LABELS)}) in {time.perf_counter() - t0:.1f} s")
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_select_"))
    work.mkdir(parents=True, exist_ok=True)
    ann = work / "points.json"
    ann.write_text(json.dumps(points))
    cache = write_bags_cache(work / "cache", points, bags, args.data / "images")
    base = SelectConfig(epochs=args.epochs, backbone=args.backbone, backbone_weights=args.backbone_weights,
                        min_size=args.min_size, max_size=args.max_size, batch_size=args.batch_size,
                        warmup_iters=args.warmup_iters, npg_num=args.npg_num, workers=args.workers,
                        seed=args.seed)
    print(f"selector: {args.backbone} ({args.backbone_weights} weights), input {args.min_size}x{args.max_size}, "
          f"{args.epochs} epochs, batch {args.batch_size}, warmup {args.warmup_iters} it, {args.npg_num} NPG draws")

    metrics, timing = {}, {}
    for method in ("sam-top1", "mil", "sapnet"):
        t = time.perf_counter()
        summary = run_select(ann, cache, work / f"{method}.json", replace(base, method=method),
                             images=args.data / "images")
        timing[method] = (time.perf_counter() - t, summary.stats.get("s_per_image_epoch"),
                          summary.changed_vs_sam_top1)
        metrics[method] = evaluate_pseudo(gt, json.loads((work / f"{method}.json").read_text()), boundary=False)
    metrics["oracle"] = evaluate_pseudo(gt, oracle_annotations(gt, bags), boundary=False)

    print()
    print(format_table(compare(metrics)))
    print()
    for method, (wall, per_img, changed) in timing.items():
        extra = f", training {per_img:.3f} s per image per epoch" if per_img is not None else ""
        print(f"{method:9s} wall {wall:6.1f} s{extra}, differs from SAM's top-1 on {100 * changed:.0f}% of points")
    picks = {}
    for method in ("sam-top1", "mil", "sapnet"):
        anns = json.loads((work / f"{method}.json").read_text())["annotations"]
        counts = {label: 0 for label in LABELS}
        for a in anns:
            counts[LABELS[a["sap"]["proposal_index"]]] += 1
        picks[method] = counts
    print("\nproposals chosen (synthetic type → count):")
    for method, counts in picks.items():
        print(f"  {method:9s} " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"\noutputs in {work}")


if __name__ == "__main__":
    main()
