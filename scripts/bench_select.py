"""Benchmark of `sap select`: what each method picks, on bags whose proposal kinds are known.

Two kinds of scenes, each with 6 synthetic SAM-like proposals per point made from the true mask
(:mod:`pseudolabel.testing.synthetic`: from the point a part, the whole object, the object
merged with its nearest same-class neighbour; from point + box the object eroded, a smaller
part, the object with a background band; SAM-like scores that favour the parts):

* ``--scenes coco``: the 100 COCO photos of ../shared (QC points). With a backbone from random
  weights the features carry little about the category: the diagnosis of an uninformative
  selector.
* ``--scenes shapes``: generated scenes of textured discs, squares and triangles
  (:mod:`pseudolabel.testing.scenes`) whose category a ResNet-18 from scratch learns on a CPU in
  minutes: the check that the selector learns. ``--class-by texture`` makes every part of an
  object tell its class (the MIL part-domination case); ``--class-by spots`` (2, 3 or 4 spots on
  a plain shape) makes a part look like another class.

Every method goes through the real `sap select` path (a proposal cache, ``run_select``). The
script prints, against the ground truth: mask/box mIoU for ``sam-top1`` (the naive reference),
``mil``, ``sapnet`` (and with ``--ablations`` sapnet without PDG, PNPG or BMS), a random pick
(the expected value over the bag) and the oracle (the best proposal of each bag); which kind of
proposal each method picks; for sapnet, which kind each stage's top-1 points at (PSM, PSM after
BMS, PRM, final); and whether a low margin (``sap.margin``) flags a wrong pick::

    python scripts/bench_select.py --scenes shapes            # the learnable benchmark
    python scripts/bench_select.py --scenes coco --epochs 2   # the photos, random backbone
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.points import derive_points  # noqa: E402
from pseudolabel.core.rle import box_iou_xyxy, rle_iou, segmentation_to_rle  # noqa: E402
from pseudolabel.evaluate import compare, evaluate_pseudo, format_table  # noqa: E402
from pseudolabel.selector import SelectConfig, run_select  # noqa: E402
from pseudolabel.selector.reference import apply_reference  # noqa: E402
from pseudolabel.testing.synthetic import LABELS, synthetic_bags, write_bags_cache  # noqa: E402

#: the learnable benchmark's settings: the best measured (docs/selector.md, "What the selector learns": 30 epochs, 300
#: iterations, at lr 0.16 per 32, above a random pick on both scene families; 0.3 scored 0.821 on seed 0 but
#: 0.624 on seed 1; 384 px input, where NPG's part negatives fire, did no better at 2.9x the cost per iteration)
SHAPES = dict(n_images=40, size=128, epochs=30, min_size=128, max_size=128, batch_size=4, lr=0.16,
              warmup_iters=20, npg_num=50)
COCO = dict(epochs=1, min_size=192, max_size=320, batch_size=4, lr=0.015, warmup_iters=50, npg_num=100)
ABLATIONS = {"sapnet --no-pdg": {"pdg": False}, "sapnet --no-pnpg": {"pnpg": False},
             "sapnet --no-bms": {"bms": False}}
WRONG_IOU = 0.75  # a pick whose mask IoU with the truth is below this counts as wrong


def proposal_ious(gt: dict, bags: dict) -> dict[int, np.ndarray]:
    """Mask IoU of every proposal with its object's true mask, by annotation id."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    truth = {a["id"]: a for a in gt["annotations"]}
    out = {}
    for image_bags in bags.values():
        for bag in image_bags:
            h, w = sizes[bag.image_id]
            out[bag.ann_id] = rle_iou(bag.rles, [segmentation_to_rle(truth[bag.ann_id]["segmentation"], h, w)])[:, 0]
    return out


def oracle_annotations(bags: dict, ious: dict[int, np.ndarray]) -> list[dict]:
    """For each point, the proposal of its bag with the highest mask IoU with the truth."""
    return [{"id": b.ann_id, "image_id": b.image_id, "segmentation": b.rles[int(ious[b.ann_id].argmax())]}
            for bs in bags.values() for b in bs]


