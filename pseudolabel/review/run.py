"""``sap review``: rank a result's annotations by how likely they are wrong and write the queue.

Inputs: a COCO result (``ann``) with optional companions (the selection before refine, SAM's
top-1, the proposal cache, the model's predictions, the ground truth), or a `sap pipeline` run
folder, which names them all (:mod:`.runfiles`); corrections imported into the run are shown as
done. Outputs in ``out``: ``index.html`` + ``items.js`` + ``thumbs/`` (the page), ``queue.json``
(every item, in order), ``worst.json`` (the first ``n_worst`` items still to do, for
`sap export`), ``review.config.yaml``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudolabel.core.alternatives import attach_alternatives, referenced_sidecar
from pseudolabel.core.coco import check_segmentations, load_coco_json, with_locked
from pseudolabel.core.config import write_run_config
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import check_output_dir, write_json_atomic

from .page import image_href, write_page, write_thumbnails
from .queue import build_queue, share_of_bad_in_top, write_worst
from .runfiles import is_run_folder, run_files
from .signals import WEIGHTS, Context


@dataclass
class ReviewSummary:
    """What `sap review` wrote and found."""

    out: str
    annotations: int = 0
    done: int = 0
    worst: int = 0
    signals: dict[str, int] = field(default_factory=dict)
    failed_images: dict[Any, str] = field(default_factory=dict)
    measure: dict[str, float] | None = None
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        out = [f"review queue of {self.annotations} annotations ({self.done} done) in {self.wall_s:.1f} s "
               f"-> {self.out}/index.html",
               "  signals present: " + (", ".join(f"{k} {v}" for k, v in self.signals.items()) or "none"),
               f"  worst {self.worst} to do -> {self.out}/worst.json (for sap export)"]
        if self.measure:
            m = self.measure
            out.append(f"  against the truth: {m['bad']} of {m['annotations']} have IoU < 0.5; the first 20 % of the "
                       f"queue holds {100 * m['queue']:.1f} % of them (random order {100 * m['random']:.1f} %)")
        out += [f"  failed image {i}: {r}" for i, r in self.failed_images.items()]
        return out


def _load(path: Any) -> dict:
    """A COCO file whose masks are well formed (a mask made for another size is a signal, not an error)."""
    coco = load_coco_json(path)
    check_segmentations(coco, str(path), other_size_ok=True)
    return coco


def _by_id(path: Any) -> dict[Any, dict] | None:
    return {a["id"]: a for a in _load(path)["annotations"]} if path else None


def run_review(out: str | os.PathLike, ann: str | os.PathLike | None = None, run: str | os.PathLike | None = None,
               images: str | os.PathLike | None = None, gt: str | os.PathLike | None = None,
               selected: str | os.PathLike | None = None, sam_top1: str | os.PathLike | None = None,
               proposals: str | os.PathLike | None = None, predictions: str | os.PathLike | None = None,
               n_worst: int = 200, thumbnails: bool = True, page_size: int = 120) -> ReviewSummary:
    """Build the review queue and its page (see the module docstring)."""
    t0 = time.perf_counter()
    if (ann is None) == (run is None):
        raise InputError("sap review needs either --ann RESULT.json or --run RUN_FOLDER")
    corrections = None
    if run is not None:
        if not is_run_folder(run):
            raise InputError(f"{run} is not a `sap pipeline` run folder (it has no pipeline.yaml)")
        files = run_files(run)
        ann = files.labels
        images = images or files.images
        gt = gt or files.gt
        selected = selected or (files.selected if files.selected != files.labels else None)
        sam_top1, proposals = sam_top1 or files.sam_top1, proposals or files.cache
        predictions = predictions or files.predictions
        corrections = files.corrections if files.corrections and files.corrections.is_file() else None
    if images is None or not Path(images).is_dir():
        raise InputError(f"the image folder {images} does not exist: pass --images DIR")
    if n_worst < 1 or page_size < 1:
        raise InputError("--n and --page-size must be at least 1")
    check_output_dir(out, "--out")
    labels = _load(ann)
    if (side := referenced_sidecar(labels, ann)) is not None and side.is_file():
        attach_alternatives(labels, ann)  # the runner-up's mask (signals, thumbnails); without it, the cache's
    if corrections is not None:
        labels = with_locked(labels, _load(corrections)["annotations"])
    bags = None
    if proposals is not None:
        from pseudolabel.core.bag_sources import load_bags

        bags = {b.ann_id: b for bs in load_bags(proposals).values() for b in bs}
    preds = None
    if predictions is not None:
        from pseudolabel.evaluate import load_results_file

        preds = {}
        for p in load_results_file(predictions):
            preds.setdefault(p["image_id"], []).append(p)
    ctx = Context(selected=_by_id(selected), sam_top1=_by_id(sam_top1), bags=bags, predictions=preds)
    truth = _load(gt) if gt else None
    items, runner = build_queue(labels, ctx, truth)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for it in items:
        it["image_href"] = image_href(it["file_name"], images, out)
    summary = ReviewSummary(str(out), annotations=len(items), done=sum(it["done"] for it in items))
    if thumbnails:
        summary.failed_images = write_thumbnails(labels, items, runner, images, out)
    for it in items:
        for k in it["signals"]:
            summary.signals[k] = summary.signals.get(k, 0) + 1
    write_page(out, items, f"sap review: {Path(ann).name}", page_size)
    write_json_atomic(out / "queue.json", {"weights": WEIGHTS, "items": items})
    write_worst(labels, items, out / "worst.json", n_worst)
    summary.worst = min(n_worst, len(items) - summary.done)
    summary.measure = share_of_bad_in_top(items) if truth else None
    summary.wall_s = time.perf_counter() - t0
    write_run_config(out / "review.config.yaml", "review", {"n_worst": n_worst, "page_size": page_size,
                     "thumbnails": thumbnails, "weights": WEIGHTS},
                     inputs={"ann": str(ann), "run": str(run) if run else None, "images": str(images),
                             "gt": str(gt) if gt else None, "selected": str(selected) if selected else None,
                             "sam_top1": str(sam_top1) if sam_top1 else None,
                             "proposals": str(proposals) if proposals else None,
                             "predictions": str(predictions) if predictions else None},
                     summary={"annotations": summary.annotations, "done": summary.done, "measure": summary.measure})
    return summary
