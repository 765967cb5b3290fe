"""Reading and checking COCO JSON files.

Only the structure is checked here (the keys ``images``, ``annotations`` and ``categories``,
unique image ids, annotations that name a known image). What an annotation must carry (a point,
a mask) is checked by the stage that needs it.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import file_name_problem
from .rle import RLE, check_mask_size, segmentation_to_rle


def load_coco_json(path: str | os.PathLike, require_annotations: bool = True) -> dict[str, Any]:
    """Load a COCO JSON file and check its structure.

    Args:
        path: the JSON file.
        require_annotations: whether the ``annotations`` list must be present (a results file or
            an image list may lack it).

    Returns:
        The parsed dictionary, with ``annotations`` and ``categories`` defaulting to ``[]``.

    Raises:
        InputError: the file is missing, is not JSON, or is not a COCO dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(f"{path} nests its lists or objects too deeply to be read as JSON") from None
    return checked_coco(data, path, require_annotations)


def checked_coco(data: Any, path: str | os.PathLike, require_annotations: bool = True) -> dict[str, Any]:
    """``data`` (a parsed JSON file) checked as :func:`load_coco_json` checks what it reads."""
    check_coco_header(data, path, require_annotations)
    seen = {img["id"] for img in data["images"]}
    ann_ids: set[int] = set()
    for ann in data["annotations"]:
        check_annotation(ann, path, seen, ann_ids)
    return data


def check_coco_header(data: Any, path: str | os.PathLike, require_annotations: bool = True) -> None:
    """Check everything of a parsed COCO file but its annotations (see :func:`load_coco_json`);
    default ``annotations`` and ``categories`` to ``[]`` where absent.

    Raises:
        InputError: no ``images`` list, an image without id/file_name/size, a repeated image id,
            a file name outside the image folder, a bad category id.
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path} is not a COCO dataset: it needs an 'images' list")
    if require_annotations and not isinstance(data.get("annotations"), list):
        raise InputError(f"{path} is not a COCO dataset: it needs an 'annotations' list")
    data.setdefault("annotations", [])
    data.setdefault("categories", [])
    if not isinstance(data["categories"], list):
        raise InputError(f"{path}: 'categories' must be a list")
    seen: set[int] = set()
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= img.keys():
            raise InputError(f"{path}: every image needs 'id', 'file_name', 'width' and 'height'")
        check_id(img["id"], path, "image")
        if img["id"] in seen:
            raise InputError(f"{path}: image id {img['id']} appears twice")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise InputError(f"{path}: image {img['id']} has no usable 'file_name'")
        problem = file_name_problem(img["file_name"])
        if problem:
            raise InputError(f"{path}: image {img['id']}'s file_name {img['file_name']!r} {problem}; "
                             f"file names are relative to the image folder, and no file outside it is read")
        try:
            check_mask_size(img["height"], img["width"])
        except InputError as e:
            raise InputError(f"{path}: image {img['id']} ({img['file_name']}): {e}") from None
        seen.add(img["id"])
    for cat in data["categories"]:
        if isinstance(cat, dict) and "id" in cat:
            check_id(cat["id"], path, "category")


def check_annotation(ann: Any, path: str | os.PathLike, image_ids: set | dict, ann_ids: set[int]) -> None:
    """Check one annotation's structure (ids, iscrowd, a known image, an id not seen before in
    ``ann_ids``, which it is added to).

    Raises:
        InputError: one sentence naming ``path`` and the annotation.
    """
    if not isinstance(ann, dict) or "image_id" not in ann or "id" not in ann:
        raise InputError(f"{path}: every annotation needs an 'id' and an 'image_id'")
    check_id(ann["id"], path, "annotation")
    check_id(ann["image_id"], path, f"annotation {ann['id']}'s image", key="image_id")
    if "category_id" in ann:
        check_id(ann["category_id"], path, f"annotation {ann['id']}'s category", key="category_id")
    if "iscrowd" in ann and not (isinstance(ann["iscrowd"], (int, bool)) and ann["iscrowd"] in (0, 1)):
        raise InputError(f"{path}: annotation {ann['id']} has iscrowd {ann['iscrowd']!r}; it must be 0 or 1")
    if ann["image_id"] not in image_ids:
        raise InputError(f"{path}: annotation {ann['id']} names unknown image id {ann['image_id']}")
    if ann["id"] in ann_ids:
        raise InputError(f"{path}: annotation id {ann['id']} appears twice")
    ann_ids.add(ann["id"])


def check_id(value: Any, source: str | os.PathLike, what: str, key: str = "id") -> None:
    """Refuse an id that is not a JSON integer: ``1.5``, ``true`` and ``"9"`` are never truncated
    or converted (``bool`` is no integer here).

    Raises:
        InputError: naming ``source``, ``what`` (the annotation, image or category) and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        shown = json.dumps(value) if isinstance(value, (str, float, bool)) or value is None else type(value).__name__
        raise InputError(f"{source}: {what} has {key} {shown}; ids must be whole numbers (JSON integers)")


def annotation_rle(ann: dict[str, Any], image: dict[str, Any], source: str) -> RLE:
    """The checked compressed RLE of an annotation's ``segmentation`` on its ``image`` record.

    Raises:
        InputError: one sentence naming ``source`` (the file), the annotation and its image.
    """
    try:
        return segmentation_to_rle(ann.get("segmentation"), image["height"], image["width"])
    except InputError as e:
        raise InputError(f"{source}: annotation {ann.get('id')} of image {ann.get('image_id')}: {e}") from None