def bags_with_pdg(gt: dict, bags: dict, cfg: SelectConfig):
    """Yield ``((h, w), bag, pdg)`` for every bag in the order of ``bags``: its image size and
    the PDG score of each of its proposals (same-class points of its image)."""
    from pseudolabel.selector import geometry as geo

    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    for image_id, image_bags in bags.items():
        pts = np.array([b.point for b in image_bags])
        labels = np.array([b.category_id for b in image_bags])
        pdg = geo.image_pdg_scores(pts, labels, [b.boxes for b in image_bags], cfg.pdg_root)
        for p, b in enumerate(image_bags):
            yield sizes[image_id], b, pdg[p]


def geometry_drift(gt: dict, bags: dict, cfg: SelectConfig) -> np.ndarray:
    """Where SAPNet's geometry takes a stage-0 pick of each kind, with no network at all.

    For every bag and every possible stage-0 top-1 k: BMS among the point prompt's proposals,
    PPG's 20 boxes around the mined box, each taken as the stage-1 top-1 in turn, BMS again, and
    the final box-to-mask match. Returns ``K×2×K``: for start kind k, the share of final kinds
    after (0) BMS alone (also where a stage-1 pick of the stage-0 proposal itself ends), (1) a
    stage-1 pick uniform over the PPG boxes.
    """
    from pseudolabel.selector import geometry as geo

    k_all = len(LABELS)
    out = np.zeros((k_all, 2, k_all))

    def mine(box, b, h, w):
        box, _ = geo.bms(geo.clamp_box(box, w, h), b.boxes[: cfg.bms_candidates], cfg.bms_expand_iou,
                         cfg.bms_contain_iou, cfg.bms_slack)
        return geo.final_mask_index(b.boxes, box), box

    for (h, w), b, pdg in bags_with_pdg(gt, bags, cfg):
        for k in range(len(b)):
            first, box0 = mine(b.boxes[k], b, h, w)
            out[k, 0, first] += 1
            bag1 = geo.ppg_boxes(b.boxes, box0, pdg[k])
            for j in range(len(b), len(bag1)):
                out[k, 1, mine(bag1[j], b, h, w)[0]] += 1.0 / (len(bag1) - len(b))
    return out / out.sum(axis=2, keepdims=True)


def ideal_network_ceiling(gt: dict, bags: dict, cfg: SelectConfig, score: float) -> np.ndarray:
    """What SAPNet's boxes make of a perfect network's picks (official float32 rules).

    Stage 0 picks the whole object and stage 1 the box of its bag (proposals and PPG's boxes)
    closest to the true box, both with ``cls × ins`` score ``score``; each top-1 goes through
    the official ``s / (s + 1e-8)`` weighting, BMS among the point prompt's proposals and the
    box-to-mask match, as in `sap select`. Returns the final proposal index of every bag, in
    the order of ``bags``. A score below ~0.2 leaves the whole object's own box a larger
    candidate than the top-1 box, which then blocks the rest (docs/fidelity.md, BMS top-1 box);
    above ~0.34 the float32 weight is exactly 1 and BMS mines towards larger point proposals.
    """
    import torch

    from pseudolabel.selector import geometry as geo
    from pseudolabel.selector import official

    truth = {a["id"]: np.array(a["bbox"], dtype=np.float64) for a in gt["annotations"]}
    whole = LABELS.index("whole")
    s = torch.tensor(score, dtype=torch.float32)

    def mine(box: np.ndarray, b, h: int, w: int) -> torch.Tensor:
        top1 = official.top1_box(box, s, w, h)
        return official.bms(top1, b.boxes[: cfg.bms_candidates], cfg.bms_expand_iou, cfg.bms_contain_iou,
                            cfg.bms_slack)[0]

    out = []
    for (h, w), b, pdg in bags_with_pdg(gt, bags, cfg):
        mined = mine(b.boxes[whole], b, h, w)
        j = official.ppg_source_index(b.boxes, mined)
        bag1 = geo.ppg_boxes(b.boxes, b.boxes[j], pdg[j])
        x, y, bw, bh = truth[b.ann_id]
        best = int(np.argmax(box_iou_xyxy(bag1, np.array([[x, y, x + bw, y + bh]]))[:, 0]))
        out.append(official.final_index(b.boxes, mine(bag1[best], b, h, w)))
    return np.array(out, dtype=int)


def kind_counts(indices) -> str:
    counts = np.bincount(np.asarray(indices, dtype=int), minlength=len(LABELS))
    return " | ".join(str(int(c)) for c in counts)


