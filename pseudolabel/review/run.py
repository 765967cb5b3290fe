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
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudolabel.core.alternatives import referenced_sidecar
from pseudolabel.core.coco import check_segmentations, load_coco_json
from pseudolabel.core.coco_stream import AnnotationIndex, CocoStream, open_coco_stream
from pseudolabel.core.config import write_run_config
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import check_output_dir

from .runfiles import is_run_folder, run_files
from .signals import WEIGHTS, Context
from .streamed import SpilledQueue, fill_queue, write_queue


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


def _index(stack: ExitStack, path: Any) -> AnnotationIndex | None:
    """The annotations of ``path`` by id, on disk (None without a path)."""
    if not path:
        return None
    return stack.enter_context(AnnotationIndex(open_coco_stream(path, check_masks="other_size_ok")))


def _corrections(labels: CocoStream, path: Any) -> tuple[dict[Any, dict], dict[Any, list[dict]]]:
    """The corrections by annotation id, and those of new ids by image (appended to their image)."""
    if path is None:
        return {}, {}
    corrected = {a["id"]: a for a in _load(path)["annotations"]}
    known = {a["id"] for a in labels.annotations() if a["id"] in corrected}
    extra: dict[Any, list[dict]] = {}
    for i, a in corrected.items():
        if i not in known:
            extra.setdefault(a["image_id"], []).append(a)
    return corrected, extra


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
    check_output_dir(out, "--out", inputs=(ann, images, sam_top1, proposals, predictions, corrections))
    labels = open_coco_stream(ann, check_masks="other_size_ok")
    side = referenced_sidecar(labels, ann)
    side = side if side is not None and side.is_file() else None  # without it, the runner-up comes from the cache
    corrected, extra = _corrections(labels, corrections)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preds: dict[Any, list] | None = None
    if predictions is not None:
        from pseudolabel.evaluate import load_results_file

        preds = {}
        for p in load_results_file(predictions):
            preds.setdefault(p["image_id"], []).append(p)
    with ExitStack() as stack:
        selected_ix, top1_ix, truth = (_index(stack, p) for p in (selected, sam_top1, gt))
        store = None
        if proposals is not None:
            from pseudolabel.core.bag_sources import open_bag_store

            store = open_bag_store(proposals)
            stack.callback(store.close)

        def context(image_id: Any) -> Context:
            bags = {b.ann_id: b for b in store.bags(image_id)} if store is not None else None
            return Context(selected=selected_ix, sam_top1=top1_ix, bags=bags, predictions=preds)

        queue = stack.enter_context(closing(SpilledQueue()))
        failed = fill_queue(queue, labels, context, truth, images, out, thumbnails, side,
                            (lambda a: corrected.get(a["id"], a)) if corrected else None, extra)
        wrote = write_queue(queue, labels, out, f"sap review: {Path(ann).name}", page_size, n_worst, side, corrected)
    summary = ReviewSummary(str(out), annotations=len(queue), done=wrote["done"], worst=wrote["worst"],
                            signals=dict(queue.signals), failed_images=failed,
                            measure=wrote["measure"] if gt else None)
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
