"""``sap export``: the formats by name, and the one entry point the command calls."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from pseudolabel.core.coco import check_segmentations, load_coco_json
from pseudolabel.core.coco_stream import open_coco_stream
from pseudolabel.core.config import check_range
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import check_output_dir, check_output_file

from .common import ExportReport


@dataclass
class ExportOptions:
    """Options of ``sap export`` (each format reads those it knows).

    Attributes:
        image_root: Label Studio image URL prefix (default: its local-files URL of the path).
        polygons: Label Studio polygons instead of brush masks.
        tolerance: polygon simplification in pixels (yolo-seg, coco-polygons, LS polygons).
        min_iou: polygons below this IoU against their mask are listed in the report.
        field: FiftyOne label field of ``--ann``.
        others: FiftyOne: more COCO files by field name (ground_truth, pseudo, refined, predictions).
        overwrite: FiftyOne: replace a dataset of the same name.
    """

    image_root: str | None = None
    polygons: bool = False
    tolerance: float = 1.0
    min_iou: float = 0.9
    field: str = "labels"
    others: dict[str, str] | None = None
    overwrite: bool = False


def _labelstudio(coco, images, out, o: ExportOptions) -> ExportReport:
    from .labelstudio import export_labelstudio

    return export_labelstudio(coco, out, images, o.image_root, o.polygons, o.tolerance)


def _cvat(coco, images, out, o: ExportOptions) -> ExportReport:
    from .cvat import export_cvat

    return export_cvat(coco, out)


def _fiftyone(coco, images, out, o: ExportOptions) -> ExportReport:
    from .fiftyone_dataset import FIELDS, export_fiftyone

    others = {}
    for name, path in (o.others or {}).items():
        if name not in FIELDS:
            raise InputError(f"unknown FiftyOne field {name!r}; use one of {', '.join(FIELDS)}")
        others[name] = load_coco_json(path)
    return export_fiftyone(coco, str(out), images, o.field, others, o.overwrite)


def _yolo(coco, images, out, o: ExportOptions) -> ExportReport:
    from .yolo import export_yolo

    return export_yolo(coco, out, images, o.tolerance, o.min_iou)


def _coco_polygons(coco, images, out, o: ExportOptions) -> ExportReport:
    from .coco_polygons import export_coco_polygons

    return export_coco_polygons(coco, out, o.tolerance, o.min_iou)


FORMATS: dict[str, Callable[[dict, Any, Any, ExportOptions], ExportReport]] = {
    "labelstudio": _labelstudio, "cvat": _cvat, "fiftyone": _fiftyone, "yolo-seg": _yolo,
    "coco-polygons": _coco_polygons,
}


def run_export(fmt: str, ann: str | os.PathLike, images: str | os.PathLike | None, out: str | os.PathLike,
               options: ExportOptions | None = None) -> ExportReport:
    """Export the COCO file ``ann`` to ``fmt`` at ``out`` (a file, a folder, or a FiftyOne dataset name).

    Raises:
        InputError: unknown format, unreadable input or a malformed mask in it, an option out of
            range, an output that cannot be written or would overwrite the input.
    """
    options = options or ExportOptions()
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "fiftyone" and images is None:
        raise InputError("a FiftyOne dataset needs the images: pass --images DIR")
    check_range(options.tolerance, "--tolerance", low=0.0)
    check_range(options.min_iou, "--min-iou", low=0.0, high=1.0)
    if fmt == "yolo-seg":
        check_output_dir(out, "--out", inputs=(ann, images))
    elif fmt != "fiftyone":
        check_output_file(out, "--out", inputs=(ann, images))
    # read image by image, never whole (FiftyOne holds its dataset anyway); garbage masks are one
    # sentence naming the file, found before anything is written; a mask made for another size is reported
    coco = open_coco_stream(ann, check_masks="other_size_ok")
    for path in (options.others or {}).values():
        check_segmentations(load_coco_json(path), str(path), other_size_ok=True)
    return FORMATS[fmt](coco, images, out, options)
