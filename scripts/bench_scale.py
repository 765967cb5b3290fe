"""How each stage's cost grows with the data set: N generated pocket scenes through every stage.

    nice -n 10 python scripts/bench_scale.py --sizes 250,1000,4000 --out /tmp/bench_scale

For each N (320×240 scenes from the pocket SAM's generator, 5–10 objects, one centre point per
object) it runs, each as its own ``sap`` process on the CPU with one thread: proposals (pocket
SAM, embeddings saved), select sam-top1, select sapnet (one epoch, R18 at 128 px), refine from
the cached embeddings, train (torch engine, a fixed number of iterations), eval, export
(Label Studio) and review. Per stage and N it prints the wall seconds per image, split into the
model compute the stage reports itself (encoder+decoder, selector training, SOLOv2 iterations)
and the rest (start-up, reading, RLE, SQLite, JSON, evaluation), the peak RSS of the process
(its ``VmHWM``), and the size of its outputs. Then the two bounds: time per image at the largest N
within 1.25× of the smallest, and peak RSS +15 % at most from the middle N to the largest.
Last, the non-model time per image next to SAM ViT-H's encoder on an A100 (0.1–0.45 s/image):
below it, the data path keeps a GPU busy.

The reference is the smallest N: every figure is compared with it in the same run. Train runs a
fixed number of iterations whatever N, so its model time per image shrinks with N by design; its
bound is on the non-model part (reading the pseudo-labels).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

A100_VIT_H_S = (0.1, 0.45)  # SAM ViT-H encoder per image on an A100, bf16 .. fp32 (issue 30)
STAGES = ("proposals", "select-top1", "select-sapnet", "refine", "train", "eval", "export", "review")


def make_scenes(root: Path, n: int, seed0: int = 0) -> tuple[Path, Path]:
    """N pocket scenes (240×320, 5–10 objects) as JPEGs and a COCO file with RLE masks."""
    from PIL import Image

    from pseudolabel.core.io import write_json_atomic
    from pseudolabel.core.rle import encode_mask, rle_area, rle_to_bbox_xywh
    from pseudolabel.pocket.scenes import coco_categories, make_scene

    images_dir = root / "images"
    gt = root / "annotations.json"
    if gt.is_file():
        return gt, images_dir
    images_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        scene = make_scene(seed0 + i, size=(240, 320), n_objects=(5, 10))
        name = f"scene_{i:06d}.jpg"
        Image.fromarray(scene.image).save(images_dir / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": 320, "height": 240})
        for kind, m in zip(scene.kinds, scene.masks):
            rle = encode_mask(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": kind + 1, "segmentation": rle,
                         "area": rle_area(rle), "bbox": rle_to_bbox_xywh(rle), "iscrowd": 0})
    write_json_atomic(gt, {"images": images, "annotations": anns, "categories": coco_categories()})
    return gt, images_dir


#: runs ``sap`` and, however it exits, writes its own peak RSS (``VmHWM``, kB) to ``$BENCH_RSS``
#: (``wait4``'s ``ru_maxrss`` would include the RSS the child inherited from this process at fork)
CHILD = """import os, sys, cli
try:
    sys.argv[0] = "sap"
    cli.main()
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    open(os.environ["BENCH_RSS"], "w").write(hwm)
"""


def run(argv: list[str], log: Path) -> tuple[float, int, str, float]:
    """Run ``sap ARGV`` once: (wall seconds, its own peak RSS in MiB, its stdout+stderr, its CPU
    seconds: user + system, which the other jobs of a shared machine disturb far less than wall)."""
    rss_file = log.with_suffix(".rss")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "BENCH_RSS": str(rss_file)}
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, stdout=f, stderr=subprocess.STDOUT,
                              cwd=REPO)
    wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    text = log.read_text()
    if done.returncode not in (0, 1):
        raise SystemExit(f"sap {argv[0]} failed (see {log}):\n{text[-2000:]}")
    return wall, int(rss_file.read_text()) // 1024, text, cpu


def _first(pattern: str, text: str, default: float = 0.0) -> float:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default


def model_seconds(stage: str, text: str, n: int) -> float:
    """The model compute a stage reports in its own summary (0 for the tools)."""
    if stage == "proposals":
        return n * (_first(r"([\d.]+) s/image encoder", text) + _first(r"([\d.]+) s/image decoder", text))
    if stage == "select-sapnet":
        return _first(r"training: ([\d.]+) s", text)
    if stage == "train":
        return _first(r"iterations \(to \d+\) in ([\d.]+) s", text)
    if stage == "refine":
        return 0.0  # refine reports no model time of its own: all of it counts as "other"
    return 0.0


def sizes_of(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return total


def synthetic_cache(gt: Path, pts: Path, images: Path, cache: Path) -> None:
    """A proposal cache without SAM: 6 SAM-like proposals per point made from the true masks
    (``pseudolabel.selector.synthetic``), for the stages that only read proposals."""
    try:
        from pseudolabel.testing.synthetic import synthetic_bags, write_bags_cache
    except ImportError:  # before the move of the test helpers to pseudolabel.testing
        from pseudolabel.selector.synthetic import synthetic_bags, write_bags_cache
    points = json.loads(pts.read_text())
    write_bags_cache(cache, points, synthetic_bags(json.loads(gt.read_text()), points), images)


def bench_one(n: int, root: Path, train_iters: int, skip: set[str], synthetic: bool = False) -> list[dict]:
    from pseudolabel.core.engines.loading import bundled_checkpoint

    gt, images = make_scenes(root / "data", n)
    pts, cache = root / "points.json", root / "cache"
    if not pts.is_file():  # the points of these scenes do not change: made once per N
        run(["points", "--gt", str(gt), "--out", str(pts)], root / "points.log")
    if synthetic and not cache.is_dir():
        synthetic_cache(gt, pts, images, cache)
    pocket = ["--engine", "sam_pocket", "--checkpoint", str(bundled_checkpoint("sam_pocket")), "--device", "cpu"]
    top1, sapnet, refined = root / "top1.json", root / "sapnet.json", root / "refined.json"
    net = ["--backbone", "resnet18", "--backbone-weights", "none", "--lr", "0.16", "--min-size", "128",
           "--max-size", "160", "--workers", "0", "--device", "cpu", "--batch-size", "4"]
    labels = top1 if "refine" in skip else refined  # what train, eval, export and review read
    train_cfg = root / "train.yaml"
    train_cfg.write_text("warmup_iters: 1\nmodel: {head_channels: 32, head_convs: 1, fpn_channels: 32, "
                         "mask_channels: 16, kernel_dim: 16}\n")
    plan = {
        "proposals": (["proposals", "--ann", str(pts), "--images", str(images), "--out", str(cache), *pocket,
                       "--prompts", "point,point_box", "--save-embeddings"], [cache]),
        "select-top1": (["select", "--ann", str(pts), "--proposals", str(cache), "--method", "sam-top1",
                         "--out", str(top1)], [top1]),
        "select-sapnet": (["select", "--ann", str(pts), "--proposals", str(cache), "--images", str(images),
                           "--method", "sapnet", "--epochs", "1", *net, "--out", str(sapnet)], [sapnet]),
        "refine": (["refine", "--ann", str(top1), "--images", str(images), "--out", str(refined), *pocket,
                    "--embeddings", str(cache), "--iters", "1"], [refined]),
        "train": (["train", "--train", str(labels), "--images", str(images), "--out", str(root / "train"),
                   "--engine", "torch", "--backbone", "resnet18", "--backbone-weights", "none", "--iters",
                   str(train_iters), "--batch", "2", "--min-size", "160", "--max-size", "224",
                   "--checkpoint-period", str(train_iters), "--workers", "0", "--device", "cpu",
                   "--config", str(train_cfg)], [root / "train"]),
        "eval": (["eval", "--gt", str(gt), *[a for f in sorted({str(top1), str(labels)}) for a in ("--pseudo", f)],
                  "--out", str(root / "eval.json")], [root / "eval.json"]),
        "export": (["export", "--to", "labelstudio", "--ann", str(labels), "--images", str(images),
                    "--out", str(root / "labelstudio.json")], [root / "labelstudio.json"]),
        "review": (["review", "--ann", str(labels), "--images", str(images), "--selected", str(top1),
                    "--proposals", str(cache), "--no-thumbnails", "--out", str(root / "review")],
                   [root / "review"]),
    }
    rows, n_points = [], len(json.loads(pts.read_text())["annotations"])
    for stage in (s for s in STAGES if s not in skip):
        argv, outputs = plan[stage]
        wall, rss, text, cpu = run(argv, root / f"{stage}.log")
        model = min(model_seconds(stage, text, n), wall)
        rows.append({"stage": stage, "n": n, "wall_s": wall, "cpu_s": cpu, "model_s": model, "rss_mib": rss,
                     "out_bytes": sizes_of(outputs), "points": n_points, "pseudo_bytes": sizes_of([top1]) if stage == "select-top1" else 0})
        print(f"  N={n:6d} {stage:14s} {wall:8.1f} s  cpu {cpu:8.1f} s  model {model:7.1f} s  RSS {rss:6d} MiB  "
              f"out {sizes_of(outputs) / 2**20:8.2f} MiB", flush=True)
    return rows


def _other(r: dict, cpu: bool = False) -> float:
    """A row's non-model seconds: of wall time, or of CPU time (the model's share of the CPU taken
    as its share of the wall time)."""
    if not cpu:
        return r["wall_s"] - r["model_s"]
    return r["cpu_s"] * (1 - r["model_s"] / r["wall_s"]) if r["wall_s"] else 0.0


def report(rows: list[dict], sizes: list[int], train_iters: int) -> None:
    print("\nstage            N   s/img   cpu s/img  model/img  other/img  peak RSS MiB  output MiB")
    for r in rows:
        n = r["n"]
        cpu = f"{r['cpu_s'] / n:9.4f}" if "cpu_s" in r else "        -"
        print(f"{r['stage']:14s} {n:6d} {r['wall_s'] / n:7.4f}  {cpu}  {r['model_s'] / n:9.4f}  "
              f"{(r['wall_s'] - r['model_s']) / n:9.4f}  {r['rss_mib']:12d}  {r['out_bytes'] / 2**20:10.2f}")
    by = {(r["stage"], r["n"]): r for r in rows}
    measured = {stage: [n for n in sizes if (stage, n) in by] for stage in STAGES}
    measured = {k: v for k, v in measured.items() if len(v) > 1}
    print(f"\nbounds: time/image at the largest N vs the smallest (<= 1.25x; wall, and CPU seconds, which the "
          f"machine's other jobs disturb far less; train: the non-model part, it runs {train_iters} iterations "
          f"whatever N), peak RSS from the middle N to the largest (<= +15 %)")
    for stage in measured:
        ns = measured[stage]
        small, mid, big = ns[0], ns[-2] if len(ns) > 1 else ns[0], ns[-1]
        a, m, b = by[(stage, small)], by[(stage, mid)], by[(stage, big)]
        train = stage == "train"
        ta, tb = (_other(a) if train else a["wall_s"]) / small, (_other(b) if train else b["wall_s"]) / big
        cpu = "cpu_s" in a and "cpu_s" in b
        ca = ((_other(a, True) if train else a["cpu_s"]) / small) if cpu else 0.0
        cb = ((_other(b, True) if train else b["cpu_s"]) / big) if cpu else 0.0
        rss = b["rss_mib"] / m["rss_mib"] - 1
        ok = ("ok" if tb <= 1.25 * ta else "TIME") + ((" ok" if cb <= 1.25 * ca else " CPU") if cpu else " -") + \
            (" ok" if rss <= 0.15 else " RSS")
        cpu_text = f"cpu x{cb / ca:5.2f}" if cpu and ca else "cpu    -  "
        print(f"  {stage:14s} N {small}->{big}: wall x{tb / ta:5.2f}  {cpu_text}  RSS {mid}->{big} "
              f"{100 * rss:+6.1f} % ({m['rss_mib']}->{b['rss_mib']} MiB)  {ok}")
    print("\nmarginal cost per image from the smallest N to the largest (start-up and fixed work cancel out): "
          "what projections use")
    for stage in measured:
        small, big = measured[stage][0], measured[stage][-1]
        a, b = by[(stage, small)], by[(stage, big)]
        dw, dm = (b["wall_s"] - a["wall_s"]) / (big - small), (b["model_s"] - a["model_s"]) / (big - small)
        dc = (_other(b, True) - _other(a, True)) / (big - small) if "cpu_s" in a and "cpu_s" in b else float("nan")
        print(f"  {stage:14s} {dw:7.4f} s/image  model {dm:7.4f}  other {dw - dm:7.4f}  other CPU {dc:7.4f}  "
              f"output {(b['out_bytes'] - a['out_bytes']) / (big - small) / 1024:8.1f} KiB/image")
    print(f"\nnon-model time per image at the largest N (wall; CPU seconds, what one idle core would take) next to "
          f"SAM ViT-H's encoder on an A100 ({A100_VIT_H_S[0]}-{A100_VIT_H_S[1]} s/image): below 0.1 s keeps that GPU busy")
    for stage in measured:
        big = measured[stage][-1]
        b = by[(stage, big)]
        other, cpu = _other(b) / big, (_other(b, True) / big if "cpu_s" in b else float("nan"))
        t = other if cpu != cpu else cpu  # wall where no CPU time was recorded
        verdict = "keeps up" if t < A100_VIT_H_S[0] else ("keeps up at fp32" if t < A100_VIT_H_S[1]
                                                             else "slower than the GPU")
        print(f"  {stage:14s} wall {other:7.4f}  CPU {cpu:7.4f} s/image  {verdict}")
    project(by, measured)


#: what the projections scale to: images, and points per image (COCO train2017; an SA-1B-sized set)
TARGETS = {"COCO train2017": (118_287, 860_001 / 118_287), "SA-1B-sized": (11_000_000, 100.0)}


def project(by: dict, measured: dict) -> None:
    """The measured marginal costs per image scaled to the targets: the non-model CPU hours on one
    core, the outputs, and the peak RSS extrapolated along its measured slope (these scenes hold
    ~9 points per image: per-point costs scale by the target's density)."""
    print("\nprojection of the non-model part (CPU hours on one core; outputs; peak RSS along the measured "
          "slope), per-point costs scaled from ~9 points per image to the target's density")
    for name, (images, density) in TARGETS.items():
        for stage in measured:
            small, big = measured[stage][0], measured[stage][-1]
            a, b = by[(stage, small)], by[(stage, big)]
            pts = b.get("points") or 9.0 * big
            scale = density / (pts / big)
            cpu = (_other(b, True) - _other(a, True)) / (big - small) if "cpu_s" in a and "cpu_s" in b else float("nan")
            out = (b["out_bytes"] - a["out_bytes"]) / (big - small) * scale * images
            rss = b["rss_mib"] + (b["rss_mib"] - a["rss_mib"]) / (big - small) * scale * (images - big)
            print(f"  {name:15s} {stage:14s} CPU {max(cpu, 0.0) * scale * images / 3600:9.1f} h  "
                  f"out {out / 2**30:9.2f} GiB  RSS {rss / 1024:8.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,2000,8000", help="comma-separated N (default 500,2000,8000)")
    ap.add_argument("--out", default="/tmp/bench_scale")
    ap.add_argument("--train-iters", type=int, default=20)
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages (default: all)")
    ap.add_argument("--synthetic-proposals", action="store_true",
                    help="a proposal cache made from the true masks instead of the proposals stage (for the "
                         "data-path stages at large N: select-top1, eval, export, review)")
    ap.add_argument("--sapnet-sizes", default=None,
                    help="the N at which select-sapnet runs (default: all; the slowest stage on a CPU)")
    ap.add_argument("--report-only", action="store_true", help="print the report of OUT/rows.json (a cut-short run)")
    args = ap.parse_args()
    sizes = sorted(int(v) for v in args.sizes.split(","))
    if args.report_only:
        rows = json.loads(Path(args.out, "rows.json").read_text())
        report(rows, sorted({r["n"] for r in rows}), args.train_iters)
        return
    import torch

    torch.set_num_threads(1)
    print(f"bench_scale: N = {sizes}, CPU only, one thread per process, {os.cpu_count()} cores on the machine")
    rows_file = Path(args.out, "rows.json")
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else []  # earlier runs into OUT are kept
    sapnet_sizes = set(sizes) if args.sapnet_sizes is None else {int(v) for v in args.sapnet_sizes.split(",")}
    for n in sizes:
        skip = set(STAGES) - set(args.stages.split(",")) | (set() if n in sapnet_sizes else {"select-sapnet"})
        new = bench_one(n, Path(args.out) / f"n{n}", args.train_iters, skip, args.synthetic_proposals)
        done = {(r["stage"], r["n"]) for r in new}
        rows = [r for r in rows if (r["stage"], r["n"]) not in done] + new
        rows_file.write_text(json.dumps(rows, indent=1))
    report(rows, sorted({r["n"] for r in rows}), args.train_iters)


if __name__ == "__main__":
    main()
