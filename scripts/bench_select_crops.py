"""Benchmark `sap select --crops off` against `auto` on held-out large generated scenes.

Scenes: :func:`pseudolabel.pocket.scenes.make_large_scene` (held-out seeds, as in
bench_windows.py), ``--scenes`` images of ``--size`` px a side with ``--objects`` whole shapes of
12–64 px, the shape's kind as the category (5 classes). Through the real commands: ``sap points
--mode center``, ``sap proposals --engine sam_pocket --prompts point,point_box --windows auto``
(6 proposals a point), then ``sap select`` with ``sam-top1``, and ``mil`` and ``sapnet`` with
crops off and auto, the same epochs, on the pocket backbone (``--backbone resnet18_half
--backbone-weights pocket``). Printed in one run: mask mIoU of the pick against the truth, the
share of points where it takes the bag's best proposal, seconds per image of each `sap select`
(training included), beside a random pick (the bag's mean) and the oracle (the bag's best)::

    nice -n 10 python scripts/bench_select_crops.py --scenes 4 --size 2048 --objects 50 --epochs 12
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_pocket_select import bag_ious, sap  # noqa: E402
from bench_windows import scene_seed  # noqa: E402
from pseudolabel.core.alternatives import attach_alternatives  # noqa: E402
from pseudolabel.core.windows import paste_rle  # noqa: E402
from pseudolabel.pocket.scenes import KINDS, make_large_scene  # noqa: E402


def write_scenes(root: Path, n: int, size: int, objects: int) -> Path:
    """PNG images and their ground truth (category = the shape's kind), held-out seeds."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        scene = make_large_scene(scene_seed(size, 1000 + i), (size, size), objects)
        Image.fromarray(scene.image).save(root / "images" / f"s{i}.png")
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": size, "height": size})
        for j, (box, m, kind) in enumerate(zip(scene.boxes, scene.masks, scene.kinds)):
            x0, y0, x1, y1 = (int(v) for v in box)
            anns.append({"id": (i + 1) * 1000 + j, "image_id": i + 1, "category_id": kind + 1, "iscrowd": 0,
                         "segmentation": paste_rle(m, (x0, y0), (size, size)), "area": int(m.sum()),
                         "bbox": [x0, y0, x1 - x0, y1 - y0]})
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(KINDS)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def run_selects(work: Path, images: Path, args, log: Path) -> dict[str, tuple[Path, float]]:
    """Every `sap select`; returns name → (output, seconds)."""
    common = ["--ann", str(work / "points.json"), "--proposals", str(work / "cache"), "--images", str(images),
              "--device", "cpu"]
    train = ["--epochs", str(args.epochs), "--min-size", str(args.min_size), "--max-size", str(args.max_size),
             "--batch-size", "4", "--lr", str(args.lr), "--workers", "0",
             "--backbone", "resnet18_half", "--backbone-weights", "pocket"]
    runs = {"sam-top1": ["--method", "sam-top1"]}
    for method in args.methods:
        for crops in ("off", "auto"):
            runs[f"{method}, crops {crops}"] = ["--method", method, *train, "--crops", crops]
    outs = {}
    for name, flags in runs.items():
        out = work / f"{name.replace(', ', '_').replace(' ', '-')}.json"
        seconds_file = out.with_suffix(".seconds")
        if not out.is_file():
            t = time.perf_counter()
            sap("select", *common, "--out", str(out), *flags, log=log)
            seconds_file.write_text(f"{time.perf_counter() - t:.3f}")
            print(f"  {name}: {float(seconds_file.read_text()):.0f} s", flush=True)
        outs[name] = (out, float(seconds_file.read_text()))
    return outs


def figures(gt: dict, outs: dict[str, tuple[Path, float]]) -> dict[str, dict]:
    """mIoU, best-proposal share and s/image of every output; the random pick and the oracle."""
    base_path = outs["sam-top1"][0]
    base_coco = json.loads(base_path.read_text())
    attach_alternatives(base_coco, base_path)
    ious = {k: v[0] for k, v in bag_ious(gt, base_coco["annotations"]).items()}
    n_images = len(gt["images"])
    rows = {}
    for name, (path, seconds) in outs.items():
        picks = {a["id"]: a["sap"]["proposal_index"] for a in json.loads(path.read_text())["annotations"]}
        got = np.array([ious[a][k] for a, k in picks.items()])
        best = np.array([ious[a][k] >= ious[a].max() - 1e-9 for a, k in picks.items()])
        rows[name] = {"miou": float(got.mean()), "best": float(best.mean()), "n": len(got),
                      "s_per_image": seconds / n_images}
    allv = list(ious.values())
    rows["random pick"] = {"miou": float(np.mean([v.mean() for v in allv])),
                           "best": float(np.mean([(v >= v.max() - 1e-9).mean() for v in allv])), "n": len(allv)}
    rows["oracle"] = {"miou": float(np.mean([v.max() for v in allv])), "best": 1.0, "n": len(allv)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--objects", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--min-size", type=int, default=800)
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--lr", type=float, default=0.08)
    ap.add_argument("--methods", nargs="+", default=["sapnet", "mil"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/select_crops"))
    args = ap.parse_args()
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    gt_path, images = work / "annotations.json", work / "images"
    if not gt_path.is_file():
        write_scenes(work, args.scenes, args.size, args.objects)
    if not (work / "points.json").is_file():
        sap("points", "--gt", str(gt_path), "--out", str(work / "points.json"), "--mode", "center", log=log)
    if not (work / "cache").is_dir():
        t = time.perf_counter()
        sap("proposals", "--ann", str(work / "points.json"), "--images", str(images), "--out", str(work / "cache"),
            "--engine", "sam_pocket", "--prompts", "point,point_box", "--precision", "fp32", "--device", "cpu",
            "--windows", "auto", log=log)
        print(f"proposals: {time.perf_counter() - t:.0f} s", flush=True)
    gt = json.loads(gt_path.read_text())
    rows = figures(gt, run_selects(work, images, args, log))
    n = rows["sam-top1"]["n"]
    print(f"\n{args.scenes} scenes of {args.size}² px, {n} points, {args.epochs} epochs, network input "
          f"{args.min_size}-{args.max_size}: mask mIoU of the pick, share of points where it is the bag's best")
    print("| method | mask mIoU | takes the best proposal | s / image |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        s = f"{r['s_per_image']:.1f}" if "s_per_image" in r else ""
        print(f"| {name} | {r['miou']:.3f} | {100 * r['best']:.0f} % | {s} |")
    (work / "figures.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
