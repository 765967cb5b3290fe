"""Benchmark `sap proposals --windows` on held-out large generated scenes with the pocket SAM.

Scenes: :func:`pseudolabel.pocket.scenes.make_large_scene` (seeds never used in training), of
``--sizes`` px a side with ``--objects`` whole shapes of 12–64 px each, one click per object at the
pixel farthest from its outline. Prints, in one run:

- for each size and ``--windows off`` / ``auto``: best-of-3 and top-1 (highest predicted IoU)
  mask mIoU, overall and by object size (equivalent diameter < 24, 24–40, ≥ 40 px), seconds per
  image and per point, windows encoded, and the peak resident memory of the run (a child
  process each);
- the reference, *the same objects in small scenes*: each object in a frame-sized (256 px) crop
  of its scene centred on it, decoded whole (no windows): the pocket SAM at the objects' native
  scale; ``auto`` should be within 0.03 mIoU of it;
- ``--sweep``: the auto threshold measured: scenes of k frames a side (k = 1 … 3), windows off
  against the reference, the mIoU lost at each k;
- ``--tiff``: peak memory of `sap proposals` (auto windows) on a ``--tiff-side``² tiled, deflate-
  compressed RGB TIFF (BigTIFF) with ``--tiff-points`` points, written to /tmp and deleted after,
  against the memory a whole-image decode needs for its pixels alone.

    nice -n 10 python scripts/bench_windows.py [--scenes 2] [--sizes 2048 4096] [--objects 60 150]
        [--sweep] [--tiff] [--tiff-side 20000] [--tiff-points 500]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.points import point_center  # noqa: E402
from pseudolabel.core.rle import rle_iou  # noqa: E402
from pseudolabel.core.windows import paste_rle  # noqa: E402
from pseudolabel.pocket.scenes import make_large_scene  # noqa: E402

BINS = ((0, 24, "<24 px"), (24, 40, "24-40 px"), (40, 1e9, ">=40 px"))


def scene_seed(size: int, index: int) -> int:
    """Held out: the pocket SAM trains on quality.scene_seed's train split, not on these."""
    return int(np.random.SeedSequence([29, size, index]).generate_state(1)[0])


def write_dataset(root: Path, scenes: list) -> Path:
    """PNG images and a point file (one click per object: the pixel farthest from its outline)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, scene in enumerate(scenes):
        h, w = scene.image.shape[:2]
        Image.fromarray(scene.image).save(root / "images" / f"s{i}.png")
        images.append({"id": i + 1, "file_name": f"s{i}.png", "width": w, "height": h})
        for j, (box, m) in enumerate(zip(scene.boxes, scene.masks)):
            x, y = point_center(m, None)
            anns.append({"id": (i + 1) * 1000 + j, "image_id": i + 1, "category_id": 1,
                         "point": [x + box[0], y + box[1]]})
    coco = {"images": images, "categories": [{"id": 1, "name": "shape"}], "annotations": anns}
    (root / "points.json").write_text(json.dumps(coco))
    return root / "points.json"


def child(points: str, images: str, out: str, windows: str) -> None:
    """One `run_proposals` in this process; prints its figures as JSON."""
    import torch

    from pseudolabel.core.engines.loading import create_engine
    from pseudolabel.proposals.run import ProposalConfig, run_proposals

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = ProposalConfig(engine="sam_pocket", prompts="point", windows=windows, precision="fp32", device="cpu")
    engine = create_engine("sam_pocket", None, "cpu", "fp32")  # loading it is not the run's time
    s = run_proposals(points, images, out, cfg, engine=engine)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": s.wall_s, "images": s.done, "points": s.points, "windows": s.windows,
                      "failed": len(s.failed), "peak_mb": peak}))


MEMORY_CAP_GB = 6.0  # a child over this is stopped (the machine is shared): its figures read "stopped"


def run_child(points: Path, images: Path, out: Path, windows: str) -> dict | None:
    """One child run; None when it grew over :data:`MEMORY_CAP_GB` and was stopped."""
    cmd = [sys.executable, __file__, "--child", str(points), str(images), str(out), windows]
    with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=log, stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        while proc.poll() is None:
            time.sleep(1)
            try:
                rss_gb = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
            except (OSError, IndexError):
                continue
            if rss_gb > MEMORY_CAP_GB:
                proc.kill()
                proc.wait()
                return None
        log.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(err.read()[-3000:])
        return json.loads(log.read().strip().splitlines()[-1])


def cache_ious(cache: Path, scenes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-of-3 IoU, top-1 IoU and equivalent diameter of every object."""
    from pseudolabel.core.cache import CacheReader

    best, top, diam = [], [], []
    with CacheReader(cache) as reader:
        for i, scene in enumerate(scenes):
            hw = scene.image.shape[:2]
            for bag in reader.image_bags(i + 1):
                j = bag.ann_id - (i + 1) * 1000
                gt = paste_rle(scene.masks[j], tuple(int(v) for v in scene.boxes[j][:2]), hw)
                ious = rle_iou(bag.rles, [gt])[:, 0]
                best.append(ious.max())
                top.append(ious[int(np.argmax(bag.scores))])
                diam.append(2 * np.sqrt(scene.masks[j].sum() / np.pi))
    return np.array(best), np.array(top), np.array(diam)


