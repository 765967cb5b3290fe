"""Do the torch and detectron2 engines of ``sap train`` learn alike? Both train the same small
SOLOv2 on the same photos, one after the other in one run, and the mask AP of each is printed.

    python scripts/compare_engines.py [--photos 4] [--iters 150] [--seeds 0,1] [--engines torch,detectron2]
        [--set reference=sap ...]

Setting (issue 32): the first ``--photos`` images of tests/data/coco_cc_by with at most 4 objects
each, ResNet-18 from random weights with the narrow heads of tests/test_segtrain_learning.py,
short side 160, no flips, ``--iters`` iterations at lr 0.02 and batch 2, evaluated on the
training photos. Each seed is a separate run of each engine, so the spread over seeds is the
run-to-run noise the engines' gap is read against. CPU minutes per run; use ``nice`` and
``OMP_NUM_THREADS=1`` on shared machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segtrain import TrainConfig, run_train  # noqa: E402

DATA = REPO / "tests" / "data" / "coco_cc_by"
NARROW = dict(fpn_channels=64, head_channels=64, head_convs=2, mask_channels=32, kernel_dim=64)


def subset(coco: dict, n_images: int, max_anns: int) -> dict:
    """The first ``n_images`` images with non-crowd objects, at most ``max_anns`` objects each."""
    by_img: dict[int, list] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            by_img.setdefault(a["image_id"], []).append(a)
    images = [im for im in coco["images"] if by_img.get(im["id"])][:n_images]
    return {**coco, "images": images, "annotations": [a for im in images for a in by_img[im["id"]][:max_anns]]}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--max-anns", type=int, default=4)
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--engines", default="torch,detectron2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig option for both engines (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gt = Path(tmp) / "gt.json"
        gt.write_text(json.dumps(subset(json.loads((DATA / "annotations.json").read_text()), args.photos,
                                        args.max_anns)))
        for seed in (int(s) for s in args.seeds.split(",")):
            for engine in args.engines.split(","):
                out = Path(tmp) / f"{engine}_{seed}"
                cfg = TrainConfig(train=str(gt), images=str(DATA / "images"), out=str(out), val=str(gt),
                                  val_images=str(DATA / "images"), engine=engine, backbone="resnet18",
                                  backbone_weights="none", iters=args.iters, batch=2, base_lr=0.02, base_batch=2,
                                  min_size="160", max_size=267, flip_prob=0.0, workers=0, log_period=25,
                                  checkpoint_period=0, seed=seed, model=dict(NARROW), **extra)
                summary = run_train(cfg)
                ev = summary.final_eval or {}
                results.setdefault(engine, []).append((ev.get("AP", float("nan")), ev.get("AP50", float("nan"))))
                print(f"seed {seed} {engine}: mask AP {ev.get('AP', float('nan')):.1f} AP50 "
                      f"{ev.get('AP50', float('nan')):.1f}; loss {summary.first_loss:.3f} -> {summary.last_loss:.3f}; "
                      f"{summary.seconds:.0f} s", flush=True)
    for engine, vals in results.items():
        aps = [v[0] for v in vals]
        spread = f" (min {min(aps):.1f}, max {max(aps):.1f})" if len(aps) > 1 else ""
        ap50 = statistics.mean(v[1] for v in vals)
        print(f"{engine}: mean mask AP {statistics.mean(aps):.1f}{spread}, AP50 {ap50:.1f} over {len(aps)} seeds")


if __name__ == "__main__":
    main()
