"""What every exporter shares: the objects to export, what could not be represented, the report.

An exporter reads any COCO file of ours (pseudo-labels, refined labels, predictions with
``images``, ground truth), walks its objects image by image with their masks decoded
(:func:`iter_objects`), and records every object it could not represent with a reason
(:class:`ExportReport`): nothing is dropped silently. Masks are ``H×W`` ``bool`` arrays; points
``(x, y)`` in pixels; boxes COCO ``[x, y, w, h]``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pseudolabel.core.coco import category_names, is_locked
from pseudolabel.core.coco_stream import CocoStream, group_by_image
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import write_json_atomic
from pseudolabel.core.rle import decode_rle, segmentation_to_rle

#: why an object was left out of (or changed in) an export, by key
REASONS = {
    "no_mask": "have no mask",
    "bad_mask": "have a mask that cannot be read for their image",
    "empty_mask": "have an empty mask",
    "too_small": "are too small for a polygon at this tolerance",
    "holes_dropped": "lost holes (the format has no holes)",
    "parts_dropped": "lost parts too small for a polygon",
    "low_iou": "lost more than the allowed IoU to the polygon",
    "no_image": "belong to an image missing from the image list",
    "unknown_category": "have a category missing from the categories list",
}


@dataclass
class ExportReport:
    """What an export wrote and what it could not represent.

    Attributes:
        format: the format name.
        out: where it wrote.
        images: images written.
        objects: objects written.
        not_represented: reason key (of :data:`REASONS`) → annotation ids left out.
        changed: reason key → annotation ids written with a loss (holes, parts, IoU).
        extra: format-specific figures (e.g. the polygon IoU against the RLE).
    """

    format: str
    out: str
    images: int = 0
    objects: int = 0
    not_represented: dict[str, list] = field(default_factory=dict)
    changed: dict[str, list] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    polygon_ious: list[float] = field(default_factory=list)

    def polygon(self, ann_id: Any, iou: float, dropped_parts: int, dropped_holes: int,
                min_iou: float | None = None) -> None:
        """Record a mask written as polygons: the IoU they keep, the parts and holes they lost,
        and (with ``min_iou``) an IoU below the allowed loss."""
        self.polygon_ious.append(iou)
        if dropped_parts:
            self.change("parts_dropped", ann_id)
        if dropped_holes:
            self.change("holes_dropped", ann_id)
        if min_iou is not None and iou < min_iou:
            self.change("low_iou", ann_id)

    def summarise_polygons(self) -> None:
        """Put the mean and the minimum polygon IoU into :attr:`extra` (nothing if none)."""
        if self.polygon_ious:
            self.extra.update(mean_polygon_iou=round(float(np.mean(self.polygon_ious)), 5),
                              min_polygon_iou=round(float(np.min(self.polygon_ious)), 5))

    def skip(self, reason: str, ann_id: Any) -> None:
        self.not_represented.setdefault(reason, []).append(ann_id)

    def change(self, reason: str, ann_id: Any) -> None:
        self.changed.setdefault(reason, []).append(ann_id)

    @property
    def n_not_represented(self) -> int:
        return sum(len(v) for v in self.not_represented.values())

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "out": self.out, "images": self.images, "objects": self.objects,
                "not_represented": {k: {"count": len(v), "ids": v} for k, v in self.not_represented.items()},
                "written_with_loss": {k: {"count": len(v), "ids": v} for k, v in self.changed.items()},
                **self.extra}

    def lines(self) -> list[str]:
        out = [f"{self.format}: {self.objects} objects on {self.images} images written to {self.out}"]
        for k, v in self.extra.items():
            if not isinstance(v, (dict, list)):
                out.append(f"  {k.replace('_', ' ')}: {v}")
        for reason, ids in self.not_represented.items():
            out.append(f"  not represented: {len(ids)} objects {REASONS.get(reason, reason)} "
                       f"(ids {_show(ids)})")
        for reason, ids in self.changed.items():
            out.append(f"  written with a loss: {len(ids)} objects {REASONS.get(reason, reason)} (ids {_show(ids)})")
        if not self.not_represented:
            out.append("  every object was represented")
        return out


def _show(ids: list, n: int = 10) -> str:
    head = ", ".join(str(i) for i in ids[:n])
    return head + (f", ... (+{len(ids) - n})" if len(ids) > n else "")


def label_color(i: int) -> str:
    """A distinct ``#rrggbb`` colour for the ``i``-th label (golden-ratio hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def report_path(out: str | os.PathLike) -> Path:
    """Where an export's report goes: beside ``out`` as ``OUT.report.json`` (inside a folder)."""
    out = Path(out)
    return out / "export_report.json" if out.suffix == "" else out.with_name(out.stem + ".report.json")


