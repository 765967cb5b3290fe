"""Stage-1 throughput on one GPU: encoder images/s by batch size, decoder points/s, RLE, memory.

Random-weight SAM v1 checkpoints saved here (no weights can be downloaded) and ``--images``
images made by repeating the CC-BY test photos (tests/data/coco_cc_by). Per engine it prints:
encoder images/s at batch 1 and at each of ``--batches`` (the best marked), decoder points/s
(``--points-per-batch`` centre-ish points per call, 3 masks each, upscaled to the image),
RLE-encoding throughput of those masks (masks/s and megapixels/s, CPU) and the peak GPU memory;
and the device's name. ``--dry-run`` runs the same code on the CPU with the tiny model and 2
images (what the tests run).

    python scripts/bench_gpu.py [--engines sam_vit_b sam_vit_h] [--images 50] [--batches 1 2 4 8 16]
    python scripts/bench_gpu.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.engines.base import stability_score  # noqa: E402
from pseudolabel.core.engines.loading import create_engine, save_random_checkpoint  # noqa: E402
from pseudolabel.core.images import load_image_rgb  # noqa: E402
from pseudolabel.core.rle import encode_masks  # noqa: E402

PHOTOS = REPO / "tests" / "data" / "coco_cc_by" / "images"


def photos(n: int) -> list[np.ndarray]:
    """``n`` RGB images: the CC-BY test photos, repeated (each repeat mirrored, so no two are equal)."""
    base = [load_image_rgb(p) for p in sorted(PHOTOS.glob("*.jpg"))]
    out = []
    for i in range(n):
        img = base[i % len(base)]
        out.append(np.ascontiguousarray(img[:, ::-1]) if (i // len(base)) % 2 else img)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_engine(name: str, ckpt: Path, device: str, precision: str, images: list[np.ndarray],
                 batches: list[int], points_per_batch: int) -> dict:
    engine = create_engine(name, str(ckpt), device, precision)
    dev = engine.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    engine.encode_batch(images[:1])  # warm-up
    enc = {}
    for b in batches:
        usable = len(images) // b * b
        if usable == 0:
            continue
        engine.encode_batch(images[:b])  # warm-up at this shape
        sync(dev)
        t0 = time.perf_counter()
        for i in range(0, usable, b):
            embs = engine.encode_batch(images[i:i + b])
        sync(dev)
        enc[b] = usable / (time.perf_counter() - t0)
    emb = embs[0]
    h, w = emb.original_size
    rng = np.random.default_rng(0)
    xy = np.stack([rng.uniform(0, w, points_per_batch), rng.uniform(0, h, points_per_batch)], 1)[:, None]
    labels = np.ones((points_per_batch, 1))
    engine.decode(emb, xy, labels)  # warm-up
    calls, masks_out = 5, []
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(calls):
        low, _ = engine.decode(emb, xy, labels)
        logits = engine.upscale(low, emb, threshold=None)
        stability_score(logits)
        masks_out.append((logits > 0).flatten(0, 1).cpu().numpy())
    sync(dev)
    dec_pts = calls * points_per_batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    n_masks = sum(len(encode_masks(m)) for m in masks_out)
    rle_s = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else float("nan")
    best = max(enc, key=enc.get)
    return {"engine": name, "precision": engine.precision, "encoder_path": getattr(engine, "encoder_path", ""),
            "encoder_images_per_s": enc, "best_batch": best, "decoder_points_per_s": dec_pts,
            "rle_masks_per_s": n_masks / rle_s, "rle_mpixels_per_s": n_masks * h * w / rle_s / 1e6,
            "gpu_peak_gib": mem}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", nargs="+", default=["sam_vit_b", "sam_vit_h"])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 2 images (tests)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.engines, args.images, args.batches, args.points_per_batch = ["sam_tiny"], 2, [1, 2], 4
        args.device, args.precision = "cpu", "fp32"
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {args.images} images from the CC-BY test photos")
    images = photos(args.images)
    out = {"device": name, "torch": torch.__version__, "images": args.images, "engines": []}
    with tempfile.TemporaryDirectory() as d:
        for eng in args.engines:
            ckpt = save_random_checkpoint(eng, Path(d) / f"{eng}.pth")
            r = bench_engine(eng, ckpt, device, args.precision, images, args.batches, args.points_per_batch)
            out["engines"].append(r)
            enc = "  ".join(f"b{b}: {v:.2f}" for b, v in r["encoder_images_per_s"].items())
            print(f"{eng} {r['precision']} ({r['encoder_path']}): encoder images/s {enc} (best batch "
                  f"{r['best_batch']}, {r['encoder_images_per_s'][r['best_batch']] / r['encoder_images_per_s'][1]:.2f}x "
                  f"batch 1); decoder {r['decoder_points_per_s']:.1f} points/s; RLE {r['rle_masks_per_s']:.0f} "
                  f"masks/s ({r['rle_mpixels_per_s']:.0f} Mpx/s); GPU peak {r['gpu_peak_gib']:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
