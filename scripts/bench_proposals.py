"""Benchmark `sap proposals` against the naive way of getting SAM proposals for points.

Reference: the official tutorial loop — ``SamPredictor.set_image`` then one ``predict`` call per
point (multimask, full-resolution numpy masks), fp32. Ours: ``run_proposals`` (encode once,
chosen precision, batched decoding, masks upsampled and RLE-encoded chunk by chunk, one SQLite
commit per image). Both use SAM vit_b with a randomly initialised checkpoint file saved here
(no weights can be downloaded on the benchmark machine), so timings are real and masks are not.

Prints: throughput of both and their ratio, the relative error of bf16 against fp32 low-res
logits, agreement of our masks with the reference's, and peak memory of runs on 10 vs 50 images.

    python scripts/bench_proposals.py [--images 5] [--memory-images 10 50] [--model vit_b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.coco import load_coco_json  # noqa: E402
from pseudolabel.core.images import load_image_rgb  # noqa: E402
from pseudolabel.core.points import collect_points, derive_points  # noqa: E402
from pseudolabel.proposals.run import ProposalConfig, run_proposals  # noqa: E402
from pseudolabel.core.engines.loading import load_model as load_sam, save_random_checkpoint  # noqa: E402
from pseudolabel.core.engines.sam1 import SamEngine  # noqa: E402

# the 100-image set beside the clone, else the photos committed for the tests
DATA = next(p for p in (REPO.parent / "shared" / "data" / "coco_train2017_100", REPO / "tests" / "data" / "coco_cc_by") if p.is_dir())


def point_file(n_images: int, out: Path) -> Path:
    gt = load_coco_json(DATA / "annotations.json")
    keep = [im for im in sorted(gt["images"], key=lambda i: i["id"])
            if any(a["image_id"] == im["id"] and not a.get("iscrowd") for a in gt["annotations"])][:n_images]
    ids = {im["id"] for im in keep}
    sub = {**gt, "images": keep, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    pts, _ = derive_points(sub, "qc", seed=0)
    out.write_text(json.dumps(pts))
    return out


def reference(ckpt: Path, model_type: str, points: Path) -> tuple[float, int, dict]:
    """Per-point SamPredictor.predict, fp32, full-resolution masks: seconds, points, masks."""
    from segment_anything import SamPredictor

    sam, _ = load_sam(model_type, ckpt)  # the same module segment_anything's registry builds
    predictor = SamPredictor(sam)
    by_image, _ = collect_points(load_coco_json(points))
    images = {im["id"]: im for im in load_coco_json(points)["images"]}
    masks_out: dict[int, np.ndarray] = {}
    n = 0
    t0 = time.perf_counter()
    for image_id, pts in sorted(by_image.items()):
        img = images[image_id]
        predictor.set_image(load_image_rgb(DATA / "images" / img["file_name"], (img["width"], img["height"])))
        for p in pts:
            masks, scores, _ = predictor.predict(np.array([[p.x, p.y]]), np.array([1]), multimask_output=True)
            masks_out[p.ann_id] = masks
            n += 1
    return time.perf_counter() - t0, n, masks_out


def ours(ckpt: Path, model_type: str, points: Path, out: Path, precision: str) -> tuple[float, object]:
    cfg = ProposalConfig(engine=model_type, checkpoint=str(ckpt), precision=precision, device="cpu")
    t0 = time.perf_counter()
    summary = run_proposals(points, DATA / "images", out, cfg)
    return time.perf_counter() - t0, summary


def logits_error(ckpt: Path, model_type: str, points: Path) -> float:
    """‖bf16 − fp32‖ / ‖fp32‖ of the low-res logits on the first image's points."""
    model, sha = load_sam(model_type, ckpt)
    coco = load_coco_json(points)
    by_image, _ = collect_points(coco)
    image_id, pts = next((k, v) for k, v in sorted(by_image.items()) if v)
    img = next(im for im in coco["images"] if im["id"] == image_id)
    rgb = load_image_rgb(DATA / "images" / img["file_name"])
    xy = np.array([[[p.x, p.y]] for p in pts])
    out = {}
    for prec in ("fp32", "bf16"):
        eng = SamEngine(model, model_type, sha, "cpu", prec)
        low, _ = eng.decode(eng.encode(rgb), xy, np.ones((len(pts), 1)))
        out[prec] = low.double()
    return float((out["bf16"] - out["fp32"]).norm() / out["fp32"].norm())


