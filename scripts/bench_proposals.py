"""Benchmark `sap proposals` against the naive way of getting SAM proposals for points.

Reference: the official tutorial loop — ``SamPredictor.set_image`` then one ``predict`` call per
point (multimask, full-resolution numpy masks), fp32. Ours: ``run_proposals`` (encode once,
chosen precision, batched decoding, masks upsampled and RLE-encoded chunk by chunk, one SQLite
commit per image). Both use SAM vit_b with a randomly initialised checkpoint file saved here
(no weights can be downloaded on the benchmark machine), so timings are real and masks are not.

Prints, in one run:

- the floor: this machine's GEMM peak in fp32 and bf16 on the encoder's largest shape (4096
  tokens × width → 4·width; best of the measurements taken after every encoder timing),
  the encoder's FLOPs per 1024² image (counted by torch's FlopCounterMode on segment_anything's
  forward), hence the floor in seconds per image;
- the encoder in seconds per image on one photo for each path of the SAM v1 engine — ``plain``
  (segment_anything's forward, what the reference runs), ``fused`` (only the global blocks through
  SDPA, the previous default) and ``fast`` (the default) — alternating, best of ``--encoder-reps``,
  as a fraction of the floor, with the fast path's relative error against plain;
- end to end: throughput of the reference and of ``sap proposals`` and their ratio, the
  reference's encoder share, agreement of our masks with the reference's, the relative error of
  bf16 against fp32 low-res logits (when bf16 runs), and peak memory of runs on 10 vs 50 images.

bf16 is timed where ``--precision auto`` picks it (CPUs with AVX512-BF16/AMX) or with
``--bf16``; elsewhere bf16 runs far below fp32 and only its GEMM peak is printed.

    python scripts/bench_proposals.py [--images 5] [--encoder-reps 2] [--memory-images 10 50]
        [--model vit_b] [--bf16]
"""

from __future__ import annotations

import argparse
import copy
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
from pseudolabel.core.engines.base import resolve_precision  # noqa: E402
from pseudolabel.core.engines.loading import load_model as load_sam, save_random_checkpoint  # noqa: E402
from pseudolabel.core.engines.sam1 import SamEngine  # noqa: E402

# $SAP_COCO100, else the 100-image set beside the clone, else the photos committed for the tests
DATA = next(p for p in (Path(os.environ.get("SAP_COCO100", "/nonexistent")),
                        REPO.parent / "shared" / "data" / "coco_train2017_100",
                        REPO / "tests" / "data" / "coco_cc_by") if p.is_dir())


