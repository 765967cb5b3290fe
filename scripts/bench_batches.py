"""How SOLOv2 training batches are built, before and after orientation-grouped passes, in one run.

    python scripts/bench_batches.py [--data tests/data/coco_cc_by] [--batch 16] [--batches 60]
                                    [--steps 3] [--step-batch 8] [--step-sizes 256-320] [--threads 0]

Before: a process pads its whole share of the batch (16 on one process, as the docs and
configs/coco.yaml suggest) into one tensor, whatever the images' orientation. After: passes of
2 images of one orientation (AdelaiDet's 2 per GPU on 8 GPUs, grouped as detectron2's
``AspectRatioGroupedDataset`` does), each padded to its own size. Both draw from the same
sampler stream, short sides 640-800 and flips as in training.

Prints, for each way and for test time (one image at the test size):
* coverage: the image's share of its padded tensor (area), and along its short side (rows or
  columns of the S×S grids, which are laid over the padded tensor);
* positive grid cells per object (all levels) and the share of objects that get no cell;
then the cost of training steps both ways on this machine (SGD steps of ResNet-18 at full
SOLOv2 width, ``--step-batch`` images per step at short sides ``--step-sizes``, the same spread
as 640-800 at 2/5 of the size): CPU and wall seconds per image and padded pixels per image. AP before/after needs a GPU run of the full schedule: not here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segtrain.data import TrainDataset, draw_augmentation, load_dataset, parse_min_sizes
from segtrain.engine import train_step
from segtrain.model import SOLOv2, SOLOv2Config
from segtrain.sampling import ResumableBatchSampler, orientation, pass_slices
from segtrain.solver import make_optimizer
from segtrain.targets import build_targets

REPO = Path(__file__).resolve().parents[1]


def padded(hws: list[tuple[int, int]], div: int = 32) -> tuple[int, int]:
    return -(-max(h for h, _ in hws) // div) * div, -(-max(w for _, w in hws) // div) * div


class Geometry:
    """Targets of training items, computed once per (image, short side, flip)."""

    def __init__(self, dataset: TrainDataset) -> None:
        self.ds, self.cache = dataset, {}

    def item(self, index: int, seed: int):
        short, flip = draw_augmentation(seed, self.ds.min_sizes, self.ds.flip_prob)
        key = (index, short, flip)
        if key not in self.cache:
            s = self.ds[(index, seed)]
            self.cache[key] = (tuple(s.image.shape[-2:]), s.targets)
        return self.cache[key]


def measure(geo: Geometry, passes: list[list[tuple[int, int]]], cfg: SOLOv2Config) -> dict[str, float]:
    area, short, cells, objects, lost = [], [], 0, 0, 0
    for p in passes:
        items = [geo.item(i, s) for i, s in p]
        hp, wp = padded([hw for hw, _ in items])
        for (h, w), targets in items:
            area.append(h * w / (hp * wp))
            short.append(h / hp if h <= w else w / wp)
            if not len(targets):
                continue
            count = np.zeros(len(targets))
            for lv in build_targets(targets, (hp, wp), cfg.num_grids, cfg.scale_ranges, cfg.sigma, cfg.num_classes):
                np.add.at(count, lv.instance[lv.instance >= 0].numpy(), 1)
            cells, objects, lost = cells + count.sum(), objects + len(count), lost + int((count == 0).sum())
    return {"area": float(np.mean(area)), "short": float(np.mean(short)), "pos": cells / max(objects, 1),
            "lost": lost / max(objects, 1)}


def stream_passes(n: int, groups: list[int] | None, batch: int, per_pass: int, batches: int):
    it = iter(ResumableBatchSampler(n, batch, seed=0, per_pass=per_pass, groups=groups))
    return [b[part] for b in (next(it) for _ in range(batches)) for part in pass_slices(batch, per_pass)]


def throughput(records, groups, args) -> dict[str, dict[str, float]]:
    """CPU seconds and wall seconds per image of SGD steps, whole-batch padding vs grouped passes.

    The two ways alternate step by step (after one warm-up step each) on their own sampler
    streams, so that a busy machine slows both alike; CPU time (all threads of this process)
    is the steadier figure on a shared machine.
    """
    sizes = parse_min_sizes(args.step_sizes)
    ds = TrainDataset(records, sizes, int(max(sizes) * 5 / 3), 0.5)
    torch.manual_seed(0)
    model = SOLOv2(SOLOv2Config(num_classes=80, backbone="resnet18", backbone_norm="gn")).train()
    opt = make_optimizer(model, 1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    ways = {"before": (args.step_batch, None), "after": (2, groups)}
    streams = {name: iter(ResumableBatchSampler(len(ds), args.step_batch, seed=1, per_pass=pp, groups=grp))
               for name, (pp, grp) in ways.items()}
    out = {name: {"cpu": 0.0, "wall": 0.0, "pixels": 0.0, "images": 0} for name in ways}
    for step in range(args.steps + 1):
        for name, (per_pass, _) in ways.items():
            items = [ds[x] for x in next(streams[name])]
            passes = [items[part] for part in pass_slices(len(items), per_pass)]
            c0, w0 = time.process_time(), time.perf_counter()
            train_step(model, passes, opt, scaler, clip_grad=35.0)
            if step:  # the first step of each way is a warm-up
                o = out[name]
                o["cpu"] += time.process_time() - c0
                o["wall"] += time.perf_counter() - w0
                o["images"] += len(items)
                o["pixels"] += sum(len(p) * np.prod(padded([tuple(s.image.shape[-2:]) for s in p])) for p in passes)
    return {name: {"cpu_s": o["cpu"] / o["images"], "wall_s": o["wall"] / o["images"],
                   "mpx": o["pixels"] / o["images"] / 1e6} for name, o in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "tests" / "data" / "coco_cc_by"),
                    help="folder with annotations.json and images/")
    ap.add_argument("--batch", type=int, default=16, help="one process's images per iteration")
    ap.add_argument("--batches", type=int, default=60, help="batches drawn for the geometry figures")
    ap.add_argument("--steps", type=int, default=3, help="timed SGD steps per way (after one warm-up)")
    ap.add_argument("--step-batch", type=int, default=8)
    ap.add_argument("--step-sizes", default="256-320", help="short sides of the timed steps (640-800 / 2.5)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    records, _, stats = load_dataset(data / "annotations.json", data / "images", keep_empty_images=True)
    groups = [orientation(r.width, r.height) for r in records]
    print(f"{data.name}: {stats.summary()}; {sum(groups)} portrait; batch {args.batch} on one process")
    cfg = SOLOv2Config()
    geo = Geometry(TrainDataset(records, parse_min_sizes("640-800"), 1333, 0.5))
    rows = {
        f"before: {args.batch} padded together": stream_passes(len(records), None, args.batch, args.batch, args.batches),
        f"        {args.batch} grouped, one pass": stream_passes(len(records), groups, args.batch, args.batch,
                                                                  args.batches),
        "after:  passes of 2, grouped": stream_passes(len(records), groups, args.batch, 2, args.batches),
    }
    test = Geometry(TrainDataset(records, (800,), 1333, 0.0))
    print(f"{'':38s} {'area':>6s} {'short side':>10s} {'cells/object':>12s} {'no cell':>8s}")
    results = {name: measure(geo, passes, cfg) for name, passes in rows.items()}
    results["test time: one image at 800"] = measure(test, [[(i, 0)] for i in range(len(records))], cfg)
    for name, r in results.items():
        print(f"{name:38s} {r['area']:6.1%} {r['short']:10.1%} {r['pos']:12.2f} {r['lost']:8.2%}")
    b, a = results[f"before: {args.batch} padded together"], results["after:  passes of 2, grouped"]
    print(f"positive cells per object {a['pos'] / b['pos'] - 1:+.0%}; padded pixels per image "
          f"{1 / a['area'] / (1 / b['area']) - 1:+.0%}")
    if not args.steps:
        return
    t = throughput(records, groups, args)
    b, a = t["before"], t["after"]
    print(f"training steps (ResNet-18 at full SOLOv2 width, {args.step_batch} images per step, short side "
          f"{args.step_sizes}, {torch.get_num_threads()} threads, {args.steps} alternating steps per way):")
    for name, r in t.items():
        print(f"  {name:6s} {r['cpu_s']:.2f} CPU s/image ({r['wall_s']:.2f} s wall), "
              f"{r['mpx']:.2f} Mpx padded per image")
    print(f"  throughput after/before: {b['cpu_s'] / a['cpu_s']:.2f}x in CPU time, "
          f"{b['wall_s'] / a['wall_s']:.2f}x in wall time")

if __name__ == "__main__":
    main()