def prepare(args, work: Path) -> tuple[dict, dict, Path]:
    """Ground truth, point file and image folder of the chosen scenes."""
    if args.scenes == "shapes":
        from pseudolabel.testing.scenes import make_scenes

        gt_path, images = make_scenes(work / "data", args.n_images, seed=args.seed, size=args.size,
                                      class_by=args.class_by)
        gt = json.loads(gt_path.read_text())
    else:
        gt = json.loads((args.data / "annotations.json").read_text())
        images = args.data / "images"
    points, _ = derive_points(gt, args.points, seed=args.seed)
    return gt, points, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", choices=("coco", "shapes"), default="coco")
    ap.add_argument("--data", type=Path, default=next(p for p in (
        Path(os.environ.get("SAP_COCO100", REPO.parent / "shared" / "data" / "coco_train2017_100")),
        REPO / "tests" / "data" / "coco_cc_by") if p.is_dir()))
    ap.add_argument("--class-by", choices=("shape", "texture", "spots"), default="shape", help="shapes: what decides the class")
    ap.add_argument("--n-images", type=int, default=SHAPES["n_images"], help="shapes: how many scenes")
    ap.add_argument("--size", type=int, default=SHAPES["size"], help="shapes: side of a scene in pixels")
    ap.add_argument("--points", default="qc", help="point rule of `sap points` (qc, center, uniform)")
    ap.add_argument("--methods", default="sam-top1,mil,sapnet")
    ap.add_argument("--ablations", action="store_true", help="also sapnet without PDG, PNPG, BMS")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--backbone-weights", default="none", help="imagenet | PATH | none")
    for name in ("epochs", "min_size", "max_size", "batch_size", "warmup_iters", "npg_num"):
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="for a total batch of 32 (scaled to --batch-size)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: temporary)")
    ap.add_argument("--reuse", action="store_true", help="keep the selections already in --out (report again)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    preset = SHAPES if args.scenes == "shapes" else COCO
    knobs = {k: getattr(args, k) if getattr(args, k) is not None else preset[k]
             for k in ("epochs", "min_size", "max_size", "batch_size", "warmup_iters", "npg_num", "lr")}
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_select_"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    gt, points, images = prepare(args, work)
    bags = synthetic_bags(gt, points, seed=args.seed)
    ious = proposal_ious(gt, bags)
    ann = work / "points.json"
    ann.write_text(json.dumps(points))
    cache = work / "cache"
    if not (args.reuse and cache.is_dir()):
        cache = write_bags_cache(cache, points, bags, images)
    n_img, n_pts = len(bags), len(ious)
    scene = f"shapes (class by {args.class_by}, {args.size}px)" if args.scenes == "shapes" else "COCO photos"
    print(f"{scene}: {n_img} images, {n_pts} points, 6 synthetic proposals each ({', '.join(LABELS)}), "
          f"made in {time.perf_counter() - t0:.1f} s")
    base = SelectConfig(backbone=args.backbone, backbone_weights=args.backbone_weights, workers=args.workers,
                        seed=args.seed, **knobs)
    print(f"selector: {args.backbone} ({args.backbone_weights} weights), input {knobs['min_size']}x"
          f"{knobs['max_size']}, {knobs['epochs']} epochs, batch {knobs['batch_size']}, lr {knobs['lr']} per 32, "
          f"warmup {knobs['warmup_iters']} it, {knobs['npg_num']} NPG draws, {args.threads} threads")

    runs = [(m, {}) for m in args.methods.split(",")]
    if args.ablations:
        runs += list(ABLATIONS.items())
    metrics, rows, results = {}, [], {}
    for name, flags in runs:
        method = name.split()[0]
        out = work / f"{name.replace(' ', '')}.json"
        cpu0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if args.reuse and out.is_file():
            summary = None
        else:
            summary = run_select(ann, cache, out, replace(base, method=method, work_dir=str(work / name.replace(" ", "")),
                                                          **flags), images=images)
        wall = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        anns = json.loads(out.read_text())["annotations"]
        metrics[name] = evaluate_pseudo(gt, anns, boundary=False)
        results[name] = anns
        rows.append((name, wall, cpu, summary.stats.get("train_s") if summary else None))
    metrics["oracle"] = evaluate_pseudo(gt, oracle_annotations(bags, ious), boundary=False)
    all_ious = np.stack([ious[k] for k in sorted(ious)])
    random_iou, oracle_iou = all_ious.mean(), all_ious.max(axis=1).mean()

    print()
    print(format_table(compare(metrics)))
    print(f"\nrandom pick (expected over the 6 proposals): mask mIoU {random_iou:.3f}; over the 3 point "
          f"proposals: {all_ious[:, :3].mean():.3f}; oracle {oracle_iou:.3f}")
    print("\n| method | mask mIoU | % of oracle | wall s | CPU s | training s |")
    print("|---|---|---|---|---|---|")
    for name, wall, cpu, train_s in rows:
        miou = np.mean([ious[a["id"]][a["sap"]["proposal_index"]] for a in results[name]])
        print(f"| {name} | {miou:.3f} | {100 * miou / oracle_iou:.0f} | {wall:.0f} | {cpu:.0f} | "
              f"{'' if train_s is None else f'{train_s:.0f}'} |")

    print(f"\nproposals picked, by kind ({n_pts} points; mean IoU of each kind with the truth: "
          + ", ".join(f"{k} {v:.2f}" for k, v in zip(LABELS, all_ious.mean(axis=0))) + ")")
    print("| method | " + " | ".join(LABELS) + " |")
    print("|---|" + "---|" * len(LABELS))
    for name, anns in results.items():
        print(f"| {name} | {kind_counts([a['sap']['proposal_index'] for a in anns])} |")
    print(f"| oracle | {kind_counts(all_ious.argmax(axis=1))} |")

    for name, anns in results.items():
        if not anns or "stages" not in anns[0]["sap"]:
            continue
        print(f"\n{name}: what each stage's top-1 points at (the proposal whose box matches it best)")
        print("| stage | mIoU | " + " | ".join(LABELS) + " |")
        print("|---|---|" + "---|" * len(LABELS))
        for stage in (*anns[0]["sap"]["stages"], "final"):
            idx = [a["sap"]["stages"][stage] if stage != "final" else a["sap"]["proposal_index"] for a in anns]
            miou = np.mean([ious[a["id"]][i] for a, i in zip(anns, idx)])
            print(f"| {stage} | {miou:.3f} | {kind_counts(idx)} |")

    drift = geometry_drift(gt, bags, apply_reference(base))
    mean_iou = all_ious.mean(axis=0)
    print("\nSAPNet's geometry alone (no network): where a stage-0 pick of each kind ends, and the mIoU")
    print("| stage-0 pick | path | " + " | ".join(LABELS) + " | mIoU |")
    print("|---|---|" + "---|" * len(LABELS) + "---|")
    for k, label in enumerate(LABELS):
        for r, path in enumerate(("BMS, match", "BMS, a PPG box as stage-1 pick, BMS, match")):
            print(f"| {label} | {path} | " + " | ".join(f"{v:.2f}" for v in drift[k, r]) +
                  f" | {(drift[k, r] * mean_iou).sum():.3f} |")

    order_ids = [b.ann_id for bs in bags.values() for b in bs]
    print("\nthe ceiling: SAPNet's geometry with a perfect network (stage 0 picks the whole object, stage 1 "
          "the box closest to the truth), at a low and a confident top-1 score")
    print("| top-1 score | mask mIoU | % of oracle | " + " | ".join(LABELS) + " |")
    print("|---|---|---|" + "---|" * len(LABELS))
    for score in (0.1, 0.9):
        final = ideal_network_ceiling(gt, bags, apply_reference(base), score)
        miou = np.mean([ious[a][k] for a, k in zip(order_ids, final)])
        print(f"| {score} | {miou:.3f} | {100 * miou / oracle_iou:.0f} | {kind_counts(final)} |")

    print(f"\nmargin (sap.margin) against wrong picks (mask IoU with the truth < {WRONG_IOU}):")
    print("| method | wrong, all points | wrong, lowest-margin 20 % | wrong, highest-margin 20 % |")
    print("|---|---|---|---|")
    for name, anns in results.items():
        margin = np.array([a["sap"]["margin"] for a in anns])
        wrong = np.array([ious[a["id"]][a["sap"]["proposal_index"]] < WRONG_IOU for a in anns])
        order = np.argsort(margin, kind="stable")
        k = max(1, len(order) // 5)
        print(f"| {name} | {100 * wrong.mean():.1f} % | {100 * wrong[order[:k]].mean():.1f} % | "
              f"{100 * wrong[order[-k:]].mean():.1f} % |")
    print(f"\noutputs in {work}")


if __name__ == "__main__":
    main()
