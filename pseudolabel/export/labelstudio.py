"""Label Studio: tasks with pre-annotations out, reviewed annotations back in.

Export (:func:`export_labelstudio`) writes ``OUT`` (a JSON list of tasks) and ``OUT.xml`` (the
labelling configuration to paste into the project). One task per image:

* ``data.image``: the image URL (``--image-root`` + file name, or Label Studio's local-files URL
  of the absolute path), ``data.sap_image_id``, ``data.sap_file_name``;
* ``predictions[0]``: ``model_version`` ``"sap"``, a task ``score`` (the lowest object score of
  the image, so that sorting tasks by prediction score puts the worst images first) and one
  region per object: a brush mask in Label Studio's own RLE (encoded by
  ``label_studio_converter.brush.mask2rle``, exact) or, with ``polygons=True``, a polygon in
  percent of the image size (holes bridged, parts joined: see :mod:`.polygons`), with a per-region
  ``score``. Region ids are ``sap-<annotation id>``: Label Studio keeps them when a prediction
  becomes an annotation, which is how corrections find their way back. The annotated point is
  a keypoint region ``sap-<id>-point`` (not read back).

Import (:func:`read_labelstudio`) reads Label Studio's JSON export: for every task with a
submitted (not cancelled) annotation, the latest one; each region ``sap-<id>`` gives that
object's reviewed mask and label; an object of the task's predictions that the annotation no
longer has was deleted by the reviewer; regions without a ``sap-`` id are new objects.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from pseudolabel.core.errors import InputError
from pseudolabel.core.io import write_json_stream, write_text_atomic
from pseudolabel.core.progress import progress

from .common import ExportReport, image_url, iter_objects, label_color, report_path, write_report
from .polygons import mask_rings, rings_iou, single_ring

REGION_ID = re.compile(r"^sap-(\d+)$")
INSTALL = "Label Studio support needs label-studio-converter: pip install 'sap[labelstudio]'"


def _brush():
    try:
        from label_studio_converter import brush
    except ImportError:
        raise InputError(INSTALL) from None
    return brush


def labelling_config(names: list[str], polygons: bool, with_points: bool) -> str:
    """The Label Studio labelling configuration (XML) matching the exported regions."""
    tag = "PolygonLabels" if polygons else "BrushLabels"
    labels = "".join(f"\n    <Label value={quoteattr(n)} background={quoteattr(label_color(i))}/>" for i, n in enumerate(names))
    out = ['<View>', '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>',
           f'  <{tag} name="label" toName="image">{labels}\n  </{tag}>']
    if with_points:
        out.append(f'  <KeyPointLabels name="point" toName="image">{labels}\n  </KeyPointLabels>')
    out.append("</View>")
    return "\n".join(out) + "\n"


def export_labelstudio(coco: Any, out: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                       image_root: str | None = None, polygons: bool = False, tolerance: float = 1.0) -> ExportReport:
    """Write Label Studio tasks for ``coco`` (a COCO dict or a streamed
    :class:`~pseudolabel.core.coco_stream.CocoStream`) to ``out``, task by task, and the
    labelling config to ``OUT.xml``."""
    brush = None if polygons else _brush()
    out = Path(out)
    report = ExportReport("labelstudio", str(out), extra={"regions": "polygons" if polygons else "brush RLE"})
    names = [str(c.get("name", c["id"])) for c in sorted(coco["categories"], key=lambda c: int(c["id"]))]
    seen = {"points": False}

    def tasks():
        for img, objs in progress(iter_objects(coco, report), desc="labelstudio", total=len(coco["images"])):
            result, scores = [], []
            for o in objs:
                regions = _regions(o, img, report, brush, polygons, tolerance)
                if regions:
                    result += regions
                    seen["points"] |= len(regions) > 1
                    if o.score is not None:
                        scores.append(o.score)
                    report.objects += 1
            task = {"data": {"image": image_url(img["file_name"], images_dir, image_root), "sap_image_id": img["id"],
                             "sap_file_name": img["file_name"]}}
            if result:
                pred = {"model_version": "sap", "result": result}
                if scores:
                    pred["score"] = round(min(scores), 6)
                task["predictions"] = [pred]
            report.images += 1
            yield task

    write_json_stream(out, tasks())
    report.summarise_polygons()
    config = out.with_suffix(".xml")
    write_text_atomic(config, labelling_config(names, polygons, seen["points"]))
    report.extra["labelling_config"] = str(config)
    write_report(report, report_path(out))
    return report


def _regions(o, img: dict[str, Any], report: ExportReport, brush, polygons: bool, tolerance: float) -> list[dict]:
    """The object's mask region and, where it has a point, its keypoint region ([] when it is too
    small for a polygon, recorded in ``report``)."""
    h, w = int(img["height"]), int(img["width"])
    region = {"id": f"sap-{o.id}", "from_name": "label", "to_name": "image", "original_width": w,
              "original_height": h, "image_rotation": 0}
    if polygons:
        parts, dropped_parts, dropped_holes = mask_rings(o.mask, tolerance)
        ring = single_ring(parts)
        if ring is None:
            report.skip("too_small", o.id)
            return []
        report.polygon(o.id, rings_iou(o.mask, [ring]), dropped_parts, dropped_holes)
        pts = (ring / np.array([w, h]) * 100.0).round(4).tolist()
        region.update(type="polygonlabels", value={"points": pts, "closed": True, "polygonlabels": [o.label]})
    else:
        rle = brush.mask2rle(o.mask.astype(np.uint8) * 255)
        region.update(type="brushlabels", value={"format": "rle", "rle": rle, "brushlabels": [o.label]})
    if o.score is not None:
        region["score"] = round(o.score, 6)
    out = [region]
    point = o.ann.get("point")
    if isinstance(point, (list, tuple)) and len(point) == 2:
        out.append({"id": f"sap-{o.id}-point", "from_name": "point", "to_name": "image", "type": "keypointlabels",
                    "original_width": w, "original_height": h, "image_rotation": 0,
                    "value": {"x": 100.0 * float(point[0]) / w, "y": 100.0 * float(point[1]) / h,
                              "width": 0.6, "keypointlabels": [o.label]}})
    return out


# ---- reading a Label Studio export back ---------------------------------------------------------------

def _region_mask(region: dict[str, Any], brush) -> np.ndarray | None:
    """The ``H×W`` bool mask of one brush or polygon region (None for other region types)."""
    h, w = int(region["original_height"]), int(region["original_width"])
    value = region.get("value") or {}
    kind = str(region.get("type", "")).lower()
    if kind == "brushlabels" and "rle" in value:
        flat = np.asarray(brush.decode_rle(value["rle"]))
        if flat.size != h * w * 4:
            raise InputError(f"Label Studio region {region.get('id')}: its RLE holds {flat.size} values, "
                             f"not {h}×{w}×4")
        return flat.reshape(h, w, 4)[:, :, 3] > 0
    if kind == "polygonlabels" and value.get("points"):
        from pseudolabel.core.rle import decode_rle, segmentation_to_rle

        xy = (np.asarray(value["points"], dtype=np.float64) / 100.0 * np.array([w, h])).reshape(-1)
        return decode_rle(segmentation_to_rle([xy.tolist()], h, w)).astype(bool)
    return None


def _label(region: dict[str, Any]) -> str | None:
    for key in ("brushlabels", "polygonlabels", "labels"):
        names = (region.get("value") or {}).get(key)
        if names:
            return str(names[0])
    return None


def read_labelstudio(path: str | os.PathLike) -> dict[str, Any]:
    """Reviewed objects of a Label Studio JSON export.

    Returns:
        ``{"objects": [(ann_id, image_id, label, mask)], "deleted": [(ann_id, image_id)],
        "new": [(image_id, label, mask)], "tasks": n reviewed}`` with masks ``H×W`` bool.

    Raises:
        InputError: the file is not a Label Studio export of ours.
    """
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a readable Label Studio JSON export ({e})") from None
    if not isinstance(tasks, list):
        raise InputError(f"{path} is not a Label Studio JSON export (a list of tasks)")
    brush = _brush()
    objects, deleted, new, reviewed = [], [], [], 0
    for task in progress(tasks, desc="read labelstudio", unit="task"):
        data = task.get("data") or {}
        if "sap_image_id" not in data:
            raise InputError(f"{path}: a task has no data.sap_image_id: it was not exported by sap export")
        image_id = data["sap_image_id"]
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not done:
            continue
        reviewed += 1
        latest = max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
        masks: dict[int, tuple[str | None, np.ndarray]] = {}
        for region in latest.get("result") or []:
            mask = _region_mask(region, brush)
            if mask is None:
                continue
            m = REGION_ID.match(str(region.get("id", "")))
            if m is None:
                new.append((image_id, _label(region), mask))
                continue
            ann_id = int(m.group(1))
            prev = masks.get(ann_id)
            masks[ann_id] = (_label(region), mask if prev is None else (prev[1] | mask))
        objects += [(ann_id, image_id, label, mask) for ann_id, (label, mask) in masks.items()]
        predicted = {int(m.group(1)) for p in task.get("predictions") or [] for r in p.get("result") or []
                     if (m := REGION_ID.match(str(r.get("id", ""))))}
        deleted += [(i, image_id) for i in sorted(predicted - set(masks))]
    return {"objects": objects, "deleted": deleted, "new": new, "tasks": reviewed}