def agreement(ref_masks: dict, cache: Path) -> float:
    """Mean IoU between the reference's masks and ours (same prompts, fp32)."""
    from pseudolabel.core.bag_sources import load_bags
    from pseudolabel.core.rle import decode_rle

    ious = []
    for bags in load_bags(cache).values():
        for bag in bags:
            for r in range(3):
                a = decode_rle(bag.rles[r]).astype(bool)
                b = ref_masks[bag.ann_id][r]
                union = (a | b).sum()
                ious.append((a & b).sum() / union if union else 1.0)
    return float(np.mean(ious))


def peak_memory_run(ckpt: Path, model_type: str, n_images: int, tmp: Path, precision: str) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of a `sap proposals` process over ``n_images`` images."""
    points = point_file(n_images, tmp / f"points{n_images}.json")
    code = (f"import resource, sys; sys.argv=['sap','proposals','--ann','{points}','--images','{DATA / 'images'}',"
            f"'--out','{tmp / f'mem{n_images}'}','--engine','{model_type}','--checkpoint','{ckpt}',"
            f"'--precision','{precision}','--device','cpu'];\n"
            f"sys.path.insert(0, '{REPO}')\nimport cli\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TQDM_DISABLE": "1"})
    secs = time.perf_counter() - t0
    peak = [ln for ln in res.stdout.splitlines() if ln.startswith("PEAK")]
    if not peak:
        raise RuntimeError(res.stderr[-2000:])
    return int(peak[0].split()[1]) / 1024, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--images", type=int, default=5, help="images for the throughput comparison")
    ap.add_argument("--memory-images", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--precision", default="bf16")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = save_random_checkpoint(args.model, tmp / f"sam_{args.model}_random.pth")
        points = point_file(args.images, tmp / "points.json")
        n_pts = sum(len(v) for v in collect_points(load_coco_json(points))[0].values())
        print(f"SAM {args.model} (random checkpoint file), {args.images} COCO images, {n_pts} points, "
              f"{torch.get_num_threads()} threads")
        t_ref, n, ref_masks = reference(ckpt, args.model, points)
        print(f"reference  per-point SamPredictor.predict fp32: {t_ref:7.1f} s  {n / t_ref:6.2f} points/s  "
              f"{t_ref / args.images:5.2f} s/image")
        t_32, s32 = ours(ckpt, args.model, points, tmp / "c32", "fp32")
        print(f"sap proposals fp32                            : {t_32:7.1f} s  {n / t_32:6.2f} points/s  "
              f"{t_32 / args.images:5.2f} s/image  ({t_ref / t_32:.2f}x)  "
              f"encoder {s32.encoder_s / args.images:.2f} s/img, decoder {s32.decoder_s / args.images:.2f} s/img")
        t_ours, s = ours(ckpt, args.model, points, tmp / "cache", args.precision)
        print(f"sap proposals {args.precision:<5}                           : {t_ours:7.1f} s  "
              f"{n / t_ours:6.2f} points/s  {t_ours / args.images:5.2f} s/image  ({t_ref / t_ours:.2f}x)  "
              f"encoder {s.encoder_s / args.images:.2f} s/img, decoder {s.decoder_s / args.images:.2f} s/img")
        print(f"speed-up over the reference: {t_ref / t_ours:.2f}x ({args.precision}), {t_ref / t_32:.2f}x (fp32)")
        print(f"mask agreement with the reference (fp32, mean IoU of the 3 masks): {agreement(ref_masks, tmp / 'c32'):.4f}")
        print(f"bf16 vs fp32 low-res logits, relative error: {logits_error(ckpt, args.model, points):.4f}")
        for k in args.memory_images:
            peak, secs = peak_memory_run(ckpt, args.model, k, tmp, args.precision)
            print(f"peak memory, {k:3d} images: {peak:7.0f} MiB  ({secs:.0f} s)")


if __name__ == "__main__":
    main()