def write_report(report: ExportReport, path: str | os.PathLike) -> Path:
    return write_json_atomic(path, report.to_dict(), indent=2)


@dataclass
class Obj:
    """One object of the file being exported.

    Attributes:
        ann: the annotation as read (id, category_id, score, "sap" provenance ...).
        mask: ``H×W`` bool mask.
        label: the category name.
        score: a confidence in [0, 1] or None (see :func:`object_score`).
    """

    ann: dict[str, Any]
    mask: np.ndarray
    label: str
    score: float | None

    @property
    def id(self) -> Any:
        return self.ann["id"]


def object_score(ann: dict[str, Any]) -> float | None:
    """A confidence for the labelling tool: 1 for a locked (checked) object; else 1 − the review
    queue's risk when the file comes from `sap review`; else refine's predicted IoU; else the
    annotation's ``score``; else None."""
    if is_locked(ann):
        return 1.0
    review = (ann.get("sap") or {}).get("review") if isinstance(ann.get("sap"), dict) else None
    if isinstance(review, dict) and review.get("risk") is not None:
        return round(1.0 - float(review["risk"]), 6)
    for key in ("refine_iou", "score"):
        if isinstance(ann.get(key), (int, float)):
            return float(ann[key])
    return None


def iter_objects(coco: Any, report: ExportReport) -> Iterator[tuple[dict, list[Obj]]]:
    """``(image, objects)`` for every image of ``coco`` (a parsed COCO dict, or a
    :class:`~pseudolabel.core.coco_stream.CocoStream`, read image by image), objects with
    decodable non-empty masks.

    Objects without a usable mask are recorded in ``report`` (never silently left out).
    """
    names = category_names(coco)
    if isinstance(coco, CocoStream):
        groups = coco.by_image()
    else:
        known = {img["id"] for img in coco["images"]}
        counts = Counter({i: 0 for i in known})
        for ann in coco["annotations"]:
            if ann.get("image_id") not in known:
                report.skip("no_image", ann.get("id"))
                continue
            counts[ann["image_id"]] += 1
        groups = group_by_image(coco["images"], coco["annotations"], counts)
    for img, anns in groups:
        h, w = int(img["height"]), int(img["width"])
        objs = []
        for ann in anns:
            seg = ann.get("segmentation")
            if not seg:
                report.skip("no_mask", ann["id"])
                continue
            try:
                mask = decode_rle(segmentation_to_rle(seg, h, w)).astype(bool)
            except (InputError, ValueError, TypeError, KeyError):
                report.skip("bad_mask", ann["id"])
                continue
            if not mask.any():
                report.skip("empty_mask", ann["id"])
                continue
            label = names.get(ann.get("category_id"), str(ann.get("category_id")))
            objs.append(Obj(ann, mask, label, object_score(ann)))
        yield img, objs


def image_url(file_name: str, images_dir: str | os.PathLike | None, image_root: str | None) -> str:
    """The URL a labelling tool loads an image from.

    ``image_root`` given: ``image_root`` + ``file_name`` (a ``/`` is added between unless the
    root ends in ``=``, ``/`` or ``?``, as in Label Studio's ``/data/local-files/?d=``). Otherwise
    Label Studio's local-files URL of the image's absolute path (serve with
    ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT=/``).
    """
    if image_root is not None:
        sep = "" if image_root.endswith(("=", "/", "?")) else "/"
        return f"{image_root}{sep}{file_name}"
    base = Path(images_dir).resolve() if images_dir is not None else Path.cwd()
    return "/data/local-files/?d=" + str(base / file_name).lstrip("/")
