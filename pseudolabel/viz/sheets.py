"""Pictures of whole files: overlays, side-by-side panels, and a contact sheet of disagreements.

* :func:`render_overlays` draws every image of a COCO file (``sap viz overlay``);
* :func:`render_side_by_side` shows, for the same image, the SAM proposals of each point, the
  selected mask, the refined mask and the ground truth (``sap viz compare``); with
  ``ann_ids`` it shows one point in detail, one panel per proposal;
* :func:`render_disagreement_sheet` puts the N images where two COCO files disagree most on one
  contact sheet (``sap viz disagree``).

Conventions as in :mod:`.draw`. Images that cannot be read are recorded; the others go on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.progress import progress
from pseudolabel.core.rle import decode_rle, mask_to_box_xyxy
from pseudolabel.evaluate import image_disagreement

from .draw import (DEFAULT_ALPHA, Instance, draw_instances, grid, hstack_panels, instance_box, instance_color,
                   instances_from_annotations, titled, write_png)


# ---- whole files ---------------------------------------------------------------------------


@dataclass
class VizReport:
    """What a rendering call wrote and which images failed (image id → reason)."""

    written: list[Path] = field(default_factory=list)
    failed: dict[Any, str] = field(default_factory=dict)


def _image_index(*cocos: Mapping[str, Any] | None) -> dict[Any, dict]:
    """Image id → image entry, the first file that has the image wins."""
    out: dict[Any, dict] = {}
    for c in cocos:
        if c:
            for im in c["images"]:
                out.setdefault(im["id"], im)
    return out


def _anns_by_image(coco: Mapping[str, Any] | None) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    if coco:
        for a in coco.get("annotations", []):
            out.setdefault(a["image_id"], []).append(a)
    return out


def _names(*cocos: Mapping[str, Any] | None) -> dict[Any, str]:
    out: dict[Any, str] = {}
    for c in cocos:
        if c:
            for cat in c.get("categories", []):
                out.setdefault(cat["id"], str(cat.get("name", cat["id"])))
    return out


def _pick_images(index: Mapping[Any, dict], image_ids: Sequence[Any] | None,
                 limit: int | None) -> list[dict]:
    if image_ids:
        missing = [i for i in image_ids if i not in index]
        if missing:
            raise InputError(f"image id(s) {', '.join(map(str, missing))} are in none of the given files")
        chosen = [index[i] for i in image_ids]
    else:
        chosen = list(index.values())
    return chosen[:limit] if limit else chosen


def _out_names(images: Sequence[Mapping[str, Any]]) -> dict[Any, str]:
    """Image id → output file stem: the image's stem, with the id added where stems repeat."""
    stems = [Path(str(im["file_name"])).stem for im in images]
    return {im["id"]: (s if stems.count(s) == 1 else f"{s}_{im['id']}") for im, s in zip(images, stems)}


def _load(images_dir: Path, im: Mapping[str, Any]) -> np.ndarray:
    return load_image_rgb(Path(images_dir) / str(im["file_name"]), (int(im["width"]), int(im["height"])))


def render_overlays(coco: Mapping[str, Any], images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    image_ids: Sequence[Any] | None = None, limit: int | None = None,
                    alpha: float = DEFAULT_ALPHA, labels: bool = True) -> VizReport:
    """Write ``OUT_DIR/<image stem>.png`` for each image of ``coco``: the image with its
    annotations drawn by :func:`draw_instances` (same size as the image).

    Images that cannot be read or drawn are recorded in the report; the others go on.
    """
    index = _image_index(coco)
    chosen = _pick_images(index, image_ids, limit)
    by_image = _anns_by_image(coco)
    names = _names(coco)
    stems = _out_names(chosen)
    report = VizReport()
    for im in progress(chosen, desc="viz", total=len(chosen)):
        try:
            image = _load(Path(images_dir), im)
            h, w = image.shape[:2]
            inst = instances_from_annotations(by_image.get(im["id"], []), h, w, names, labels=labels)
            report.written.append(write_png(Path(out_dir) / f"{stems[im['id']]}.png",
                                            draw_instances(image, inst, alpha=alpha)))
        except (ImageError, InputError) as e:
            report.failed[im["id"]] = str(e)
    return report


def _bag_instances(bags: Iterable[Any]) -> list[Instance]:
    """All proposals of the given bags as outlines in their point's colour, with the point."""
    out = []
    for bag in bags:
        color = instance_color(bag.ann_id)
        for k, rle in enumerate(bag.rles):
            out.append(Instance(mask=decode_rle(rle), color=color, fill=False,
                                point=tuple(bag.point) if k == 0 else None))
    return out


