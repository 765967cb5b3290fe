"""COCO JSON with polygon segmentations, for tools that want polygons instead of RLE.

Every object's mask is traced (:func:`pseudolabel.export.polygons.mask_rings`) and simplified
to ``tolerance`` pixels (Douglas-Peucker). A COCO polygon list is a union of rings with no
holes, so each hole is bridged into its outline by a zero-width cut (pycocotools fills
even-odd: the hole stays empty); each part is its own ring. The IoU of every polygon against the
RLE it came from is measured (pycocotools on both) and reported: mean, minimum, and the ids
below ``min_iou``. Objects too small for a polygon at this tolerance are left out and reported.
Everything else of the file (ids, scores, ``"sap"``, points) is kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pseudolabel.core.coco_stream import CocoStream
from pseudolabel.core.io import write_json_stream
from pseudolabel.core.progress import progress

from .common import ExportReport, iter_objects, report_path, write_report
from .polygons import mask_rings, part_ring, rings_iou, rings_to_rle


def export_coco_polygons(coco: Any, out: str | os.PathLike, tolerance: float = 1.0,
                         min_iou: float = 0.9) -> ExportReport:
    """Write ``coco`` with polygon masks to ``out`` (JSON) and ``OUT.report.json`` beside it.

    Args:
        coco: a COCO dataset of ours (masks as RLE or polygons), a dict or a streamed
            :class:`~pseudolabel.core.coco_stream.CocoStream`.
        out: the JSON file to write.
        tolerance: Douglas-Peucker tolerance in pixels (0 = every boundary vertex: exact).
        min_iou: objects whose polygon IoU against the mask falls below it are listed.
    """
    from pycocotools import mask as mask_utils

    out = Path(out)
    report = ExportReport("coco-polygons", str(out), extra={"tolerance_px": tolerance})
    def annotations():
        for img, objs in progress(iter_objects(coco, report), desc="coco-polygons", total=len(coco["images"])):
            report.images += 1
            h, w = int(img["height"]), int(img["width"])
            for o in objs:
                parts, dropped_parts, dropped_holes = mask_rings(o.mask, tolerance)
                if not parts:
                    report.skip("too_small", o.id)
                    continue
                rings = [part_ring(p) for p in parts]
                iou = rings_iou(o.mask, rings)
                report.polygon(o.id, iou, dropped_parts, dropped_holes, min_iou)
                new = {k: v for k, v in o.ann.items() if k not in ("segmentation", "alternatives")}
                new["segmentation"] = [[round(float(v), 2) for v in r.reshape(-1)] for r in rings]
                rle = rings_to_rle(rings, h, w)
                new["area"] = float(mask_utils.area(rle))
                new["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
                new["iscrowd"] = 0
                new["polygon_iou"] = round(iou, 5)
                report.objects += 1
                yield new

    head = {k: v for k, v in (coco.header if isinstance(coco, CocoStream) else coco).items() if k != "annotations"}
    write_json_stream(out, annotations(), head, "annotations")
    report.summarise_polygons()
    write_report(report, report_path(out))
    return report
