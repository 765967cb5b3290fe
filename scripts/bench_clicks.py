"""Clicks per object: how SAM's masks change with 1, 2, 3, 5 positive clicks, with and without 2
negative clicks on the nearest neighbours, measured on the pocket SAM's held-out scenes.

    python scripts/bench_clicks.py [--scenes 20] [--seed 0] [--engine sam_pocket] [--threads 1]

Every object (at least 100 visible px) of every scene gets: its first positive click at the pixel
farthest from its outline (``sap points --mode center``), further positive clicks uniform over
its mask, and for "+2 neg" one click at the centre of each of its two nearest neighbours (by
distance between mask centres; objects with fewer than two neighbours are left out of every
row, so all rows score the same objects). Each configuration is one prompt per object through the
same path as ``sap proposals`` (``prompt_kinds.click_prompt`` → ``PromptEngine.decode``), all
objects of a scene in one decoder call. Printed per configuration:

* best-of-3 and top-1 mIoU of SAM's 3 multimask outputs (top-1: the highest predicted IoU);
* single: the mIoU of SAM's single-mask output (``multimask=False``), which SAM's own
  predictor recommends for several clicks (the proposals stage needs the 3 outputs);
* box top-1: the clicks plus the box of the top-1 mask (the ``point_box`` prompt kind);
* decoder ms per object, against the 1-click row (the reference: sap ≤ 0.2 used one click).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pseudolabel.core.engines.loading import create_engine  # noqa: E402
from pseudolabel.core.points import PointAnn, point_center, point_uniform  # noqa: E402
from pseudolabel.pocket.quality import held_out_scenes  # noqa: E402
from pseudolabel.proposals.prompt_kinds import click_prompt, mask_boxes_xyxy  # noqa: E402

POSITIVE = (1, 2, 3, 5)
MIN_AREA = 100


def object_clicks(masks: list[np.ndarray], seed: int) -> list[tuple[list, list]]:
    """Per object: (5 positive clicks, 2 negative clicks on its nearest neighbours) or None."""
    centres = [np.argwhere(m).mean(0)[::-1] for m in masks]
    out = []
    for i, m in enumerate(masks):
        rng = np.random.default_rng([seed, i])
        pos = [point_center(m, rng)] + [point_uniform(m, rng) for _ in range(max(POSITIVE) - 1)]
        others = sorted((np.hypot(*(centres[j] - centres[i])), j) for j in range(len(masks)) if j != i)
        neg = [point_center(masks[j], rng) for _, j in others[:2]]
        out.append((pos, neg) if len(neg) == 2 else None)
    return out


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``B×C×H×W`` bool vs ``B×1×H×W`` → ``B×C`` IoUs."""
    return (pred & gt).sum((2, 3)) / np.maximum((pred | gt).sum((2, 3)), 1)


def measure(engine, scenes, seed: int) -> dict:
    rows = {(k, neg): {"best3": [], "top1": [], "single": [], "box": [], "ms": 0.0}
            for k in POSITIVE for neg in (False, True)}
    n_objects = 0
    for s, scene in enumerate(scenes):
        masks = [m for m in scene.masks if m.sum() >= MIN_AREA]
        picked = [(m, c) for m, c in zip(masks, object_clicks(masks, seed + s)) if c is not None]
        if not picked:
            continue
        n_objects += len(picked)
        gt = np.stack([m for m, _ in picked])[:, None]
        emb = engine.encode(scene.image)
        if s == 0:  # warm the decoder up before timing it
            engine.decode(emb, point_coords=np.zeros((1, 1, 2)), point_labels=np.ones((1, 1)))
        for (k, neg), row in rows.items():
            points = [PointAnn(i, 0, 0, *pos[0], tuple((x, y, 1) for x, y in pos[:k])
                               + (tuple((x, y, 0) for x, y in nb) if neg else ()))
                      for i, (_, (pos, nb)) in enumerate(picked)]
            prompt = click_prompt(points, "all")  # every click the row names
            t0 = time.perf_counter()
            low, pred = engine.decode(emb, point_coords=prompt.coords, point_labels=prompt.labels, multimask=True)
            row["ms"] += (time.perf_counter() - t0) * 1000
            multi = engine.upscale(low, emb)
            ious = iou(multi.cpu().numpy(), gt)
            best = pred.argmax(1)
            row["best3"].extend(ious.max(1))
            row["top1"].extend(ious[np.arange(len(ious)), best.cpu().numpy()])
            low1, _ = engine.decode(emb, point_coords=prompt.coords, point_labels=prompt.labels, multimask=False)
            row["single"].extend(iou(engine.upscale(low1, emb).cpu().numpy(), gt)[:, 0])
            boxes = mask_boxes_xyxy(multi[torch.arange(len(best)), best]).cpu().numpy()
            lowb, predb = engine.decode(emb, point_coords=prompt.coords, point_labels=prompt.labels,
                                        boxes=boxes, multimask=True)
            ib = iou(engine.upscale(lowb, emb).cpu().numpy(), gt)
            row["box"].extend(ib[np.arange(len(ib)), predb.argmax(1).cpu().numpy()])
    return {"rows": rows, "objects": n_objects}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", default="sam_pocket")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = create_engine(args.engine, None, "cpu", "fp32")
    t0 = time.perf_counter()
    result = measure(engine, held_out_scenes(args.scenes, args.seed), args.seed)
    rows, n = result["rows"], result["objects"]
    ref_ms = rows[(1, False)]["ms"]
    print(f"{args.engine}, {args.scenes} held-out scenes (seed {args.seed}), {n} objects with 2+ neighbours, "
          f"{time.perf_counter() - t0:.0f} s")
    print("| clicks | best-of-3 mIoU | top-1 mIoU | single-mask mIoU | point+box top-1 mIoU | decoder vs 1 click |")
    print("|---|---|---|---|---|---|")
    for (k, neg), r in rows.items():
        name = f"{k} positive" + (" + 2 negative" if neg else "")
        print(f"| {name} | {np.mean(r['best3']):.3f} | {np.mean(r['top1']):.3f} | {np.mean(r['single']):.3f} | "
              f"{np.mean(r['box']):.3f} | {r['ms'] / max(ref_ms, 1e-9):.2f}× |")


if __name__ == "__main__":
    main()