def _crop_box(boxes: Sequence[np.ndarray], h: int, w: int, grow: float = 0.15) -> tuple[slice, slice]:
    b = np.asarray([x for x in boxes if x is not None and (x[2] > x[0]) and (x[3] > x[1])], np.float64)
    if b.size == 0:
        return slice(0, h), slice(0, w)
    x1, y1 = b[:, 0].min(), b[:, 1].min()
    x2, y2 = b[:, 2].max(), b[:, 3].max()
    mx, my = grow * (x2 - x1) + 8, grow * (y2 - y1) + 8
    return (slice(int(max(0, y1 - my)), int(min(h, math.ceil(y2 + my)))),
            slice(int(max(0, x1 - mx)), int(min(w, math.ceil(x2 + mx)))))


def render_side_by_side(images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        gt: Mapping[str, Any] | None = None,
                        selected: Mapping[str, Any] | None = None,
                        refined: Mapping[str, Any] | None = None,
                        bags: Mapping[Any, Sequence[Any]] | None = None,
                        image_ids: Sequence[Any] | None = None,
                        ann_ids: Sequence[Any] | None = None,
                        limit: int | None = None, panel_width: int = 640,
                        alpha: float = DEFAULT_ALPHA) -> VizReport:
    """For the same image: SAM proposals, selected mask, refined mask, ground truth.

    Panels appear for the inputs given (at least one COCO file is needed for the image list):
    ``proposals`` (every proposal of every point of the image as an outline in its point's
    colour; ``bags`` maps image id → list of :class:`pseudolabel.core.bags.Bag`, as
    :func:`pseudolabel.core.cache.load_bags` returns), ``selected``,
    ``refined``, ``GT``. One PNG per image, ``OUT_DIR/<image stem>.png``.

    With ``ann_ids``, one PNG per annotation instead, ``OUT_DIR/ann_<id>.png``, cropped around
    the object: one panel per proposal of its bag (titled with prompt kind, SAM rank and
    predicted IoU), then its selected, refined and ground-truth masks.
    """
    inputs = _CompareInputs.build(gt=gt, selected=selected, refined=refined, bags=bags)
    if ann_ids:
        return _render_annotations(inputs, Path(images_dir), Path(out_dir), ann_ids, panel_width, alpha)
    return _render_images(inputs, Path(images_dir), Path(out_dir), image_ids, limit, panel_width, alpha)


@dataclass
class _CompareInputs:
    """What :func:`render_side_by_side` draws, indexed once: the COCO files by panel title
    (``selected``, ``refined``, ``GT``, in that order) and the proposal bags by image id."""

    files: dict[str, Mapping[str, Any]]
    bags_by_image: dict[Any, list[Any]]

    def __post_init__(self) -> None:
        self.bag_of = {b.ann_id: b for v in self.bags_by_image.values() for b in v}
        self.index = _image_index(*self.files.values())
        self.names = _names(*self.files.values())
        self.by_image = {k: _anns_by_image(v) for k, v in self.files.items()}

    @classmethod
    def build(cls, *, gt: Mapping[str, Any] | None, selected: Mapping[str, Any] | None,
              refined: Mapping[str, Any] | None, bags: Mapping[Any, Sequence[Any]] | None) -> "_CompareInputs":
        files = {"selected": selected, "refined": refined, "GT": gt}
        files = {k: v for k, v in files.items() if v is not None}
        if not files:
            raise InputError("give at least one COCO file (selected, refined or ground truth) to draw")
        return cls(files, {k: list(v) for k, v in (bags or {}).items()})


def _render_images(inputs: _CompareInputs, images_dir: Path, out_dir: Path, image_ids: Sequence[Any] | None,
                   limit: int | None, panel_width: int, alpha: float) -> VizReport:
    """One PNG per image: its proposals (when bags are given), then one panel per file."""
    chosen = _pick_images(inputs.index, image_ids, limit)
    stems = _out_names(chosen)
    report = VizReport()
    for im in progress(chosen, desc="viz", total=len(chosen)):
        try:
            image = _load(images_dir, im)
            h, w = image.shape[:2]
            panels: list[tuple[str, np.ndarray]] = []
            if inputs.bags_by_image:
                img_bags = inputs.bags_by_image.get(im["id"], [])
                n = sum(len(b) for b in img_bags)
                panels.append((f"proposals ({n} for {len(img_bags)} points)",
                               draw_instances(image, _bag_instances(img_bags), alpha=alpha)))
            for key in inputs.files:
                anns = inputs.by_image[key].get(im["id"], [])
                inst = instances_from_annotations(anns, h, w, inputs.names)
                panels.append((f"{key} ({len(anns)})", draw_instances(image, inst, alpha=alpha)))
            report.written.append(write_png(out_dir / f"{stems[im['id']]}.png",
                                            hstack_panels(panels, panel_width=min(panel_width, w))))
        except (ImageError, InputError) as e:
            report.failed[im["id"]] = str(e)
    return report


