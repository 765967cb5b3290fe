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
from functools import partial
from pathlib import Path
from typing import Any, Callable

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
    target = _Target.open(into)
    got = _read(source, path, target.images, target.by_name)
    summary = ImportSummary(source, str(into), written_to=str(target.out))
    lock = partial(lock_annotation, source=source, file=str(path),
                   imported=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    locked = _lock_reviewed(got["objects"], target, lock, summary)
    locked += _lock_deleted(got.get("deleted", []), target, lock, summary)
    locked += _add_new(got.get("new", []), target, lock, summary, keep_new)
    result = target.merged(locked, in_place=target.out == into)
    summary.locked_total = sum(1 for a in result["annotations"] if is_locked(a))
    write_json_atomic(target.out, result)
    return summary


@dataclass
class _Target:
    """The COCO labels the corrections go into, indexed for matching, and where they are written.

    ``earlier``: the corrections a run folder already holds (empty for a COCO file).
    """

    coco: dict
    out: Path
    earlier: list

    def __post_init__(self) -> None:
        self.images = {img["id"]: img for img in self.coco["images"]}
        self.by_name = {img["file_name"]: img for img in self.coco["images"]}
        self.anns = {a["id"]: a for a in self.coco["annotations"]}
        self.cat_by_name = {str(c.get("name", c["id"])): c["id"] for c in self.coco["categories"]}
        self.cats = {c["id"] for c in self.coco["categories"]}

    @classmethod
    def open(cls, into: Path) -> "_Target":
        """A run folder (its labels; out: ``corrections.json``) or a COCO file (replaced in place)."""
        if is_run_folder(into):
            files = run_files(into)
            coco = load_coco_json(files.labels)
            check_segmentations(coco, str(files.labels), other_size_ok=True)
            out = files.corrections
            return cls(coco, out, load_coco_json(out)["annotations"] if out.is_file() else [])
        if into.is_file():
            coco = load_coco_json(into)
            check_segmentations(coco, str(into), other_size_ok=True)
            return cls(coco, into, [])
        raise InputError(f"--into {into} is neither a `sap pipeline` run folder nor a COCO JSON file")

    def category(self, label: Any) -> Any:
        """The category id of a reviewed label (an id or a name), None when unknown."""
        if label in self.cats:
            return label
        return self.cat_by_name.get(str(label)) if label is not None else None

    def next_id(self) -> int:
        """The first annotation id above every id of the target and of earlier corrections."""
        ids = [int(i) for i in self.anns if isinstance(i, int)] + [int(a["id"]) for a in self.earlier]
        return max(ids + [0]) + 1

    def merged(self, locked: list[dict], in_place: bool) -> dict:
        """The file to write: the target with ``locked`` laid over it (a COCO file), or the run's
        corrections, earlier ones merged by id (newer wins)."""
        if in_place:
            return with_locked(self.coco, locked)
        merged = {a["id"]: a for a in self.earlier}
        merged.update({a["id"]: a for a in locked})
        result = {k: v for k, v in self.coco.items() if k not in ("annotations", "info")}
        result["info"] = {"description": "corrections imported by `sap import`: locked annotations"}
        result["annotations"] = sorted(merged.values(), key=lambda a: a["id"])
        return result


def _with_mask(ann: dict, rle: dict, **fields: Any) -> dict:
    """``ann`` with ``rle`` as its segmentation and the box and area derived from it."""
    ann.update(segmentation=rle, bbox=rle_to_bbox_xywh(rle), area=float(rle_area(rle)), **fields)
    return ann


def _lock_reviewed(objects: list, target: _Target, lock: Callable[..., dict],
                   summary: ImportSummary) -> list[dict]:
    """Locked copies of the reviewed objects that match a target annotation (same id and image,
    a known label, a mask); the others are listed in ``summary``."""
    locked = []
    for ann_id, image_id, label, mask in objects:
        summary.reviewed += 1
        ann = target.anns.get(ann_id)
        if ann is None:
            summary.unknown_ids.append(ann_id)
            continue
        if ann["image_id"] != image_id:
            summary.wrong_image.append(ann_id)
            continue
        cat = target.category(label) if label is not None else ann.get("category_id")
        if cat is None:
            summary.unknown_labels.append(ann_id)
            continue
        img = target.images[image_id]
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
        locked.append(_with_mask(lock(ann, changed=not same), rle, category_id=cat))
        (summary.unchanged if same else summary.changed).append(ann_id)
    return locked


def _lock_deleted(deleted: list, target: _Target, lock: Callable[..., dict],
                  summary: ImportSummary) -> list[dict]:
    """Locked, maskless copies of the annotations the reviewer deleted."""
    locked = []
    for ann_id, image_id in deleted:
        ann = target.anns.get(ann_id)
        if ann is None or ann["image_id"] != image_id:
            summary.unknown_ids.append(ann_id)
            continue
        new = lock(ann, deleted=True)
        new.update(segmentation=[], bbox=[0.0, 0.0, 0.0, 0.0], area=0.0)
        locked.append(new)
        summary.deleted.append(ann_id)
    return locked


def _add_new(new_objects: list, target: _Target, lock: Callable[..., dict], summary: ImportSummary,
             keep_new: bool) -> list[dict]:
    """Objects the reviewer drew (no id of ours) as new locked annotations, only with ``keep_new``
    and a known label and image; numbered from :meth:`_Target.next_id`."""
    locked, next_id = [], target.next_id()
    for image_id, label, mask in new_objects:
        cat = target.category(label)
        if not keep_new or cat is None or image_id not in target.images:
            summary.new_skipped += 1
            continue
        rle = encode_mask(np.asarray(mask, dtype=np.uint8))
        ann = {"id": next_id, "image_id": image_id, "category_id": cat, "iscrowd": 0}
        locked.append(_with_mask(lock(ann, added=True), rle))
        summary.added.append(next_id)
        next_id += 1
    return locked
