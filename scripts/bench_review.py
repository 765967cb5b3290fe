"""Benchmark of the review queue: does it put the wrong pseudo-labels first?

Data: the 100-image COCO subset (../shared; the 6 committed test photos without it). Points come
from the ground truth (P2BNet's quasi-centre rule); every point gets 6 synthetic SAM-like proposals
made from its true mask (as in scripts/bench_select.py: parts, the object, the object merged with a
neighbour, eroded, with a background band; predicted IoUs that favour the parts, stability 1), so
every pseudo-label's quality is known. `sap select` makes pseudo-labels with SAM's top-1 and with a
learned selector (`--method`, CPU-sized schedule), and the queue ranks them from the signals those
files carry: SAM's predicted IoU and stability (from the cache), the selector's margin (when `sap
select` writes one), the disagreement between SAM's top-1 and the selection, tiny and fragmented
masks, and a click outside its mask. Refine's signals need a real SAM and are not measured here.

Printed per set of pseudo-labels: how many have IoU < 0.5 against the truth, and the share of
those in the first 20 % of the queue — for the combined risk, for each signal alone, for a
random order (mean of 1000 shuffles) and for the best possible order (oracle); plus the queue's
speed (annotations per second, signals only) and that of writing the page with thumbnails.

    python scripts/bench_review.py [--method sapnet] [--epochs 1] [--min-size 192] [--out DIR [--reuse]]
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

from pseudolabel.core.points import derive_points  # noqa: E402
from pseudolabel.review import WEIGHTS, Context, build_queue, share_of_bad_in_top  # noqa: E402
from pseudolabel.review.page import write_page, write_thumbnails  # noqa: E402
from pseudolabel.selector import SelectConfig, run_select  # noqa: E402
from pseudolabel.testing.synthetic import synthetic_bags, write_bags_cache  # noqa: E402


def measure(labels: dict, ctx: Context, gt: dict) -> tuple[list[str], list]:
    """Rows ``signal: queue share`` for the combined risk and each signal alone."""
    t = time.perf_counter()
    items, runner = build_queue(labels, ctx, gt)
    rate = len(items) / (time.perf_counter() - t)
    m = share_of_bad_in_top(items)
    rows = [f"  {m['bad']} of {m['annotations']} pseudo-labels have IoU < 0.5; the first 20 % ({m['top_k']}) of",
            f"  {'order':<16s} holds of them",
            f"  {'random':<16s} {100 * m['random']:5.1f} %",
            f"  {'oracle':<16s} {100 * m['oracle']:5.1f} %",
            f"  {'combined risk':<16s} {100 * m['queue']:5.1f} %   ({rate:.0f} annotations/s)"]
    present = sorted({k for it in items for k in it["signals"]})
    for k in present:
        alone = share_of_bad_in_top(build_queue(labels, ctx, gt, weights={k: 1.0})[0])
        rows.append(f"  {k + ' alone':<16s} {100 * alone['queue']:5.1f} %")
    return rows, [items, runner]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=next(p for p in (REPO.parent / "shared" / "data" / "coco_train2017_100",
                                                                 REPO / "tests" / "data" / "coco_cc_by") if p.is_dir()))
    ap.add_argument("--method", default="sapnet", help="learned selector: sapnet | mil | none")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--min-size", type=int, default=192)
    ap.add_argument("--max-size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the outputs (default: temporary)")
    ap.add_argument("--reuse", action="store_true", help="reuse the selection already in --out")
    args = ap.parse_args()

    gt = json.loads((args.data / "annotations.json").read_text())
    points, _ = derive_points(gt, "qc", seed=args.seed)
    bags = synthetic_bags(gt, points, seed=args.seed)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_review_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "points.json").write_text(json.dumps(points))
    cache = write_bags_cache(work / "cache", points, bags, args.data / "images")
    by_id = {b.ann_id: b for bs in bags.values() for b in bs}
    base = SelectConfig(epochs=args.epochs, backbone=args.backbone, backbone_weights="none", min_size=args.min_size,
                        max_size=args.max_size, batch_size=4, warmup_iters=50, npg_num=100, workers=2, seed=args.seed)
    run_select(work / "points.json", cache, work / "sam-top1.json", replace(base, method="sam-top1"))
    top1 = json.loads((work / "sam-top1.json").read_text())
    print(f"{len(bags)} images, {len(by_id)} points with 6 synthetic proposals; signal weights {WEIGHTS}\n")
    print("pseudo-labels = SAM's top-1 (signals: cache, shape, click)")
    rows, (items, runner) = measure(top1, Context(bags=by_id), gt)
    print("\n".join(rows))
    if args.method != "none":
        t = time.perf_counter()
        done = work / f"{args.method}.json"
        if args.reuse and done.is_file():  # the selection of an earlier run in the same --out
            changed = None
        else:
            changed = run_select(work / "points.json", cache, done, replace(base, method=args.method),
                                 images=args.data / "images").changed_vs_sam_top1
        sel = json.loads(done.read_text())
        if changed is None:
            changed = sum(a["sap"]["proposal_index"] != b["sap"]["proposal_index"]
                          for a, b in zip(sel["annotations"], top1["annotations"])) / len(sel["annotations"])
        margin = sum(1 for a in sel["annotations"] if "margin" in (a.get("sap") or {}))
        print(f"\npseudo-labels = {args.method} ({args.backbone}, random init, {args.epochs} epoch(s), "
              f"{time.perf_counter() - t:.0f} s; differs from SAM's top-1 on {100 * changed:.0f} %; "
              f"margin on {margin} annotations)")
        ctx = Context(sam_top1={a["id"]: a for a in top1["annotations"]}, bags=by_id)
        rows, (items, runner) = measure(sel, ctx, gt)
        print("\n".join(rows))
        labels = sel
    else:
        labels = top1
    t = time.perf_counter()
    write_thumbnails(labels, items, runner, args.data / "images", work / "review")
    write_page(work / "review", items, "bench")
    print(f"\npage with {len(items)} thumbnails written in {time.perf_counter() - t:.1f} s "
          f"({len(items) / (time.perf_counter() - t):.0f} thumbnails/s): {work / 'review' / 'index.html'}")


if __name__ == "__main__":
    main()