def check_segmentations(coco: dict[str, Any], source: str, other_size_ok: bool = False) -> None:
    """Check every annotation's mask (see :func:`annotation_rle`) before any work starts.

    Args:
        other_size_ok: an RLE whose own ``size`` disagrees with its image's passes when it is
            well formed for that size (for tools that report such masks and go on); garbage
            ``counts`` still fail.

    Raises:
        InputError: the first unusable (or, with ``other_size_ok``, malformed) mask, named by
            ``source``, annotation and image.
    """
    images = {img["id"]: img for img in coco["images"]}
    for ann in coco["annotations"]:
        check_segmentation(ann, images[ann["image_id"]], source, other_size_ok)


def check_segmentation(ann: dict[str, Any], img: dict[str, Any], source: str, other_size_ok: bool = False) -> None:
    """:func:`check_segmentations` for one annotation on its image record (no mask passes)."""
    seg = ann.get("segmentation")
    if seg in (None, [], {}):
        return
    size = seg.get("size") if isinstance(seg, dict) else None
    if other_size_ok and isinstance(size, (list, tuple)) and len(size) == 2 and list(size) != [
            img["height"], img["width"]]:
        img = {"height": size[0], "width": size[1]}  # checked against its own size
    annotation_rle(ann, img, source)


def annotations_by_image(coco: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Group a COCO dataset's annotations by ``image_id`` (every image present, maybe empty)."""
    out: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        out[ann["image_id"]].append(ann)
    return out


def category_names(coco: dict[str, Any]) -> dict[int, str]:
    """Map category id → name (``str(id)`` where a name is missing)."""
    return {c["id"]: str(c.get("name", c["id"])) for c in coco.get("categories", [])}


def check_categories(coco: dict[str, Any], source: str = "the annotation file") -> None:
    """Raise :class:`InputError` if an annotation's ``category_id`` is not in ``categories``."""
    known = {c.get("id") for c in coco.get("categories", []) if isinstance(c, dict)}
    missing = defaultdict(int)
    first = None
    for ann in coco["annotations"]:
        try:
            ok = ann.get("category_id") in known
        except TypeError:  # an unhashable category id (a list, a dict)
            ok = False
        if not ok:
            missing[str(ann.get("category_id"))] += 1
            first = first or ann
    if missing:
        cats = ", ".join(sorted(missing))
        raise InputError(f"{source} uses category ids absent from its categories list: {cats} (first: "
                         f"annotation {first.get('id')} of image {first.get('image_id')})")


def mps_alternatives(ann: dict[str, Any]) -> list[Any]:
    """A pseudo-label's proposal masks in MPS rank order from rank 2: rank ``r`` ↦ element ``r − 2``.

    `sap select` writes ``alternatives`` (the other proposals, best first), ``sap.order`` (all
    proposals ranked, best first), ``sap.proposal_index`` (the selected one) and ``sap.mps``,
    the rule of SAPNet's multi-mask supervision:

    * ``"official"`` (the official code): rank ``r`` is proposal ``order[r − 1]`` of the ranking
      of *all* proposals, which is the selected mask itself (``segmentation``) when it ranks there;
    * ``"paper"``, or a file without ``sap.mps``: rank ``r`` is ``alternatives[r − 2]``.

    Raises:
        InputError: ``sap.order`` and ``alternatives`` do not describe the same proposals.
    """
    alts = list(ann.get("alternatives") or [])
    sap = ann.get("sap") or {}
    if sap.get("mps") != "official" or "order" not in sap or "proposal_index" not in sap:
        return alts
    order, chosen = [int(j) for j in sap["order"]], int(sap["proposal_index"])
    others = [j for j in order if j != chosen]
    if len(others) != len(alts) or chosen not in order:
        raise InputError(f"annotation {ann.get('id')}: 'sap.order' ranks {len(order)} proposals but "
                         f"'alternatives' holds {len(alts)} besides the selected one")
    mask = dict(zip(others, alts))
    mask[chosen] = ann["segmentation"]
    return [mask[j] for j in order[1:]]


# ---- locked annotations ---------------------------------------------------------------------------
# A person's correction (`sap import`) is an ordinary COCO annotation whose ``"sap"`` field holds
# ``"locked": true`` and where it came from under ``"correction"``. Every stage passes a locked
# annotation through untouched (same id, same bytes of mask), training uses it like any other,
# and the review queue shows it as done.

LOCK_KEY = "locked"


def is_locked(ann: dict[str, Any]) -> bool:
    """Whether ``ann`` is a person's correction that no stage may change."""
    sap = ann.get("sap")
    return isinstance(sap, dict) and sap.get(LOCK_KEY) is True


def lock_annotation(ann: dict[str, Any], source: str, **details: Any) -> dict[str, Any]:
    """A locked copy of ``ann``: ``sap.locked = true``, ``sap.correction = {source, ...details}``.

    The selector's ``alternatives`` are dropped, and with them ``sap.mps`` (the rule that reads
    them, :func:`mps_alternatives`): they were proposals for the mask before the correction, and
    training must not pull a checked mask towards them.
    """
    new = {k: v for k, v in ann.items() if k != "alternatives"}
    sap = dict(new.get("sap") or {})
    sap.pop("mps", None)
    sap[LOCK_KEY] = True
    sap["correction"] = {"source": source, **details}
    new["sap"] = sap
    return new


def with_locked(coco: dict[str, Any], locked: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of ``coco`` in which every locked annotation replaces the one of the same id
    (annotations of new ids are appended, in the order given)."""
    by_id = {a["id"]: a for a in locked}
    out = {k: v for k, v in coco.items() if k != "annotations"}
    anns = [by_id.pop(a["id"], a) for a in coco["annotations"]]
    out["annotations"] = anns + list(by_id.values())
    return out
