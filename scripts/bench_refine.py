"""Benchmark `sap refine`: speed with and without cached embeddings, memory, point sampling.

    python scripts/bench_refine.py [--data ../shared/data/coco_train2017_100] [--images 3]
                                   [--rss-counts 5,20,80] [--json OUT]

1. Speed, SAM vit_b loaded through the real checkpoint path from a random-weight file saved to
   a temporary folder (masks are meaningless, timings are not): seconds per image and masks per
   second on the first ``--images`` images of the corrupted ground truth, (a) re-encoding every
   image, (b) reading embeddings from a `sap proposals --save-embeddings` cache, and (c) the
   naive reference of (b) with one decoder call per mask instead of one per image; all three on
   the same masks with the default rules (``--reference official``). The goal: (b) ≥ 5× (a).
   "other s" is the rest of the time: prompt mining (chamfer distances, mask prompts), SAM's
   upscaling, RLE and JSON.
3. Memory: peak RSS of a whole refine process (tiny SAM, re-encoding, 2 iterations) at growing
   numbers of images (``--rss-counts``; the images of ``--data`` repeated under new ids), each in
   its own process, so the figure is that run's peak. The goal: flat in the number of images.
2. Point sampling (no SAM): on the corrupted ground truth of all images (`sap corrupt`, seed 0),
   the share of prompt points that fall inside the *true* mask, for the distance-guided positive
   point vs the box-centre point (and a uniformly random mask pixel), as the paper's Table 2a.
   The coarse masks' quality is measured with `sap eval`'s metrics.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pseudolabel.core.coco import load_coco_json
from pseudolabel.evaluate import evaluate_pseudo
from pseudolabel.core.rle import decode_rle, segmentation_to_rle
from pseudolabel.core.engines.base import PromptEngine
from pseudolabel.core.engines.loading import create_engine, save_random_checkpoint
from pseudolabel.testing.corrupt import CorruptConfig, corrupt_coco
from refine.instances import run_refine
from refine.prompts import box_center_point, point_of
from refine.refiner import RefineConfig

REPO = Path(__file__).resolve().parents[1]


def first_images(coco: dict, n: int) -> dict:
    """The first ``n`` images with non-crowd annotations, and those annotations."""
    keep = []
    for img in coco["images"]:
        if any(a["image_id"] == img["id"] and not a.get("iscrowd", 0) for a in coco["annotations"]):
            keep.append(img)
        if len(keep) == n:
            break
    ids = {img["id"] for img in keep}
    return {**coco, "images": keep,
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids and not a.get("iscrowd", 0)]}


def point_shares(gt: dict, coarse: dict, seed: int = 0) -> dict[str, float]:
    """Share of points inside the true mask, per sampling strategy, over all corrupted masks."""
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    true = {a["id"]: a for a in gt["annotations"]}
    hits = {"distance-guided": 0, "distance-guided, euclidean": 0, "box centre": 0, "random mask pixel": 0}
    n = 0
    for a in coarse["annotations"]:
        if a.get("iscrowd", 0) or a["id"] not in true:
            continue
        h, w = sizes[a["image_id"]]
        c = decode_rle(segmentation_to_rle(a["segmentation"], h, w)).astype(bool)
        t = decode_rle(segmentation_to_rle(true[a["id"]]["segmentation"], h, w)).astype(bool)
        if not c.any():
            continue
        ys, xs = np.nonzero(c)
        k = rng.integers(len(ys))
        for name, (x, y) in (("distance-guided", point_of(c, "chamfer")),
                             ("distance-guided, euclidean", point_of(c, "euclidean")),
                             ("box centre", box_center_point(c)), ("random mask pixel", (xs[k], ys[k]))):
            hits[name] += bool(t[y, x])
        n += 1
    return {"masks": n, **{k: v / n for k, v in hits.items()}}


def timed_refine(ann: Path, images: Path, out: Path, cfg: RefineConfig, engine: PromptEngine) -> dict:
    engine.timings.encoder = engine.timings.decoder = 0.0
    t0 = time.perf_counter()
    summary = run_refine(ann, images, out, cfg, engine=engine, resume=False)
    wall = time.perf_counter() - t0
    n_img = summary.refined_images
    return {"images": n_img, "masks": summary.refined, "s_per_image": wall / n_img,
            "masks_per_s": summary.refined / wall, "encoder_s": engine.timings.encoder,
            "decoder_s": engine.timings.decoder, "other_s": wall - engine.timings.encoder - engine.timings.decoder,
            "from_cache": summary.from_cache}


def repeated(coco: dict, n: int) -> dict:
    """``n`` images: those of ``coco`` repeated under new image and annotation ids."""
    by_img: dict = {}
    for a in coco["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    base = [im for im in coco["images"] if by_img.get(im["id"])]
    images, anns = [], []
    for k in range(n):
        im = base[k % len(base)]
        images.append({**im, "id": k + 1})
        anns += [{**a, "id": len(anns) + j + 1, "image_id": k + 1} for j, a in enumerate(by_img[im["id"]])]
    return {**coco, "images": images, "annotations": anns}


def rss_child(data: Path, n: int) -> None:
    """Refine ``n`` images in this process and print its peak RSS in MiB (a JSON line)."""
    import resource

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "gt.json").write_text(json.dumps(first_images(load_coco_json(data / "annotations.json"), 5)))
        corrupt_coco(tmp / "gt.json", tmp / "coarse.json", CorruptConfig(seed=0))
        sub = repeated(load_coco_json(tmp / "coarse.json"), n)
        (tmp / "sub.json").write_text(json.dumps(sub))
        cfg = RefineConfig(engine="sam_tiny", checkpoint="none", precision="fp32", iters=2)
        t0 = time.perf_counter()
        summary = run_refine(tmp / "sub.json", data / "images", tmp / "out.json", cfg, resume=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"images": n, "masks": summary.refined, "peak_rss_mib": round(peak, 1),
                          "s": round(time.perf_counter() - t0, 1)}))


def rss_curve(data: Path, counts: list[int]) -> list[dict]:
    """:func:`rss_child` in a fresh process per count."""
    import subprocess
    import sys

    out = []
    for n in counts:
        res = subprocess.run([sys.executable, __file__, "--data", str(data), "--rss-child", str(n)],
                             capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=next(p for p in (REPO.parent / "shared" / "data" / "coco_train2017_100", REPO / "tests" / "data" / "coco_cc_by") if p.is_dir()))
    ap.add_argument("--images", type=int, default=3, help="images for the speed part (5: ~11 min on a busy 2-core CPU)")
    ap.add_argument("--engine", "--model", dest="model", default="sam_vit_b", help="an engine name (sap env)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--rss-counts", default="5,20,80", help="image counts of the memory part ('' = skip)")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        torch.set_num_threads(1)
        rss_child(args.data, args.rss_child)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    images_dir = args.data / "images"
    report: dict = {"model": args.model, "iters": args.iters, "torch_threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # -- 2. coarse masks and point sampling (all images) -------------------------------------
        t0 = time.perf_counter()
        corrupt_coco(args.data / "annotations.json", tmp / "coarse.json", CorruptConfig(seed=0))
        gt = load_coco_json(args.data / "annotations.json")
        coarse = load_coco_json(tmp / "coarse.json")
        quality = evaluate_pseudo(gt, coarse)["overall"]
        report["coarse_vs_gt"] = {"mask_miou": quality["mask_miou"], "boundary_miou": quality["boundary_miou"],
                                  "count": quality["count"]}
        report["points_inside_true_mask"] = point_shares(gt, coarse)
        report["points_s"] = time.perf_counter() - t0

        # -- 1. speed ----------------------------------------------------------------------------
        sub = first_images(coarse, args.images)
        (tmp / "sub.json").write_text(json.dumps(sub))
        pts = copy.deepcopy(sub)
        for a in pts["annotations"]:
            im = next(i for i in sub["images"] if i["id"] == a["image_id"])
            m = decode_rle(segmentation_to_rle(a["segmentation"], im["height"], im["width"]))
            x, y = point_of(m)
            a["point"] = [x + 0.5, y + 0.5]
        (tmp / "points.json").write_text(json.dumps(pts))
        ckpt = save_random_checkpoint(args.model, tmp / f"sam_{args.model}_random.pth")
        t0 = time.perf_counter()
        engine = create_engine(args.model, str(ckpt), "cpu", "fp32")
        report["model_load_s"] = time.perf_counter() - t0
        from pseudolabel.proposals.run import ProposalConfig, run_proposals

        t0 = time.perf_counter()
        run_proposals(tmp / "points.json", images_dir, tmp / "cache",
                      ProposalConfig(engine=args.model, checkpoint=str(ckpt), precision="fp32",
                                     save_embeddings=True), engine=engine)
        report["proposals_with_embeddings_s"] = time.perf_counter() - t0
        cfg = RefineConfig(engine=args.model, checkpoint=str(ckpt), precision="fp32", iters=args.iters)
        report["re_encoded"] = timed_refine(tmp / "sub.json", images_dir, tmp / "a.json", cfg, engine)
        cached = dataclasses.replace(cfg, embeddings=str(tmp / "cache"))
        report["cached"] = timed_refine(tmp / "sub.json", images_dir, tmp / "b.json", cached, engine)
        naive = dataclasses.replace(cached, chunk=1)
        report["cached_one_mask_per_call"] = timed_refine(tmp / "sub.json", images_dir, tmp / "c.json", naive, engine)
    report["speedup_cached_vs_re_encoded"] = report["re_encoded"]["s_per_image"] / report["cached"]["s_per_image"]
    counts = [int(c) for c in args.rss_counts.split(",") if c.strip()]
    report["peak_rss"] = rss_curve(args.data, counts) if counts else []

    print(f"{args.model} (random weights, loaded from a checkpoint file), {args.iters} iterations, "
          f"CPU, {report['torch_threads']} torch threads")
    print(f"{'mode':<34}{'s/image':>9}{'masks/s':>9}{'encoder s':>11}{'decoder s':>11}{'other s':>9}")
    for key, name in (("re_encoded", "re-encoded"), ("cached", "cached embedding"),
                      ("cached_one_mask_per_call", "cached, 1 mask per decoder call")):
        r = report[key]
        print(f"{name:<34}{r['s_per_image']:>9.2f}{r['masks_per_s']:>9.2f}{r['encoder_s']:>11.1f}"
              f"{r['decoder_s']:>11.1f}{r['other_s']:>9.1f}")
    print(f"({report['re_encoded']['masks']} masks on {report['re_encoded']['images']} images; cached embeddings "
          f"{report['speedup_cached_vs_re_encoded']:.1f}x faster than re-encoding, goal >= 5x)")
    for r in report["peak_rss"]:
        print(f"peak RSS, tiny SAM, {r['images']:>4} images ({r['masks']} masks): {r['peak_rss_mib']:.0f} MiB")
    q = report["coarse_vs_gt"]
    print(f"\ncorrupted GT (sap corrupt seed 0) vs GT: mask mIoU {q['mask_miou']:.3f}, "
          f"boundary mIoU {q['boundary_miou']:.3f} over {q['count']} masks")
    p = report["points_inside_true_mask"]
    print(f"points inside the true mask ({p['masks']} masks): distance-guided {p['distance-guided']:.3f} "
          f"(euclidean {p['distance-guided, euclidean']:.3f}), box centre {p['box centre']:.3f}, "
          f"random mask pixel {p['random mask pixel']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