def point_file(n_images: int, out: Path) -> Path:
    gt = load_coco_json(DATA / "annotations.json")
    keep = [im for im in sorted(gt["images"], key=lambda i: i["id"])
            if any(a["image_id"] == im["id"] and not a.get("iscrowd") for a in gt["annotations"])][:n_images]
    ids = {im["id"] for im in keep}
    sub = {**gt, "images": keep, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    pts, _ = derive_points(sub, "qc", seed=0)
    out.write_text(json.dumps(pts))
    return out


class Peak:
    """The best GEMM rate (GFLOP/s) seen so far per dtype on the encoder's largest shape: the
    MLP's first GEMM, ``4096 tokens × width → 4·width`` (vit_b: 4096×768×3072, 19.3 GFLOP).
    Measured again after every encoder timing, so a loaded machine's best moment counts."""

    def __init__(self, width: int, tokens: int = 4096) -> None:
        self.shape = (tokens, width, 4 * width)
        self.best: dict[torch.dtype, float] = {}

    @torch.inference_mode()
    def measure(self, dtypes=(torch.float32, torch.bfloat16)) -> None:
        g = torch.Generator().manual_seed(0)
        m, k, n = self.shape
        for dtype in dtypes:
            a, w, b = (torch.randn(s, generator=g).to(dtype) for s in ((m, k), (n, k), (n,)))
            torch.nn.functional.linear(a, w, b)  # warm-up (oneDNN primitive creation)
            t0 = time.perf_counter()
            torch.nn.functional.linear(a, w, b)
            rate = 2 * m * k * n / (time.perf_counter() - t0) / 1e9
            self.best[dtype] = max(self.best.get(dtype, 0.0), rate)


def encoder_gflop(model) -> float:
    """FLOPs of segment_anything's encoder forward on one 1024² image (on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    enc = copy.deepcopy(model.image_encoder).to("meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        enc(torch.empty(1, 3, 1024, 1024, device="meta"))
    return counter.get_total_flops() / 1e9


def encoder_paths(ckpt: Path, model_type: str, rgb: np.ndarray, precisions: list[str], reps: int,
                  peak: Peak) -> dict:
    """Best seconds per image of each encoder path at each precision (alternating), and the
    relative error of each path's embedding against plain's at the same precision."""
    model, sha = load_sam(model_type, ckpt)
    engines = {(path, prec): SamEngine(copy.deepcopy(model), model_type, sha, "cpu", prec, encoder=path)
               for prec in precisions for path in ("plain", "fused", "fast")}
    best = {k: float("inf") for k in engines}
    feats = {}
    for _ in range(reps):
        for key, eng in engines.items():
            t0 = time.perf_counter()
            feats[key] = eng.encode(rgb).features.double()
            best[key] = min(best[key], time.perf_counter() - t0)
            peak.measure()
    err = {k: float((f - feats[("plain", k[1])]).norm() / feats[("plain", k[1])].norm()) for k, f in feats.items()}
    return {k: (best[k], err[k]) for k in engines}


def reference(ckpt: Path, model_type: str, points: Path) -> tuple[float, int, dict, float]:
    """Per-point SamPredictor.predict, fp32, full-resolution masks: seconds, points, masks, and
    the seconds spent in ``set_image`` (the encoder)."""
    from segment_anything import SamPredictor

    sam, _ = load_sam(model_type, ckpt)  # the same module segment_anything's registry builds
    predictor = SamPredictor(sam)
    by_image, _ = collect_points(load_coco_json(points))
    images = {im["id"]: im for im in load_coco_json(points)["images"]}
    masks_out: dict[int, np.ndarray] = {}
    n = 0
    enc_s = 0.0
    t0 = time.perf_counter()
    for image_id, pts in sorted(by_image.items()):
        img = images[image_id]
        rgb = load_image_rgb(DATA / "images" / img["file_name"], (img["width"], img["height"]))
        t1 = time.perf_counter()
        predictor.set_image(rgb)
        enc_s += time.perf_counter() - t1
        for p in pts:
            masks, scores, _ = predictor.predict(np.array([[p.x, p.y]]), np.array([1]), multimask_output=True)
            masks_out[p.ann_id] = masks
            n += 1
    return time.perf_counter() - t0, n, masks_out, enc_s


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
    ap.add_argument("--encoder-reps", type=int, default=2, help="timed encodes of each encoder path")
    ap.add_argument("--memory-images", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--bf16", action="store_true", help="time bf16 even where --precision auto picks fp32")
    args = ap.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    precisions = ["fp32"] + (["bf16"] if args.bf16 or resolve_precision("auto", cpu) == "bf16" else [])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ckpt = save_random_checkpoint(args.model, tmp / f"sam_{args.model}_random.pth")
        points = point_file(args.images, tmp / "points.json")
        coco = load_coco_json(points)
        n_pts = sum(len(v) for v in collect_points(coco)[0].values())
        print(f"SAM {args.model} (random checkpoint file), {args.images} COCO images, {n_pts} points, "
              f"{torch.get_num_threads()} threads, load average {load:.1f} on {os.cpu_count()} CPUs")

        # --- the floor
        model, _ = load_sam(args.model, ckpt)
        gflop = encoder_gflop(model)
        width = model.image_encoder.patch_embed.proj.out_channels
        del model
        peak = Peak(width)
        peak.measure()
        first = sorted(coco["images"], key=lambda im: im["id"])[0]
        rgb = load_image_rgb(DATA / "images" / first["file_name"], (first["width"], first["height"]))
        paths = encoder_paths(ckpt, args.model, rgb, precisions, args.encoder_reps, peak)
        pk = {"fp32": peak.best[torch.float32], "bf16": peak.best[torch.bfloat16]}
        print(f"GEMM peak, {'×'.join(map(str, peak.shape))} (best of the run): fp32 {pk['fp32']:.1f} GFLOP/s, "
              f"bf16 {pk['bf16']:.1f} GFLOP/s; encoder {gflop:.0f} GFLOP/image → floor "
              f"{gflop / pk['fp32']:.2f} s/image fp32, {gflop / pk['bf16']:.2f} s/image bf16")
        for (path, prec), (secs, err) in paths.items():
            floor = gflop / pk[prec]
            print(f"encoder {path:<5} {prec}: {secs:7.2f} s/image  {floor / secs:5.1%} of the floor  "
                  f"({paths[('plain', prec)][0] / secs:.2f}x plain; rel. error vs plain {err:.1e})")
        if "bf16" not in precisions:
            print("bf16 encoder not timed: --precision auto picks fp32 on this CPU (no AVX512-BF16/AMX); "
                  "--bf16 times it anyway")

        # --- end to end
        t_ref, n, ref_masks, ref_enc = reference(ckpt, args.model, points)
        print(f"reference  per-point SamPredictor.predict fp32: {t_ref:7.1f} s  {n / t_ref:6.2f} points/s  "
              f"{t_ref / args.images:5.2f} s/image  encoder {ref_enc / args.images:.2f} s/image "
              f"({gflop / pk['fp32'] / (ref_enc / args.images):.1%} of the fp32 floor)")
        results = {}
        for prec in precisions:
            t, summ = ours(ckpt, args.model, points, tmp / f"c_{prec}", prec)
            results[prec] = t
            enc = summ.encoder_s / args.images
            print(f"sap proposals {prec}: {t:7.1f} s  {n / t:6.2f} points/s  {t / args.images:5.2f} s/image  "
                  f"({t_ref / t:.2f}x)  encoder {enc:.2f} s/img ({gflop / pk[prec] / enc:.1%} of the {prec} floor), "
                  f"decoder {summ.decoder_s / args.images:.2f} s/img")
        print("speed-up over the reference: " + ", ".join(f"{t_ref / t:.2f}x ({p})" for p, t in results.items()))
        print(f"mask agreement with the reference (fp32, mean IoU of the 3 masks): "
              f"{agreement(ref_masks, tmp / 'c_fp32'):.4f}")
        if "bf16" in precisions:
            print(f"bf16 vs fp32 low-res logits, relative error: {logits_error(ckpt, args.model, points):.4f}")
        for k in args.memory_images:
            peak_mib, secs = peak_memory_run(ckpt, args.model, k, tmp, precisions[-1])
            print(f"peak memory, {k:3d} images: {peak_mib:7.0f} MiB  ({secs:.0f} s)")


if __name__ == "__main__":
    main()
