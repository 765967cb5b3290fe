"""The review queue: every annotation with its signals and risk, worst first; ``worst.json``.

An item is a plain dict (it goes into the page as JSON):
``{"id", "image_id", "file_name", "category", "category_id", "risk", "evidence", "rank", "signals",
"top", "done", "gt_iou"?}``, where ``top`` is the signal contributing most to the risk and ``done``
says a person has checked it (a locked annotation). Items to do come first, by falling evidence
(the risk before it saturates at 1; ties by id); done items follow, by id.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.core.coco import category_names, is_locked
from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.progress import progress
from pseudolabel.core.rle import rle_iou, segmentation_to_rle

from .signals import WEIGHTS, Context, annotation_signals, combine, evidence


def _top(signals: dict[str, float], weights: dict[str, float]) -> str | None:
    if not signals:
        return None
    key = max(signals, key=lambda k: (weights.get(k, 0.0) * -math.log1p(-min(signals[k], 0.999)), k))
    return key if signals[key] > 0 else None


def _id_key(ann_id: Any) -> tuple:
    return (0, ann_id, "") if isinstance(ann_id, (int, float)) else (1, 0, str(ann_id))


def build_queue(labels: dict[str, Any], ctx: Context, gt: dict[str, Any] | None = None,
                weights: dict[str, float] | None = None) -> tuple[list[dict], dict[Any, dict]]:
    """Rank every annotation of ``labels``.

    Returns:
        ``(items, runner_up)``: the ordered items and, by annotation id, the runner-up RLE (for
        the thumbnails; only where known).
    """
    weights = weights or WEIGHTS
    images = {img["id"]: img for img in labels["images"]}
    names = category_names(labels)
    truth = {a["id"]: a for a in (gt or {}).get("annotations", [])}
    items, runner = [], {}
    for ann in progress(labels["annotations"], desc="review signals", unit="ann"):
        img = images.get(ann["image_id"])
        if img is None:
            continue
        h, w = int(img["height"]), int(img["width"])
        signals, ru = annotation_signals(ann, h, w, ctx)
        if ru is not None:
            runner[ann["id"]] = ru
        item = {"id": ann["id"], "image_id": ann["image_id"], "file_name": img["file_name"],
                "category_id": ann.get("category_id"), "category": names.get(ann.get("category_id"), str(ann.get("category_id"))),
                "risk": round(combine(signals, weights), 5), "evidence": round(evidence(signals, weights), 6),
                "signals": signals, "top": _top(signals, weights),
                "done": is_locked(ann)}
        if ann["id"] in truth and ann.get("segmentation"):
            try:
                a = segmentation_to_rle(ann["segmentation"], h, w)
                b = segmentation_to_rle(truth[ann["id"]]["segmentation"], h, w)
                item["gt_iou"] = round(float(rle_iou([a], [b])[0, 0]), 5)
            except Exception:  # an unreadable mask scores 0 against the truth
                item["gt_iou"] = 0.0
        items.append(item)
    items.sort(key=lambda it: (it["done"], -it["evidence"] if not it["done"] else 0.0, _id_key(it["id"])))
    for rank, it in enumerate(items, 1):
        it["rank"] = rank
    return items, runner


def share_of_bad_in_top(items: list[dict], top: float = 0.2, bad_below: float = 0.5,
                        seed: int = 0, draws: int = 1000) -> dict[str, float] | None:
    """How many of the annotations with ``gt_iou < bad_below`` the first ``top`` of the queue holds,
    against random orders (mean over ``draws`` shuffles). None without ground truth."""
    scored = [it for it in items if "gt_iou" in it and not it["done"]]
    bad = np.array([it["gt_iou"] < bad_below for it in scored])
    if not len(scored) or not bad.any():
        return None
    k = max(1, int(round(top * len(scored))))
    rng = np.random.default_rng(seed)
    random = float(np.mean([bad[rng.permutation(len(bad))[:k]].sum() / bad.sum() for _ in range(draws)]))
    oracle = min(k, int(bad.sum())) / bad.sum()
    return {"annotations": len(scored), "bad": int(bad.sum()), "top_k": k,
            "queue": float(bad[:k].sum() / bad.sum()), "random": random, "oracle": float(oracle)}


def write_worst(labels: dict[str, Any], items: list[dict], path: str | os.PathLike, n: int) -> Path:
    """The first ``n`` items still to do, as a COCO file of ``labels``'s annotations with their
    review (``sap.review``: risk, rank, signals) — the input of `sap export`."""
    chosen = [it for it in items if not it["done"]][:n]
    by_id = {a["id"]: a for a in labels["annotations"]}
    anns = []
    for it in chosen:
        a = dict(by_id[it["id"]])
        a["sap"] = {**(a.get("sap") or {}), "review": {"risk": it["risk"], "rank": it["rank"], "signals": it["signals"]}}
        anns.append(a)
    keep = {a["image_id"] for a in anns}
    out = {k: v for k, v in labels.items() if k not in ("images", "annotations")}
    out["images"] = [img for img in labels["images"] if img["id"] in keep]
    out["annotations"] = anns
    return write_json_atomic(path, out)