def _render_annotations(inputs: _CompareInputs, images_dir: Path, out_dir: Path, ann_ids: Sequence[Any],
                        panel_width: int, alpha: float) -> VizReport:
    """One PNG per annotation, ``ann_<id>.png``, cropped around every box of its panels."""
    by_ann = {k: {a["id"]: a for a in v.get("annotations", [])} for k, v in inputs.files.items()}
    report = VizReport()
    for ann_id in progress(list(ann_ids), desc="viz", total=len(ann_ids), unit="ann"):
        image_id = next((m[ann_id]["image_id"] for m in by_ann.values() if ann_id in m),
                        getattr(inputs.bag_of.get(ann_id), "image_id", None))
        if image_id is None or image_id not in inputs.index:
            raise InputError(f"annotation id {ann_id} is in none of the given files")
        try:
            image = _load(images_dir, inputs.index[image_id])
            h, w = image.shape[:2]
            panels, boxes = _annotation_panels(inputs, by_ann, ann_id, h, w)
            rows, cols = _crop_box(boxes, h, w)
            crops = [(title, draw_instances(image, inst, alpha=alpha)[rows, cols]) for title, inst in panels]
            pw = max(160, min(panel_width, 2 * crops[0][1].shape[1]))
            report.written.append(write_png(out_dir / f"ann_{ann_id}.png", hstack_panels(crops, panel_width=pw)))
        except (ImageError, InputError) as e:
            report.failed[ann_id] = str(e)
    return report


def _annotation_panels(inputs: _CompareInputs, by_ann: Mapping[str, Mapping[Any, dict]], ann_id: Any,
                       h: int, w: int) -> tuple[list[tuple[str, list[Instance]]], list[np.ndarray]]:
    """The titled panels of one annotation on an ``h`` × ``w`` image (one per proposal of its
    bag, titled with prompt kind, SAM rank and predicted IoU; then one per file) and the XYXY
    boxes of everything they show."""
    panels: list[tuple[str, list[Instance]]] = []
    boxes: list[np.ndarray] = []
    bag = inputs.bag_of.get(ann_id)
    if bag is not None:
        color = instance_color(ann_id)
        for k, rle in enumerate(bag.rles):
            m = decode_rle(rle)
            boxes.append(mask_to_box_xyxy(m))
            title = f"{bag.kinds[k]} #{int(bag.ranks[k])} iou {float(bag.scores[k]):.2f}"
            panels.append((title, [Instance(mask=m, color=color, point=tuple(bag.point))]))
    for key in inputs.files:
        a = by_ann[key].get(ann_id)
        inst = instances_from_annotations([a], h, w, inputs.names) if a else []
        boxes += [instance_box(i) for i in inst]
        panels.append((key if a else f"{key}: none", inst))
    return panels, boxes


def render_disagreement_sheet(a: Mapping[str, Any], b: Mapping[str, Any],
                              images_dir: str | os.PathLike, out_path: str | os.PathLike,
                              n: int = 12, names: tuple[str, str] = ("A", "B"), cols: int = 2,
                              tile_width: int = 800, alpha: float = DEFAULT_ALPHA
                              ) -> tuple[Path, list[dict[str, Any]], VizReport]:
    """Contact sheet of the ``n`` images where ``a`` and ``b`` disagree most.

    Disagreement is the per-image mean mask IoU between annotations of the same id
    (:func:`pseudolabel.evaluate.image_disagreement`: a missing counterpart counts 0). Each
    tile shows ``a`` and ``b`` side by side, titled with the image and its mean IoU; tiles run
    from the lowest IoU, ``cols`` per row.

    Returns:
        ``(out_path, rows, report)``: the sheet, the rows drawn (``image_id``, ``file_name``,
        ``mean_iou``, ``n``), and the images that could not be drawn (skipped, the next one
        takes their place).
    """
    rows = image_disagreement(dict(a), dict(b))
    index = _image_index(a, b)
    cat_names = _names(a, b)
    by_a, by_b = _anns_by_image(a), _anns_by_image(b)
    report = VizReport()
    tiles: list[np.ndarray] = []
    drawn: list[dict[str, Any]] = []
    for r in rows:
        if len(tiles) >= n:
            break
        im = index[r["image_id"]]
        try:
            image = _load(Path(images_dir), im)
            h, w = image.shape[:2]
            pa = draw_instances(image, instances_from_annotations(by_a.get(im["id"], []), h, w, cat_names), alpha)
            pb = draw_instances(image, instances_from_annotations(by_b.get(im["id"], []), h, w, cat_names), alpha)
        except (ImageError, InputError) as e:
            report.failed[r["image_id"]] = str(e)
            continue
        pair = hstack_panels([(names[0], pa), (names[1], pb)], panel_width=max(64, tile_width // 2 - 2))
        tiles.append(titled(pair, f"{im['file_name']}  mean IoU {r['mean_iou']:.2f}  ({r['n']} objects)"))
        drawn.append({**r, "file_name": im["file_name"]})
    if not tiles:
        raise InputError("no image of the two files could be drawn")
    path = write_png(out_path, grid(tiles, cols))
    report.written.append(path)
    return path, drawn, report
