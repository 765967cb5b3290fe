"""CVAT: "CVAT for images 1.1" XML with mask shapes out, the same format back in.

Why this format: it is CVAT's own (its documentation calls it "CVAT for images"), imported
into a task by *Upload annotations → CVAT 1.1*; a ``<mask>`` shape is CVAT's bitmap (runs over
the object's box), so masks arrive exact, not as polygons; per-shape ``<attribute>`` elements
carry our annotation id (``sap_id``) and ``score``, and survive CVAT's round trip, which is
how corrections find their way back (CVAT renumbers shapes). COCO 1.0 would go through
Datumaro's converter and lose the attributes unless the labels declare them anyway.

The run-length encoding is CVAT's own, through its SDK (``cvat_sdk.masks.encode_mask`` /
``decode_mask``): run lengths of alternating 0/1 over the box row by row, starting with 0, then
the inclusive box ``left, top, right, bottom``; the XML writes the runs as ``rle`` and the box as
``left top width height``. ``OUT.labels.json`` holds the label constructor of the task (labels with
the ``sap_id`` and ``score`` text attributes) to paste into CVAT's *Raw* label editor before
uploading. The annotated point is a ``<points>`` shape of the same label.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from pseudolabel.core.errors import InputError
from pseudolabel.core.io import atomic_path, write_json_atomic
from pseudolabel.core.progress import progress

from .common import ExportReport, label_color, iter_objects, report_path, write_report

INSTALL = "CVAT support needs cvat-sdk: pip install 'sap[cvat]'"
ATTRIBUTES = ("sap_id", "score")


def _masks():
    try:
        from cvat_sdk import masks
    except ImportError:
        raise InputError(INSTALL) from None
    return masks


def labels_spec(names: list[str]) -> list[dict[str, Any]]:
    """CVAT's raw label specification: one label per category with our two text attributes."""
    attrs = [{"name": a, "mutable": False, "input_type": "text", "default_value": "", "values": [""]}
             for a in ATTRIBUTES]
    return [{"name": n, "color": label_color(i), "type": "any", "attributes": attrs} for i, n in enumerate(names)]


def export_cvat(coco: Any, out: str | os.PathLike) -> ExportReport:
    """Write ``coco`` (a COCO dict or a streamed :class:`~pseudolabel.core.coco_stream.CocoStream`)
    as CVAT for images 1.1 XML to ``out``, image by image, and the label spec to ``OUT.labels.json``."""
    masks = _masks()
    out = Path(out)
    report = ExportReport("cvat", str(out), extra={"cvat_format": "CVAT for images 1.1 (XML), mask shapes"})
    names = [str(c.get("name", c["id"])) for c in sorted(coco["categories"], key=lambda c: int(c["id"]))]
    version, meta = ET.Element("version"), _meta(names)
    version.text, version.tail = "1.1", "\n  "
    ET.indent(meta, level=1)
    images = progress(iter_objects(coco, report), desc="cvat", total=len(coco["images"]))
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  ' + ET.tostring(version, encoding="unicode"))
        previous = meta  # each element is written once the next one's existence sets its tail
        for index, (img, objs) in enumerate(images):
            el = _image_element(index, img, objs, masks, report)
            ET.indent(el, level=1)
            previous.tail = "\n  "
            f.write(ET.tostring(previous, encoding="unicode"))
            previous = el
        previous.tail = "\n"
        f.write(ET.tostring(previous, encoding="unicode") + "</annotations>\n")
    write_json_atomic(out.with_name(out.stem + ".labels.json"), labels_spec(names), indent=2)
    write_report(report, report_path(out))
    return report


def _meta(names: list[str]) -> ET.Element:
    """``<meta><task><labels>`` with one label per category and its attributes."""
    meta = ET.Element("meta")
    labels = ET.SubElement(ET.SubElement(meta, "task"), "labels")
    for spec in labels_spec(names):
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = spec["name"]
        ET.SubElement(lab, "color").text = spec["color"]
        ET.SubElement(lab, "type").text = "any"
        attrs = ET.SubElement(lab, "attributes")
        for a in spec["attributes"]:
            at = ET.SubElement(attrs, "attribute")
            for k in ("name", "mutable", "input_type", "default_value"):
                ET.SubElement(at, k).text = str(a[k]).lower() if k == "mutable" else str(a[k])
            ET.SubElement(at, "values").text = ""
    return meta


