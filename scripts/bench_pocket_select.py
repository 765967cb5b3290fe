"""Selection on the pocket SAM's proposals: does the selector beat SAM's own ranking?

Held-out pocket scenes (:func:`pseudolabel.pocket.quality.write_scene_dataset`, the ``test``
split, never drawn by the pocket SAM's or the pocket backbone's training) go through the real
commands: ``sap points --mode center``, ``sap proposals --engine sam_pocket --prompts
point,point_box`` (6 proposals a point), then ``sap select`` with ``sam-top1``, ``mil`` and
``sapnet`` (official rules) on the pocket backbone (``--backbone resnet18_half
--backbone-weights pocket``), and sapnet again with a random-weight backbone. The trained sapnet
then selects again under each rule of ``--reference sap`` (``--weights``: same network, other
rules). Printed per seed: mask mIoU against the truth and the share of points where each
method takes the best of its bag's proposals (for the trained sapnet also the proposal each
stage's top-1 box points at: where the signal is lost), beside a random pick (the bag's mean), the oracle
(the bag's best) and the perfect-network ceiling of each rule set on these bags
(:func:`bench_rules.ceiling_choices`)::

    nice -n 10 python scripts/bench_pocket_select.py --scenes 16 --seeds 0,1 --out /tmp/pocket_select
    nice -n 10 python scripts/bench_pocket_select.py --skip mil    # a method left out (reruns reuse outputs)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_rules import ceiling_choices, rule_sets  # noqa: E402
from pseudolabel.core.alternatives import attach_alternatives  # noqa: E402
from pseudolabel.core.rle import rle_iou, rle_to_bbox_xywh, segmentation_to_rle  # noqa: E402
from pseudolabel.pocket.quality import write_scene_dataset  # noqa: E402
from pseudolabel.selector.options import SelectConfig  # noqa: E402
from pseudolabel.selector.train import SCRATCH_LR  # noqa: E402

#: the selector's training on these scenes (CPU-sized: 160 px input, batch 4; 36 epochs of 16 scenes
#: are 144 iterations, with a warmup of 10 instead of SAPNet's 500, which would outlast the run)
TRAIN = {"epochs": 36, "min-size": 160, "max-size": 224, "batch-size": 4, "lr": 0.08, "warmup-iters": 10, "workers": 0}


def sap(*args: str, log: Path) -> None:
    """Run one `sap` command (this checkout's), output appended to ``log``; stop on failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "a") as f:
        f.write(f"\n$ sap {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], env=env, stdout=f, stderr=f).returncode
    if rc != 0:
        sys.exit(f"sap {args[0]} failed (exit {rc}); see {log}")


def bag_ious(gt: dict, picks: list[dict]) -> dict[int, tuple[np.ndarray, list]]:
    """From a `sap select` output: per annotation id, every proposal's mask IoU with the truth
    (in bag order, rebuilt from ``segmentation``, ``alternatives`` and ``sap.order``) and the RLEs."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    truth = {a["id"]: a for a in gt["annotations"]}
    out = {}
    for a in picks:
        order = a["sap"]["order"]
        rles = [None] * len(order)
        rles[a["sap"]["proposal_index"]] = a["segmentation"]
        alts = iter(a["alternatives"])
        for j in order:
            if j != a["sap"]["proposal_index"]:
                rles[j] = next(alts)
        h, w = sizes[a["image_id"]]
        out[a["id"]] = (rle_iou(rles, [segmentation_to_rle(truth[a["id"]]["segmentation"], h, w)])[:, 0], rles)
    return out


def select_runs(work: Path, images: Path, log: Path, rules: dict[str, dict], skip: set[str]) -> dict[str, Path]:
    """Every `sap select` of the benchmark but the methods in ``skip`` (the trained sapnet's rule
    runs right after it); returns method name → output file."""
    ann, cache = str(work / "points.json"), str(work / "cache")
    common = ["--ann", ann, "--proposals", cache, "--images", str(images), "--device", "cpu"]
    train = [x for k, v in TRAIN.items() for x in (f"--{k}", str(v))]
    scratch = [x for k, v in {**TRAIN, "lr": SCRATCH_LR}.items() for x in (f"--{k}", str(v))]
    pocket = ["--backbone", "resnet18_half", "--backbone-weights", "pocket"]
    outs = {"sam-top1": work / "sam-top1.json"}
    runs = {"sam-top1": ["--method", "sam-top1"], "sapnet": ["--method", "sapnet", *train, *pocket],
            "sapnet, random backbone": ["--method", "sapnet", *scratch, "--backbone", "resnet18_half",
                                        "--backbone-weights", "none"],
            "mil": ["--method", "mil", *train, *pocket]}
    for name, args in runs.items():
        if name in skip:
            continue
        out = outs.setdefault(name, work / f"{name.replace(', ', '_').replace(' ', '-')}.json")
        if not out.is_file():
            t = time.perf_counter()
            sap("select", *common, "--out", str(out), *args, log=log)
            print(f"  {name}: {time.perf_counter() - t:.0f} s", flush=True)
        if name == "sapnet":
            rule_runs(work, common, pocket, rules, outs, log)
    return outs


def rule_runs(work: Path, common: list[str], pocket: list[str], rules: dict[str, dict], outs: dict[str, Path],
              log: Path) -> None:
    """The trained sapnet (``sapnet.selector/selector.pt``) selecting again under each rule set."""
    weights = work / "sapnet.selector" / "selector.pt"
    for name, flags in rules.items():
        if name == "official":
            continue
        out = outs.setdefault(f"sapnet, {name}", work / f"sapnet_{name.split(':')[0].replace(' ', '')}.json")
        cfg = work / f"{out.stem}.yaml"
        cfg.write_text("".join(f"{k}: {v}\n" for k, v in flags.items()))
        if not out.is_file():
            sap("select", *common, "--out", str(out), "--method", "sapnet", *pocket, "--weights", str(weights),
                "--config", str(cfg), "--min-size", str(TRAIN["min-size"]), "--max-size", str(TRAIN["max-size"]),
                "--workers", "0", log=log)


def _row(ious: dict[int, np.ndarray], picks: dict[int, int]) -> dict:
    """Mask mIoU of ``picks`` (annotation id → proposal index) and the share that are the bag's best."""
    got = np.array([ious[a][k] for a, k in picks.items()])
    best = np.array([ious[a][k] >= ious[a].max() - 1e-9 for a, k in picks.items()])
    return {"miou": float(got.mean()), "best": float(best.mean()), "n": len(got)}


def figures(gt: dict, outs: dict[str, Path]) -> dict[str, dict]:
    """mIoU and best-proposal share of every output, random pick, oracle and the ceilings."""
    base_coco = json.loads(outs["sam-top1"].read_text())
    attach_alternatives(base_coco, outs["sam-top1"])  # the other proposals live in a sidecar
    base = base_coco["annotations"]
    ious = {k: v[0] for k, v in bag_ious(gt, base).items()}
    rows = {}
    for name, path in outs.items():
        anns = json.loads(path.read_text())["annotations"]
        rows[name] = _row(ious, {a["id"]: a["sap"]["proposal_index"] for a in anns})
        if name == "sapnet":  # where the trained selector's signal goes, stage by stage
            for stage in anns[0]["sap"].get("stages", {}):
                rows[f"sapnet, stage {stage}"] = _row(ious, {a["id"]: a["sap"]["stages"][stage] for a in anns})
    allv = [v for v in ious.values()]
    rows["random pick"] = {"miou": float(np.mean([v.mean() for v in allv])),
                           "best": float(np.mean([(v >= v.max() - 1e-9).mean() for v in allv])), "n": len(allv)}
    rows["oracle"] = {"miou": float(np.mean([v.max() for v in allv])), "best": 1.0, "n": len(allv)}
    bags = {}
    for a in base:
        _, rles = bag_ious(gt, [a])[a["id"]]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in map(rle_to_bbox_xywh, rles)], dtype=np.float64)
        bags.setdefault(a["image_id"], []).append(SimpleNamespace(ann_id=a["id"], category_id=a["category_id"],
                                                                  point=tuple(a["point"]), boxes=boxes))
    for name, flags in rule_sets().items():
        for score in (0.1, 0.9):
            picks = ceiling_choices(gt, bags, replace(SelectConfig(method="sapnet"), **flags), score)
            rows[f"perfect network, {name}, score {score}"] = _row(ious, picks)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=16)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pocket_select"))
    ap.add_argument("--prepare-only", action="store_true", help="stop after the proposals")
    ap.add_argument("--skip", action="append", default=[], help="leave a method out (e.g. mil)")
    for key in ("epochs", "lr", "warmup-iters"):
        ap.add_argument(f"--{key}", type=type(TRAIN[key]), default=TRAIN[key], help=f"the selector's {key}")
    args = ap.parse_args()
    TRAIN.update({k: getattr(args, k.replace("-", "_")) for k in ("epochs", "lr", "warmup-iters")})
    results = {}
    for seed in map(int, args.seeds.split(",")):
        work = args.out / f"seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        log = work / "commands.log"
        gt_path, images = work / "data" / "annotations.json", work / "data" / "images"
        if not gt_path.is_file():
            write_scene_dataset(work / "data", args.scenes, seed=seed, split="test")
        if not (work / "points.json").is_file():
            sap("points", "--gt", str(gt_path), "--out", str(work / "points.json"), "--mode", "center", log=log)
        if not (work / "cache").is_dir():
            sap("proposals", "--ann", str(work / "points.json"), "--images", str(images), "--out", str(work / "cache"),
                "--engine", "sam_pocket", "--prompts", "point,point_box", "--precision", "fp32", "--device", "cpu",
                log=log)
        print(f"seed {seed}: {args.scenes} held-out scenes, proposals in {work / 'cache'}", flush=True)
        if args.prepare_only:
            continue
        gt = json.loads(gt_path.read_text())
        rows = figures(gt, select_runs(work, images, log, rule_sets(), set(args.skip)))
        results[seed] = rows
        n = rows["sam-top1"]["n"]
        print(f"\nseed {seed}: {n} points; mask mIoU of the pick and share of points where it is the bag's best")
        print("| method | mask mIoU | takes the best proposal |")
        print("|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {r['miou']:.3f} | {100 * r['best']:.0f} % |")
    (args.out / "figures.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
