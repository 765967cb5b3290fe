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
    """Rank every annotation of ``labels`` (in memory; `sap review` streams: :mod:`.streamed`).

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
        item, ru = make_item(ann, img, names, ctx, truth.get(ann["id"]), weights)
        if ru is not None:
            runner[ann["id"]] = ru
        items.append(item)
    items.sort(key=queue_key)
    for rank, it in enumerate(items, 1):
        it["rank"] = rank
    return items, runner


def queue_key(it: dict) -> tuple:
    """Items to do first, by falling evidence (ties by id); done items after, by id."""
    return (it["done"], -it["evidence"] if not it["done"] else 0.0, _id_key(it["id"]))


def make_item(ann: dict, img: dict, names: dict[Any, str], ctx: Context, truth: dict | None,
              weights: dict[str, float]) -> tuple[dict, dict | None]:
    """One annotation's queue item (no rank yet) and its runner-up RLE (None when unknown).

    Args:
        img: its image record; ``truth``: the true annotation of the same id, or None.
    """
    h, w = int(img["height"]), int(img["width"])
    signals, ru = annotation_signals(ann, h, w, ctx)
    item = {"id": ann["id"], "image_id": ann["image_id"], "file_name": img["file_name"],
            "category_id": ann.get("category_id"), "category": names.get(ann.get("category_id"), str(ann.get("category_id"))),
            "risk": round(combine(signals, weights), 5), "evidence": round(evidence(signals, weights), 6),
            "signals": signals, "top": _top(signals, weights),
            "done": is_locked(ann)}
    if truth is not None and ann.get("segmentation"):
        try:
            a = segmentation_to_rle(ann["segmentation"], h, w)
            b = segmentation_to_rle(truth["segmentation"], h, w)
            item["gt_iou"] = round(float(rle_iou([a], [b])[0, 0]), 5)
        except Exception:  # an unreadable mask scores 0 against the truth
            item["gt_iou"] = 0.0
    return item, ru


def share_of_bad_in_top(items: list[dict], top: float = 0.2, bad_below: float = 0.5,
                        seed: int = 0, draws: int = 1000) -> dict[str, float] | None:
    """How many of the annotations with ``gt_iou < bad_below`` the first ``top`` of the queue holds,
    against random orders (mean over ``draws`` shuffles). None without ground truth."""
    ious = [it["gt_iou"] for it in items if "gt_iou" in it and not it["done"]]
    return share_of_bad(np.asarray(ious, dtype=np.float64), top, bad_below, seed, draws)


def share_of_bad(gt_ious: np.ndarray, top: float = 0.2, bad_below: float = 0.5, seed: int = 0,
                 draws: int = 1000) -> dict[str, float] | None:
    """:func:`share_of_bad_in_top` of the items to do that have a ``gt_iou``, given as their
    IoUs in queue order (``(n,)`` float)."""
    bad = gt_ious < bad_below
    if not len(gt_ious) or not bad.any():
        return None
    k = max(1, int(round(top * len(gt_ious))))
    rng = np.random.default_rng(seed)
    random = float(np.mean([bad[rng.permutation(len(bad))[:k]].sum() / bad.sum() for _ in range(draws)]))
    oracle = min(k, int(bad.sum())) / bad.sum()
    return {"annotations": len(gt_ious), "bad": int(bad.sum()), "top_k": k,
            "queue": float(bad[:k].sum() / bad.sum()), "random": random, "oracle": float(oracle)}


def write_worst(labels: dict[str, Any], items: list[dict], path: str | os.PathLike, n: int) -> Path:
    """The first ``n`` items still to do, as a COCO file of ``labels``'s annotations with their
    review (``sap.review``: risk, rank, signals) — the input of `sap export`."""
    chosen = [it for it in items if not it["done"]][:n]
    by_id = {a["id"]: a for a in labels["annotations"]}
    return write_chosen(labels, chosen, by_id, path)


def write_chosen(header: dict[str, Any], chosen: list[dict], by_id: dict[Any, dict], path: str | os.PathLike) -> Path:
    """:func:`write_worst` of the items ``chosen`` (in queue order), their annotations by id in
    ``by_id`` and the rest of the file (images, categories, info) in ``header``."""
    anns = []
    for it in chosen:
        a = dict(by_id[it["id"]])
        a["sap"] = {**(a.get("sap") or {}), "review": {"risk": it["risk"], "rank": it["rank"], "signals": it["signals"]}}
        anns.append(a)
    keep = {a["image_id"] for a in anns}
    out = {k: v for k, v in header.items() if k not in ("images", "annotations")}
    out["images"] = [img for img in header["images"] if img["id"] in keep]
    out["annotations"] = anns
    return write_json_atomic(path, out)
