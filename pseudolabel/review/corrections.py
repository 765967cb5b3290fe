"""``sap import``: a labelling tool's reviewed masks back into a run, as locked annotations.

The reviewed file (Label Studio JSON export, CVAT for images 1.1 XML, or any COCO JSON) is
read, its objects matched to the target's annotations by id (and checked to belong to the same
image), and each becomes a locked copy of the target annotation (:func:`lock_annotation`) with
the reviewed mask as compressed RLE, its box and area, and the reviewed category. An object the
reviewer deleted (Label Studio: absent from a submitted annotation of its image) becomes a
locked annotation without a mask: training skips it, every stage keeps it deleted.

Target (``--into``):

* a run folder: the corrections go to ``RUN/corrections.json`` (merged with earlier ones, newer
  wins by id); the pipeline lays them over the selection before refining, so `sap refine` passes
  them through untouched, `sap train` trains on them, and a rerun keeps them;
* a COCO file (e.g. ``refined.json``): its annotations are replaced in place, atomically.

New objects (no id of ours) are reported and left out unless ``keep_new``; unknown ids and
unknown label names are reported, never guessed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.core.coco import check_segmentations, is_locked, load_coco_json, lock_annotation, with_locked
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.rle import decode_rle, encode_mask, rle_area, rle_to_bbox_xywh, segmentation_to_rle

from .runfiles import is_run_folder, run_files

SOURCES = ("labelstudio", "cvat", "coco")


@dataclass
class ImportSummary:
    """What one `sap import` did (ids listed for everything not imported)."""

    source: str
    target: str
    written_to: str = ""
    reviewed: int = 0
    changed: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    deleted: list = field(default_factory=list)
    added: list = field(default_factory=list)
    new_skipped: int = 0
    unknown_ids: list = field(default_factory=list)
    wrong_image: list = field(default_factory=list)
    unknown_labels: list = field(default_factory=list)
    no_mask: list = field(default_factory=list)
    locked_total: int = 0

    def lines(self) -> list[str]:
        out = [f"import from {self.source}: {self.reviewed} objects reviewed -> {self.written_to}",
               f"  locked: {len(self.changed)} changed, {len(self.unchanged)} accepted as they were, "
               f"{len(self.deleted)} deleted, {len(self.added)} new; {self.locked_total} locked in all"]
        for what, ids in (("ids unknown to the target", self.unknown_ids),
                          ("objects on another image than the target's", self.wrong_image),
                          ("objects with a label the target does not know", self.unknown_labels),
                          ("objects without a mask", self.no_mask)):
            if ids:
                out.append(f"  not imported: {len(ids)} {what} (first: {ids[:10]})")
        if self.new_skipped:
            out.append(f"  not imported: {self.new_skipped} new objects without an id of ours (--keep-new adds them)")
        return out


def _read(source: str, path: Path, images: dict[Any, dict], by_name: dict[str, dict]) -> dict[str, list]:
    """Reviewed objects as ``{"objects": [(ann_id, image_id, label|cat_id, mask|rle)], ...}``."""
    if source == "labelstudio":
        from pseudolabel.export.labelstudio import read_labelstudio

        return read_labelstudio(path)
    if source == "cvat":
        from pseudolabel.export.cvat import read_cvat

        got = read_cvat(path)

        def image_id(name: str) -> Any:
            if name not in by_name:
                raise InputError(f"{path} names image {name!r}, which the target does not have")
            return by_name[name]["id"]

        return {"objects": [(i, image_id(n), lab, m) for i, n, lab, m in got["objects"]], "deleted": [],
                "new": [(image_id(n), lab, m) for n, lab, m in got["new"]]}
    coco = load_coco_json(path)
    check_segmentations(coco, str(path), other_size_ok=True)  # garbage is one sentence, not "no mask"
    objs = []
    for a in coco["annotations"]:
        img = images.get(a["image_id"])
        if img is None or not a.get("segmentation"):
            objs.append((a["id"], a["image_id"], a.get("category_id"), None))
            continue
        try:
            rle = segmentation_to_rle(a["segmentation"], int(img["height"]), int(img["width"]))
        except InputError:  # a mask that does not fit its image: reported as without a usable mask
            rle = None
        objs.append((a["id"], a["image_id"], a.get("category_id"), rle))
    return {"objects": objs, "deleted": [], "new": []}


def import_corrections(source: str, path: str | os.PathLike, into: str | os.PathLike,
                       keep_new: bool = False) -> ImportSummary:
    """Read reviewed masks from ``path`` and lock them into ``into`` (see the module docstring)."""
    if source not in SOURCES:
        raise InputError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    path, into = Path(path), Path(into)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    if is_run_folder(into):
        files = run_files(into)
        target = load_coco_json(files.labels)
        check_segmentations(target, str(files.labels), other_size_ok=True)
        out = files.corrections
        earlier = load_coco_json(out)["annotations"] if out.is_file() else []
    elif into.is_file():
        target, out, earlier = load_coco_json(into), into, []
        check_segmentations(target, str(into), other_size_ok=True)
    else:
        raise InputError(f"--into {into} is neither a `sap pipeline` run folder nor a COCO JSON file")
    images = {img["id"]: img for img in target["images"]}
    by_name = {img["file_name"]: img for img in target["images"]}
    anns = {a["id"]: a for a in target["annotations"]}
    cat_by_name = {str(c.get("name", c["id"])): c["id"] for c in target["categories"]}
    cats = {c["id"] for c in target["categories"]}
    got = _read(source, path, images, by_name)
    summary = ImportSummary(source, str(into), written_to=str(out))
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    locked: list[dict] = []

    def category(label: Any) -> Any:
        if label in cats:
            return label
        return cat_by_name.get(str(label)) if label is not None else None

    for ann_id, image_id, label, mask in got["objects"]:
        summary.reviewed += 1
        ann = anns.get(ann_id)
        if ann is None:
            summary.unknown_ids.append(ann_id)
            continue
        if ann["image_id"] != image_id:
            summary.wrong_image.append(ann_id)
            continue
        cat = category(label) if label is not None else ann.get("category_id")
        if cat is None:
            summary.unknown_labels.append(ann_id)
            continue
        img = images[image_id]
        if mask is None:
            summary.no_mask.append(ann_id)
            continue
        rle = mask if isinstance(mask, dict) else encode_mask(np.asarray(mask, dtype=np.uint8))
        try:  # the target's own mask may be made for another size: then it changed
            before = segmentation_to_rle(ann["segmentation"], img["height"], img["width"]) \
                if ann.get("segmentation") else None
        except InputError:
            before = None
        same = before is not None and np.array_equal(decode_rle(before), decode_rle(rle)) \
            and cat == ann.get("category_id")
        new = lock_annotation(ann, source, file=str(path), imported=when, changed=not same)
        new.update(segmentation=rle, bbox=rle_to_bbox_xywh(rle), area=float(rle_area(rle)), category_id=cat)
        locked.append(new)
        (summary.unchanged if same else summary.changed).append(ann_id)
    for ann_id, image_id in got.get("deleted", []):
        ann = anns.get(ann_id)
        if ann is None or ann["image_id"] != image_id:
            summary.unknown_ids.append(ann_id)
            continue
        new = lock_annotation(ann, source, file=str(path), imported=when, deleted=True)
        new.update(segmentation=[], bbox=[0.0, 0.0, 0.0, 0.0], area=0.0)
        locked.append(new)
        summary.deleted.append(ann_id)
    next_id = max([int(i) for i in anns if isinstance(i, int)] + [int(a["id"]) for a in earlier] + [0]) + 1
    for image_id, label, mask in got.get("new", []):
        cat = category(label)
        if not keep_new or cat is None or image_id not in images:
            summary.new_skipped += 1
            continue
        rle = encode_mask(np.asarray(mask, dtype=np.uint8))
        new = lock_annotation({"id": next_id, "image_id": image_id, "category_id": cat, "iscrowd": 0}, source,
                              file=str(path), imported=when, added=True)
        new.update(segmentation=rle, bbox=rle_to_bbox_xywh(rle), area=float(rle_area(rle)))
        locked.append(new)
        summary.added.append(next_id)
        next_id += 1
    if out == into:  # a COCO file: replace its annotations in place
        result = with_locked(target, locked)
    else:
        merged = {a["id"]: a for a in earlier}
        merged.update({a["id"]: a for a in locked})
        result = {k: v for k, v in target.items() if k not in ("annotations", "info")}
        result["info"] = {"description": "corrections imported by `sap import`: locked annotations"}
        result["annotations"] = sorted(merged.values(), key=lambda a: a["id"])
    summary.locked_total = sum(1 for a in result["annotations"] if is_locked(a))
    write_json_atomic(out, result)
    return summary
