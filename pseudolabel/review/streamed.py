"""The review queue built image by image and ranked holding only its sort keys.

`sap review` walks the labels image by image (:meth:`~pseudolabel.core.coco_stream.CocoStream.by_image`):
each annotation gets its signals (its image's proposal bags read from the cache, the other
files' annotations looked up by id in on-disk indexes), its thumbnail (the image read once) and
its item (:func:`.queue.make_item`), which goes to a temporary file at once
(:class:`~pseudolabel.core.spill.DiskList`). In memory per item: done, evidence, id, its IoU
against the truth and its place in that file (six numbers in arrays, ~48 bytes). The page, ``queue.json`` and ``worst.json`` are then written in
queue order from the file, with the same bytes as the in-memory queue
(:func:`.queue.build_queue`) would give.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pseudolabel.core.alternatives import SidecarReader, iter_sidecar, lacks_alternatives
from pseudolabel.core.coco import category_names
from pseudolabel.core.coco_stream import CocoStream
from pseudolabel.core.io import write_json_stream
from pseudolabel.core.progress import progress
from pseudolabel.core.spill import DiskList

from .page import image_href, write_image_thumbnails, write_page_stream
from .queue import make_item, share_of_bad, write_chosen
from .signals import WEIGHTS, Context


class SpilledQueue:
    """Queue items on disk, their sort keys in memory (see the module docstring)."""

    def __init__(self) -> None:
        self._items = DiskList()
        self.done, self.evidence, self.gt_iou, self.ids = array("b"), array("d"), array("d"), array("q")
        self.signals: Counter = Counter()
        self.classes: set[str] = set()

    def add(self, item: dict[str, Any]) -> None:
        self._items.append(item)
        self.done.append(bool(item["done"]))
        self.evidence.append(float(item["evidence"]))
        self.gt_iou.append(float(item.get("gt_iou", np.nan)))
        self.ids.append(int(item["id"]))
        self.signals.update(item["signals"].keys())
        self.classes.add(item["category"])

    def __len__(self) -> int:
        return len(self.ids)

    def order(self) -> np.ndarray:
        """Item indices in queue order (:func:`.queue.queue_key`)."""
        done = np.frombuffer(self.done, dtype=np.int8).astype(bool)
        key = np.where(done, 0.0, -np.frombuffer(self.evidence, dtype=np.float64))
        return np.lexsort((np.frombuffer(self.ids, dtype=np.int64), key, done))

    def ordered(self, order: np.ndarray) -> Iterator[dict[str, Any]]:
        """The items in ``order``, each with its ``rank`` (keys in the in-memory queue's order)."""
        for rank, i in enumerate(order, 1):
            it = dict(self._items[i])
            href, thumb = it.pop("image_href"), it.pop("thumb", None)
            it["rank"] = rank
            it["image_href"] = href
            if thumb is not None:
                it["thumb"] = thumb
            yield it

    def close(self) -> None:
        del self._items  # its file goes with it


def fill_queue(queue: SpilledQueue, labels: CocoStream, context: Callable[[Any], Context],
               truth: Any, images: str | os.PathLike, out: Path, thumbnails: bool,
               sidecar: Path | None, change: Callable[[dict], dict] | None = None,
               extra: dict[Any, list[dict]] | None = None) -> dict[Any, str]:
    """Make every annotation's item, image by image, into ``queue``; write the thumbnails.

    Args:
        context: image id → the signals' :class:`~.signals.Context` for that image.
        truth: annotation id → the true annotation (``.get``), or None.
        sidecar: the labels' alternatives sidecar (the runner-up), or None.
        change, extra: corrections (see :meth:`~pseudolabel.core.coco_stream.CocoStream.by_image`).

    Returns:
        Failed images: image id → reason (their items have no thumbnail).
    """
    names = category_names(labels)
    alternatives = SidecarReader(sidecar) if sidecar is not None else None
    failed: dict[Any, str] = {}
    for img, anns in progress(labels.by_image(extra, change), desc="review", unit="img",
                              total=len(labels["images"])):
        ctx, objects = context(img["id"]), []
        href = image_href(img["file_name"], images, out) if anns else None
        for ann in anns:
            if alternatives is not None:
                ann = alternatives.attach(ann)
            item, runner = make_item(ann, img, names, ctx, truth.get(ann["id"]) if truth else None, WEIGHTS)
            item["image_href"] = href
            objects.append((item, ann, runner))
        if thumbnails and objects:
            reason = write_image_thumbnails(img, objects, images, out)
            if reason is not None:
                failed[img["id"]] = reason
        for item, _, _ in objects:
            queue.add(item)
    return failed


def write_queue(queue: SpilledQueue, labels: CocoStream, out: Path, title: str, page_size: int, n_worst: int,
                sidecar: Path | None, corrected: dict[Any, dict]) -> dict[str, Any]:
    """Write ``items.js``/``index.html``, ``queue.json`` and ``worst.json`` in queue order.

    Returns:
        ``{"done": n, "worst": n written to worst.json, "measure": share of bad in the top or None}``.
    """
    order = queue.order()
    write_page_stream(out, queue.ordered(order), title, page_size, sorted(queue.signals), sorted(queue.classes))
    write_json_stream(out / "queue.json", queue.ordered(order), {"weights": WEIGHTS}, "items")
    done = np.frombuffer(queue.done, dtype=np.int8).astype(bool)[order]
    todo = order[~done]
    chosen = list(islice((it for it in queue.ordered(order) if not it["done"]), n_worst))
    ids = {it["id"] for it in chosen}
    by_id = {a["id"]: a for a in labels.annotations() if a["id"] in ids and a["id"] not in corrected}
    by_id.update({i: a for i, a in corrected.items() if i in ids})
    for i, alts in iter_sidecar(sidecar) if sidecar is not None else ():
        a = by_id.get(i)
        if a is not None and lacks_alternatives(a):
            a["alternatives"] = alts
    write_chosen(labels.header, chosen, by_id, out / "worst.json")
    gt = np.frombuffer(queue.gt_iou, dtype=np.float64)[todo]
    return {"done": int(done.sum()), "worst": len(chosen), "measure": share_of_bad(gt[~np.isnan(gt)])}
