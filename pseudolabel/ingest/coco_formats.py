"""COCO-based point formats: detectron2 PointSup, P2BNet/SAPNet, and COCO keypoints.

* ``pointsup``: ``point_coords`` ``[[x, y], ...]`` and ``point_labels`` ``[1|0, ...]`` per object
  (PointSup samples about 10 in the box, positive inside the mask, negative outside); all kept.
* ``p2bnet``: ``point`` ``[x, y]`` per object (P2BNet and SAPNet; their ``true_bbox`` is the
  full box for evaluation, not read).
* ``coco-keypoints``: one keypoint per object marks it: ``--keypoint NAME`` (a name of the
  category's ``keypoints``) or the first visible one. COCO keypoints are integer pixel indices
  (detectron2 adds 0.5 when it loads them), so the click is the pixel's centre ``(x + 0.5,
  y + 0.5)``. Only visible keypoints (``v = 2``) count: an occluded one lies on the occluder.

The file's own categories give the ids; ``file_name`` is matched by name under ``--images``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pseudolabel.core.coco import load_coco_json
from pseudolabel.core.errors import InputError
from pseudolabel.core.points import read_clicks

from .common import Export, IngestOptions, RawImage, RawObject


def load_coco(path: Path) -> dict[str, Any]:
    return load_coco_json(path)


def _frame(data: dict[str, Any]) -> tuple[list[RawImage], dict[int, str], dict[int, str]]:
    images = [RawImage(im["file_name"], im.get("width"), im.get("height"), where=f"image {im.get('id')}")
              for im in data["images"]]
    return images, {im["id"]: im["file_name"] for im in data["images"]}, \
        {c["id"]: c["name"] for c in data.get("categories") or []}


def _object(ann: dict, names: dict, cats: dict, clicks: list, source: str) -> RawObject:
    where = f"annotation {ann.get('id')} of image {ann.get('image_id')}"
    if ann.get("image_id") not in names or ann.get("category_id") not in cats:
        raise InputError(f"{source}: {where} names an image or category the file does not list")
    return RawObject(names[ann["image_id"]], cats[ann["category_id"]], clicks, where)


def read_point_coco(path: Path, options: IngestOptions, field: str) -> Export:
    """PointSup (``field="point_coords"``) or P2BNet (``field="point"``) COCO."""
    source = str(path)
    data = load_coco(path)
    images, names, cats = _frame(data)
    objects, crowd = [], 0
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            crowd += 1
            continue
        if ann.get(field) is None:
            raise InputError(f"{source}: annotation {ann.get('id')} has no {field!r}; this format needs it "
                             "on every object")
        try:
            clicks = read_clicks(ann if field == "point_coords" else {"id": ann.get("id"), "point": ann["point"]})
        except InputError as e:
            raise InputError(f"{source}: {e}") from None
        objects.append(_object(ann, names, cats, clicks, source))
    return Export(images, objects, [{"id": k, "name": v} for k, v in cats.items()], {"crowd_skipped": crowd})


def read_pointsup(path: Path, options: IngestOptions) -> Export:
    return read_point_coco(path, options, "point_coords")


def read_p2bnet(path: Path, options: IngestOptions) -> Export:
    return read_point_coco(path, options, "point")


def read_coco_keypoints(path: Path, options: IngestOptions) -> Export:
    """COCO keypoints: one visible keypoint per object (``options.keypoint`` or the first)."""
    source = str(path)
    data = load_coco(path)
    images, names, cats = _frame(data)
    kp_names = {c["id"]: list(c.get("keypoints") or []) for c in data.get("categories") or []}
    if options.keypoint is not None and not any(options.keypoint in v for v in kp_names.values()):
        known = sorted({n for v in kp_names.values() for n in v})
        raise InputError(f"{source}: no category has the keypoint {options.keypoint!r} "
                         f"(its keypoints: {', '.join(known) or 'none'})")
    objects, hidden = [], 0
    for ann in data["annotations"]:
        kp = ann.get("keypoints")
        if ann.get("iscrowd", 0) or not kp:
            continue
        if not isinstance(kp, list) or len(kp) % 3:
            raise InputError(f"{source}: annotation {ann.get('id')} has no 'keypoints' list of x, y, v triples")
        visible = [i for i in range(len(kp) // 3) if kp[3 * i + 2] == 2]
        if options.keypoint is not None:
            order = kp_names.get(ann.get("category_id"), [])
            want = order.index(options.keypoint) if options.keypoint in order else -1
            visible = [i for i in visible if i == want]
        if not visible:
            hidden += 1
            continue
        i = visible[0]
        clicks = [(float(kp[3 * i]) + 0.5, float(kp[3 * i + 1]) + 0.5, 1)]
        objects.append(_object(ann, names, cats, clicks, source))
    return Export(images, objects, [{"id": k, "name": v} for k, v in cats.items()],
                  {"objects_without_the_keypoint": hidden})
