"""YOLO segmentation labels (Ultralytics' format): one text file per image, ``data.yaml``.

Each line is ``class x1 y1 x2 y2 ...``: the class index (0-based, in the order of the COCO
categories sorted by id) and one polygon normalised by the image width and height. YOLO-seg has
one polygon per object and no holes, so holes are bridged into their outline and the parts of a
multi-part object are joined to the largest by zero-width cuts
(:func:`pseudolabel.export.polygons.single_ring`). ``data.yaml`` holds the class map and the
image folder. The polygon IoU against the mask (pycocotools, on both) is measured and reported;
objects too small for a polygon are left out and reported.

Layout::

    OUT/data.yaml
    OUT/images -> the image folder        (a link: Ultralytics finds labels/ beside images/)
    OUT/labels/<image file stem>.txt      (an empty file for an image without objects)
    OUT/export_report.json
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pseudolabel.core.errors import InputError
from pseudolabel.core.io import path_inside, write_text_atomic
from pseudolabel.core.progress import progress

from .common import ExportReport, iter_objects, report_path, write_report
from .polygons import mask_rings, rings_iou, single_ring


def class_map(coco: dict[str, Any]) -> dict[int, int]:
    """COCO category id → YOLO class index (categories sorted by id)."""
    return {int(c["id"]): i for i, c in enumerate(sorted(coco["categories"], key=lambda c: int(c["id"])))}


def export_yolo(coco: dict[str, Any], out: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                tolerance: float = 1.0, min_iou: float = 0.9) -> ExportReport:
    """Write YOLO-seg labels of ``coco`` into the folder ``out`` (see the module docstring)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} must be a folder for yolo-seg")
    classes = class_map(coco)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco["categories"]}
    report = ExportReport("yolo-seg", str(out), extra={"tolerance_px": tolerance})
    stems: dict[str, Any] = {}
    for img, objs in progress(iter_objects(coco, report), desc="yolo-seg", total=len(coco["images"])):
        stem = Path(img["file_name"]).with_suffix("").as_posix()
        if stem in stems:
            raise InputError(f"images {stems[stem]} and {img['id']} share the label file name {stem}.txt")
        stems[stem] = img["id"]
        w, h = float(img["width"]), float(img["height"])
        lines = []
        for o in objs:
            if o.ann.get("category_id") not in classes:
                report.skip("unknown_category", o.id)
                continue
            parts, dropped_parts, dropped_holes = mask_rings(o.mask, tolerance)
            ring = single_ring(parts)
            if ring is None:
                report.skip("too_small", o.id)
                continue
            report.polygon(o.id, rings_iou(o.mask, [ring]), dropped_parts, dropped_holes, min_iou)
            xy = np.clip(ring / np.array([w, h]), 0.0, 1.0).reshape(-1)
            lines.append(" ".join([str(classes[o.ann["category_id"]])] + [f"{v:.6f}" for v in xy]))
            report.objects += 1
        write_text_atomic(path_inside(out / "labels", f"{stem}.txt", f"image {img['id']}'s label file"), "".join(line + "\n" for line in lines))
        report.images += 1
    link = out / "images"
    if images_dir is not None and not link.exists() and not link.is_symlink():
        link.symlink_to(Path(images_dir).resolve(), target_is_directory=True)
    data = {"path": str(out.resolve()), "train": "images", "val": "images",
            "names": {i: names[c] for c, i in classes.items()}}
    write_text_atomic(out / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    report.summarise_polygons()
    write_report(report, report_path(out))
    return report