def reference_ious(engine, scenes: list, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same objects in small scenes: a ``crop``² piece of the scene centred on each object."""
    best, top, diam = [], [], []
    for scene in scenes:
        h, w = scene.image.shape[:2]
        for box, m in zip(scene.boxes, scene.masks):
            cx, cy = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
            x0, y0 = int(np.clip(cx - crop // 2, 0, max(w - crop, 0))), int(np.clip(cy - crop // 2, 0, max(h - crop, 0)))
            piece = scene.image[y0:y0 + crop, x0:x0 + crop]
            gt = np.zeros(piece.shape[:2], bool)
            gt[box[1] - y0:box[3] - y0, box[0] - x0:box[2] - x0] = m
            px, py = point_center(m, None)
            emb = engine.encode(np.ascontiguousarray(piece))
            low, iou = engine.decode(emb, point_coords=np.array([[[px + box[0] - x0, py + box[1] - y0]]]),
                                     point_labels=np.ones((1, 1)), multimask=True)
            masks = engine.upscale(low, emb)[0].cpu().numpy()
            ious = (masks & gt).sum((1, 2)) / np.maximum((masks | gt).sum((1, 2)), 1)
            best.append(ious.max())
            top.append(ious[int(iou[0].argmax())])
            diam.append(2 * np.sqrt(m.sum() / np.pi))
    return np.array(best), np.array(top), np.array(diam)


def whole_image_ious(engine, scenes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows off, in this process: each scene encoded whole, one decoder call per object."""
    best, top, diam = [], [], []
    for scene in scenes:
        emb = engine.encode(scene.image)
        for box, m in zip(scene.boxes, scene.masks):
            px, py = point_center(m, None)
            low, iou = engine.decode(emb, point_coords=np.array([[[px + box[0], py + box[1]]]]),
                                     point_labels=np.ones((1, 1)), multimask=True)
            masks = engine.upscale(low, emb)[0].cpu().numpy()
            area = masks.sum((1, 2))
            inter = (masks[:, box[1]:box[3], box[0]:box[2]] & m).sum((1, 2))
            ious = inter / np.maximum(area + m.sum() - inter, 1)
            best.append(ious.max())
            top.append(ious[int(iou[0].argmax())])
            diam.append(2 * np.sqrt(m.sum() / np.pi))
    return np.array(best), np.array(top), np.array(diam)


def by_size(values: np.ndarray, diam: np.ndarray) -> str:
    return "  ".join(f"{name} {values[(diam >= lo) & (diam < hi)].mean():.3f} (n={int(((diam >= lo) & (diam < hi)).sum())})"
                     for lo, hi, name in BINS if ((diam >= lo) & (diam < hi)).any())


def quality(args, engine) -> None:
    print(f"\n== quality: pocket SAM, {args.scenes} held-out scenes per size, objects 12-64 px, fp32 CPU ==")
    print(f"{'size':>6} {'windows':>9} {'best3':>6} {'top1':>6} {'s/img':>7} {'ms/pt':>6} {'wins':>5} {'peak MB':>8}"
          "   best-of-3 by size")
    for size, n_obj in zip(args.sizes, args.objects):
        scenes = [make_large_scene(scene_seed(size, i), (size, size), n_obj) for i in range(args.scenes)]
        with tempfile.TemporaryDirectory(prefix="sap_bench_windows_") as tmp:
            points = write_dataset(Path(tmp), scenes)
            for mode in ("off", "auto"):
                r = run_child(points, Path(tmp) / "images", Path(tmp) / mode, mode)
                if r is None:  # the quality without the run's figures, in this process
                    best, top, diam = whole_image_ious(engine, scenes)
                    print(f"{size:>6} {mode:>9} {best.mean():6.3f} {top.mean():6.3f}   `sap proposals` stopped: resident "
                          f"memory over {MEMORY_CAP_GB:.0f} GB   {by_size(best, diam)}")
                    continue
                best, top, diam = cache_ious(Path(tmp) / mode, scenes)
                print(f"{size:>6} {mode:>9} {best.mean():6.3f} {top.mean():6.3f} {r['wall_s'] / r['images']:7.2f} "
                      f"{1000 * r['wall_s'] / r['points']:6.1f} {r['windows']:5d} {r['peak_mb']:8.0f}   {by_size(best, diam)}")
        best, top, diam = reference_ious(engine, scenes, engine.frame)
        print(f"{size:>6} {'small':>9} {best.mean():6.3f} {top.mean():6.3f} {'':>7} {'':>6} {'':>5} {'':>8}   "
              f"{by_size(best, diam)}   <- same objects, {engine.frame}² scenes")


def sweep(args, engine) -> None:
    """Windows off against the reference as the image grows from 1 to 3 frames a side."""
    frame = engine.frame
    print(f"\n== auto threshold: windows off vs the same objects in {frame}² scenes (best-of-3 mIoU) ==")
    for k in (1.0, 1.15, 1.25, 1.35, 1.5, 2.0, 3.0):
        side = int(frame * k)
        scenes = [make_large_scene(scene_seed(side, i), (side, side), max(3, int(6 * k * k)))
                  for i in range(args.sweep_scenes)]
        off = whole_image_ious(engine, scenes)[0]
        ref = reference_ious(engine, scenes, frame)[0]
        print(f"  {k:4.2f} frames ({side:4d} px): off {np.mean(off):.3f}, small scenes {ref.mean():.3f}, "
              f"lost {ref.mean() - np.mean(off):+.3f} (n={len(off)})")


def tiff_memory(args) -> None:
    """Peak memory of auto windows on a large tiled TIFF against the pixels of a whole decode."""
    import tifffile

    side, tile = args.tiff_side, 256
    tmp = Path(tempfile.mkdtemp(prefix="sap_bench_tiff_", dir="/tmp"))
    try:
        rng = np.random.default_rng(0)
        base = rng.integers(60, 200, (tile, tile, 3), dtype=np.uint8)

        def tiles():
            for ty in range(-(-side // tile)):
                for tx in range(-(-side // tile)):
                    t = base.copy()
                    t[96:160, 96:160] = (ty * 37 % 255, tx * 53 % 255, 220)  # a 64-px square per tile
                    yield t

        t0 = time.perf_counter()
        (tmp / "images").mkdir()
        tifffile.imwrite(tmp / "images" / "big.tif", tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                         compression="zlib", bigtiff=True, photometric="rgb")
        size_mb = (tmp / "images" / "big.tif").stat().st_size / 2 ** 20
        cells = side // tile  # whole tiles only: every point inside the image
        picks = rng.choice(cells * cells, args.tiff_points, replace=False)
        anns = [{"id": i + 1, "image_id": 1, "category_id": 1,
                 "point": [float(c % cells * tile + 128), float(c // cells * tile + 128)]} for i, c in enumerate(picks)]
        (tmp / "points.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "big.tif", "width": side, "height": side}],
            "categories": [{"id": 1, "name": "square"}], "annotations": anns}))
        print(f"\n== {side}² tiled TIFF ({size_mb:.0f} MB deflate, written in {time.perf_counter() - t0:.0f} s), "
              f"{args.tiff_points} points, windows auto ==")
        r = run_child(tmp / "points.json", tmp / "images", tmp / "cache", "auto")
        if r is None:
            print(f"  stopped: resident memory over {MEMORY_CAP_GB:.0f} GB")
            return
        print(f"  peak resident memory {r['peak_mb'] / 1024:.2f} GB (goal < 3 GB); {r['wall_s']:.0f} s, "
              f"{r['windows']} windows, {r['failed']} failed; a whole decode needs {side * side * 3 / 2 ** 30:.2f} GB "
              "for its pixels alone (the naive reference)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:6])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--objects", type=int, nargs="+", default=[60, 150])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--sweep-scenes", type=int, default=4)
    ap.add_argument("--tiff", action="store_true")
    ap.add_argument("--tiff-side", type=int, default=20000)
    ap.add_argument("--tiff-points", type=int, default=500)
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()
    import torch

    from pseudolabel.core.engines.loading import create_engine

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    engine = create_engine("sam_pocket", None, "cpu", "fp32")
    if not args.skip_quality:
        quality(args, engine)
    if args.sweep:
        sweep(args, engine)
    if args.tiff:
        tiff_memory(args)


if __name__ == "__main__":
    main()
