"""CVAT exports: "CVAT for images 1.1" XML, and CVAT's COCO Keypoints 1.0 (skeleton) JSON.

XML: ``<annotations>`` with ``<version>1.1</version>``, the labels under ``<meta>`` (``task``,
``project`` or ``job``), and per ``<image name width height>`` its shapes; ``<points label
points="x1,y1;x2,y2">`` in pixels (CVAT's canvas coordinates, continuous) is one object whose
points are its positive clicks, and a ``<skeleton>`` is one object whose visible keypoints
(``outside="0"``, ``occluded="0"``) are its clicks. Other shapes (boxes, polygons...) are
counted, not read. The XML
is parsed with defusedxml: a document type with entities is refused, not expanded.

COCO Keypoints (``.json``): every annotation with ``keypoints`` ``[x, y, v, ...]`` is one object;
its keypoints with ``v = 2`` (labelled and visible) are its clicks, in CVAT's canvas coordinates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError

from .common import Export, IngestOptions, RawImage, RawObject


def _parse_points(text: str, source: str, where: str) -> list[tuple[float, float, int]]:
    try:
        pairs = [p.split(",") for p in text.strip().split(";") if p.strip()]
        clicks = [(float(x), float(y), 1) for x, y in pairs]
    except ValueError:
        raise InputError(f"{source}: {where} has points={text!r}; CVAT writes 'x1,y1;x2,y2'") from None
    if not clicks:
        raise InputError(f"{source}: {where} has no points")
    return clicks


def read_cvat_xml(path: Path) -> Export:
    """Read a CVAT for images 1.1 XML export."""
    import defusedxml.ElementTree as ET
    from defusedxml import DefusedXmlException

    source = str(path)
    try:
        root = ET.parse(str(path)).getroot()
    except DefusedXmlException as e:
        raise InputError(f"{source}: the XML declares entities or a DTD ({type(e).__name__}), which CVAT never "
                         "writes; refused") from None
    except ET.ParseError as e:
        raise InputError(f"{source} is not well-formed XML ({e})") from None
    version = (root.findtext("version") or "").strip()
    if root.tag != "annotations" or not version:
        raise InputError(f"{source} is not a CVAT for images XML export (root <{root.tag}>, "
                         f"{'version ' + version if version else 'no <version>'}); export 'CVAT for images 1.1'")
    if root.find("track") is not None:
        raise InputError(f"{source} is a CVAT for video export (it has <track>); export 'CVAT for images 1.1'")
    names = [n.text.strip() for n in root.findall("meta//labels/label/name") if n.text]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(dict.fromkeys(names))] or None
    images, objects, other = [], [], Counter()
    for img in root.iter("image"):
        name = img.get("name") or ""
        try:
            w, h = int(img.get("width")), int(img.get("height"))
        except (TypeError, ValueError):
            raise InputError(f"{source}: <image id={img.get('id')!r} name={name!r}> has no integer width and height") from None
        images.append(RawImage(name, w, h, where=f"<image id={img.get('id')!r}>"))
        for i, shape in enumerate(img):
            where = f"<image name={name!r}> <{shape.tag}> #{i} (label {shape.get('label')!r})"
            if shape.tag == "points":
                clicks = _parse_points(shape.get("points") or "", source, where)
            elif shape.tag == "skeleton":  # its visible keypoints (neither outside nor occluded)
                clicks = [c for part in shape.iter("points") if part.get("outside") != "1"
                          and part.get("occluded") != "1" for c in _parse_points(part.get("points") or "", source, where)]
                if not clicks:
                    other["skeleton_without_visible_points"] += 1
                    continue
            else:
                other[shape.tag] += 1
                continue
            objects.append(RawObject(name, shape.get("label") or "", clicks, where))
    return Export(images, objects, categories, {f"ignored_{t}": n for t, n in other.items()})


def read_cvat_coco_keypoints(data: dict[str, Any], source: str) -> Export:
    """Read CVAT's COCO Keypoints 1.0 export (already parsed): visible keypoints → clicks."""
    cats = {c["id"]: c["name"] for c in data.get("categories") or []}
    images = [RawImage(im["file_name"], im.get("width"), im.get("height"), where=f"image {im.get('id')}")
              for im in data["images"]]
    names = {im["id"]: im["file_name"] for im in data["images"]}
    objects, hidden = [], 0
    for ann in data.get("annotations") or []:
        kp = ann.get("keypoints")
        where = f"annotation {ann.get('id')} of image {ann.get('image_id')}"
        if not isinstance(kp, list) or len(kp) % 3:
            raise InputError(f"{source}: {where} has no 'keypoints' list of x, y, v triples")
        clicks = [(float(kp[i]), float(kp[i + 1]), 1) for i in range(0, len(kp), 3) if kp[i + 2] == 2]
        if not clicks:
            hidden += 1
            continue
        if ann.get("image_id") not in names or ann.get("category_id") not in cats:
            raise InputError(f"{source}: {where} names an image or category the file does not list")
        objects.append(RawObject(names[ann["image_id"]], cats[ann["category_id"]], clicks, where))
    return Export(images, objects, [{"id": k, "name": v} for k, v in cats.items()],
                  {"objects_without_visible_keypoints": hidden})


def read_cvat(path: Path, options: IngestOptions) -> Export:
    """A CVAT export: XML (CVAT for images 1.1) or JSON (COCO Keypoints 1.0)."""
    if Path(path).suffix.lower() == ".json":
        from .coco_formats import load_coco

        return read_cvat_coco_keypoints(load_coco(path), str(path))
    return read_cvat_xml(path)