def _image_element(index: int, img: dict, objs: list, masks, report: ExportReport) -> ET.Element:
    """One ``<image>`` with a ``<mask>`` (and a ``<points>`` where the object has a point) per object."""
    el = ET.Element("image", id=str(index), name=str(img["file_name"]), width=str(img["width"]),
                    height=str(img["height"]))
    for z, o in enumerate(objs):
        enc = masks.encode_mask(o.mask)  # runs..., left, top, right, bottom (inclusive)
        left, top, right, bottom = (int(v) for v in enc[-4:])
        shape = ET.SubElement(el, "mask", label=o.label, source="auto", occluded="0", z_order=str(z),
                              rle=", ".join(str(int(v)) for v in enc[:-4]), left=str(left), top=str(top),
                              width=str(right - left + 1), height=str(bottom - top + 1))
        ET.SubElement(shape, "attribute", name="sap_id").text = str(o.id)
        ET.SubElement(shape, "attribute", name="score").text = "" if o.score is None else f"{o.score:.6f}"
        point = o.ann.get("point")
        if isinstance(point, (list, tuple)) and len(point) == 2:
            pt = ET.SubElement(el, "points", label=o.label, source="auto", occluded="0", z_order=str(z),
                               points=f"{float(point[0]):.2f},{float(point[1]):.2f}")
            ET.SubElement(pt, "attribute", name="sap_id").text = str(o.id)
            ET.SubElement(pt, "attribute", name="score").text = ""
        report.objects += 1
    report.images += 1
    return el


def read_cvat(path: str | os.PathLike) -> dict[str, Any]:
    """Reviewed objects of a CVAT for images 1.1 XML file.

    Masks and polygons with a ``sap_id`` attribute are our objects (several shapes of one id are
    unioned); shapes without it are new objects. Images are named by ``file_name``.

    Returns:
        ``{"objects": [(ann_id, file_name, label, mask)], "new": [(file_name, label, mask)]}``.
    """
    from pseudolabel.core.rle import decode_rle, segmentation_to_rle

    masks = _masks()
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise InputError(f"{path} is not a readable CVAT XML file ({e})") from None
    if root.tag != "annotations":
        raise InputError(f"{path} is not a CVAT for images XML file (its root is <{root.tag}>)")
    objects: dict[tuple[int, str], list] = {}
    new = []
    for img in root.iter("image"):
        name, w, h = img.get("name"), int(img.get("width")), int(img.get("height"))
        for shape in img:
            if shape.tag == "mask":
                x, y = int(float(shape.get("left"))), int(float(shape.get("top")))
                bw, bh = int(float(shape.get("width"))), int(float(shape.get("height")))
                runs = [int(float(v)) for v in shape.get("rle", "").split(",") if v.strip()]
                mask = masks.decode_mask(runs + [x, y, x + bw - 1, y + bh - 1], image_width=w, image_height=h)
            elif shape.tag == "polygon":
                xy = [float(v) for p in shape.get("points", "").split(";") for v in p.split(",")]
                mask = decode_rle(segmentation_to_rle([xy], h, w)).astype(bool)
            else:
                continue
            attrs = {a.get("name"): (a.text or "") for a in shape.iter("attribute")}
            label = shape.get("label")
            if attrs.get("sap_id", "").strip().isdigit():
                key = (int(attrs["sap_id"]), name)
                if key in objects:
                    objects[key][1] = objects[key][1] | mask
                else:
                    objects[key] = [label, mask]
            else:
                new.append((name, label, np.asarray(mask, dtype=bool)))
    return {"objects": [(i, name, label, np.asarray(m, dtype=bool)) for (i, name), (label, m) in objects.items()],
            "new": new}
