"""Training and inference data for SOLOv2: COCO JSON (RLE or polygons) → resized images + targets.

* :func:`load_dataset` reads a COCO file once (streamed), checks it, and keeps per image the
  compressed RLE of every usable instance; their ranked ``"alternatives"`` (for the MPS loss, five
  masks per instance from `sap select`) go to a :class:`~pseudolabel.core.spill.DiskList` and are
  read back when their image is drawn, so memory does not grow with them. Annotations
  with an empty mask or marked ``iscrowd`` are skipped and counted; images missing from disk
  are an :class:`InputError` (or skipped and counted with ``missing="skip"``).
* :class:`TrainDataset` resizes (short side drawn from ``min_sizes``, long side at most
  ``max_size``), flips, and returns the image with :class:`~segtrain.targets.InstanceTargets`
  (masks at stride 4, boxes and centres of mass in the input frame, under the target rules).
  Images, masks and boxes are mapped as detectron2's ``DatasetMapper`` maps them for AdelaiDet
  (PIL bilinear images, PIL nearest masks, its size and box arithmetic), so both engines see the
  same batch. Items are addressed by
  ``(index, seed)`` so that augmentation is a pure function of the sampler's stream, which
  makes resumed runs identical to uninterrupted ones (:mod:`segtrain.sampling` makes the stream).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pseudolabel.core.alternatives import SidecarReader, existing_sidecar
from pseudolabel.core.coco import check_categories, mps_alternatives
from pseudolabel.core.coco_stream import open_coco_stream
from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import load_image_rgb, why_not_a_file
from pseudolabel.core.rle import RLE, decode_rles, rle_area, rle_to_bbox_xywh, segmentation_to_rle
from pseudolabel.core.spill import DiskList

from .targets import InstanceTargets, rule_targets, stride4_masks


@dataclass
class CategoryMap:
    """Contiguous class index ↔ original COCO category id (sorted by id)."""

    ids: list[int]
    names: list[str]

    @classmethod
    def from_coco(cls, coco: dict[str, Any]) -> "CategoryMap":
        cats = sorted(coco.get("categories", []), key=lambda c: c["id"])
        return cls([int(c["id"]) for c in cats], [str(c.get("name", c["id"])) for c in cats])

    def index(self) -> dict[int, int]:
        """Original id → contiguous index."""
        return {cid: i for i, cid in enumerate(self.ids)}

    def to_dict(self) -> dict[str, list]:
        return {"ids": list(self.ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "CategoryMap":
        return cls([int(v) for v in d["ids"]], [str(v) for v in d["names"]])


def check_same_categories(train: CategoryMap, val: CategoryMap, train_name: str, val_name: str) -> None:
    """Raise :class:`InputError` unless both files have the same category ids.

    An id with different names in the two files is an error too.
    """
    a, b = dict(zip(train.ids, train.names)), dict(zip(val.ids, val.names))
    only_train = sorted(set(a) - set(b))
    only_val = sorted(set(b) - set(a))

    def show(ids: list[int], names: dict[int, str]) -> str:
        return ", ".join(f"{i} ({names[i]})" for i in ids[:5]) + (" ..." if len(ids) > 5 else "")

    if only_train:
        raise InputError(f"{train_name} has categories absent from {val_name}: {show(only_train, a)}")
    if only_val:
        raise InputError(f"{val_name} has categories absent from {train_name}: {show(only_val, b)}")
    renamed = [i for i in a if a[i] != b[i]]
    if renamed:
        i = renamed[0]
        raise InputError(f"category {i} is named {a[i]!r} in {train_name} but {b[i]!r} in {val_name}")


@dataclass
class ImageRecord:
    """One image and its usable instances (labels are contiguous indices)."""

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    labels: list[int] = field(default_factory=list)
    rles: list[RLE] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)  # the annotations' bbox, COCO XYWH
    alternatives: list[list[RLE]] = field(default_factory=list)  # per instance, held in memory, or
    alt_store: DiskList | None = None  # on disk (what load_dataset does): instance i's are alt_store[alt_ids[i]]
    alt_ids: list[int] = field(default_factory=list)  # -1: none

    def alternatives_of(self, i: int) -> list[RLE]:
        """Instance ``i``'s MPS alternatives in rank order from rank 2 (read from disk when spilled)."""
        if self.alt_store is not None:
            j = self.alt_ids[i]
            return self.alt_store[j] if j >= 0 else []
        return self.alternatives[i] if i < len(self.alternatives) else []

    @property
    def has_alternatives(self) -> bool:
        """Whether any instance carries alternatives."""
        return any(j >= 0 for j in self.alt_ids) if self.alt_store is not None else any(self.alternatives)


@dataclass
class DataStats:
    """What :func:`load_dataset` kept and skipped."""

    images: int = 0
    instances: int = 0
    images_missing: int = 0
    images_without_instances: int = 0
    empty_masks: int = 0
    crowd: int = 0
    without_mask: int = 0
    with_alternatives: int = 0
    without_bbox: int = 0

    def summary(self) -> str:
        parts = [f"{self.images} images", f"{self.instances} instances"]
        for name in ("images_missing", "images_without_instances", "empty_masks", "crowd", "without_mask"):
            v = getattr(self, name)
            if v:
                parts.append(f"{v} {name.replace('_', ' ')} skipped")
        if self.with_alternatives:
            parts.append(f"{self.with_alternatives} with alternatives")
        if self.without_bbox:
            parts.append(f"{self.without_bbox} without a usable bbox (their mask's box sizes them)")
        return ", ".join(parts)


def load_dataset(json_path: str | os.PathLike, images_dir: str | os.PathLike, *,
                 categories: CategoryMap | None = None, missing: str = "error",
                 keep_empty_images: bool = False, with_annotations: bool = True,
                 ) -> tuple[list[ImageRecord], CategoryMap, DataStats]:
    """Read a COCO file for training (or, with ``with_annotations=False``, just its images).

    Args:
        json_path: COCO JSON; masks as RLE (compressed or not) or polygons.
        images_dir: folder the ``file_name`` entries are relative to.
        categories: the category map to use (default: the file's own).
        missing: ``"error"`` (an image file missing is an :class:`InputError`) or ``"skip"``.
        keep_empty_images: keep images without a usable instance (as negatives).

    Raises:
        InputError: bad JSON, unknown categories, malformed masks, missing images.
    """
    if missing not in ("error", "skip"):
        raise ValueError("missing must be 'error' or 'skip'")
    json_path, images_dir = Path(json_path), Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist")
    # streamed: the records below are what training holds, never the whole parsed file besides them
    coco = open_coco_stream(json_path, require_annotations=with_annotations)
    check_categories({"categories": coco["categories"], "annotations": coco.annotations()}, str(json_path))
    # the selector's alternatives, from their sidecar (sap select's files), read alongside
    side = existing_sidecar(coco, json_path) if with_annotations else None
    alternatives = SidecarReader(side) if side is not None else None
    cats = categories or CategoryMap.from_coco(coco)
    index = cats.index()
    stats = DataStats()
    store = DiskList()  # the alternatives: many masks per instance, read again only when drawn (docs/scale.md)
    records: dict[int, ImageRecord] = {}
    absent: list[str] = []
    for im in coco["images"]:
        path = images_dir / im["file_name"]
        if not path.is_file():
            absent.append(f"{im['file_name']}, which {why_not_a_file(path)}")
            continue
        records[im["id"]] = ImageRecord(int(im["id"]), im["file_name"], path, int(im["width"]), int(im["height"]),
                                        alt_store=store)
    if absent:
        if missing == "error":
            raise InputError(f"{len(absent)} of {len(coco['images'])} images of {json_path.name} are missing from "
                             f"{images_dir} (first: {absent[0]}); pass --skip-missing-images to train without them")
        stats.images_missing = len(absent)
    for ann in coco.annotations() if with_annotations else []:
        if alternatives is not None:
            ann = alternatives.attach(ann)
        rec = records.get(ann["image_id"])
        if rec is not None:
            _add_instance(rec, ann, index, store, stats, json_path)
    out = []
    for rec in records.values():
        if with_annotations and not rec.rles:
            stats.images_without_instances += 1
            if not keep_empty_images:
                continue
        out.append(rec)
    stats.images = len(out)
    stats.instances = sum(len(r.rles) for r in out)
    if keep_empty_images:
        stats.images_without_instances = 0
    if not out:
        what = "image with a usable instance mask" if with_annotations else "image"
        raise InputError(f"{json_path.name} has no {what} in {images_dir}")
    return out, cats, stats


def _add_instance(rec: ImageRecord, ann: dict[str, Any], index: dict[int, int], store: DiskList,
                  stats: DataStats, json_path: Path) -> None:
    """Append ``ann`` to ``rec`` (its alternatives to ``store``), or count why it is skipped."""
    if ann.get("iscrowd", 0):
        stats.crowd += 1
        return
    if not ann.get("segmentation"):
        stats.without_mask += 1
        return
    try:
        rle = segmentation_to_rle(ann["segmentation"], rec.height, rec.width)
        if rle_area(rle) == 0:
            stats.empty_masks += 1
            return
        if ann["category_id"] not in index:
            raise InputError(f"category {ann['category_id']} is unknown to the trained model")
        alts = [segmentation_to_rle(a, rec.height, rec.width) for a in mps_alternatives(ann)]
    except InputError as e:
        raise InputError(f"{json_path}: annotation {ann.get('id')} of image {ann['image_id']}: {e}") from None
    stats.with_alternatives += bool(alts)
    box = annotation_box(ann)
    if box is None:
        stats.without_bbox += 1
        box = rle_to_bbox_xywh(rle)
    rec.labels.append(index[ann["category_id"]])
    rec.rles.append(rle)
    rec.boxes.append(box)
    rec.alt_ids.append(store.append(alts) if alts else -1)


def annotation_box(ann: dict[str, Any]) -> list[float] | None:
    """The annotation's COCO ``bbox`` ``[x, y, w, h]`` as floats, ``None`` when absent or malformed."""
    box = ann.get("bbox")
    ok = isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
    return [float(v) for v in box] if ok and np.isfinite(box).all() and min(box[2:]) >= 0 else None


def boxes_to_input_frame(boxes_xywh: np.ndarray, original_hw: tuple[int, int], hw: tuple[int, int],
                         flip: bool) -> np.ndarray:
    """COCO ``XYWH`` boxes of the original image → ``N×4`` float32 XYXY in the resized (and maybe
    flipped) input frame, clipped to it: detectron2's arithmetic (``XYWH → XYXY`` in float32,
    then scaled and flipped in float64), so both engines size objects with the same boxes."""
    b = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4)
    xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float64)
    (h0, w0), (h, w) = original_hw, hw
    xyxy[:, 0::2] *= w * 1.0 / w0
    xyxy[:, 1::2] *= h * 1.0 / h0
    if flip:
        xyxy[:, 0::2] = w - xyxy[:, 2::-2]
    xyxy = np.minimum(xyxy.clip(min=0), [w, h, w, h])
    return xyxy.astype(np.float32)


def parse_min_sizes(spec: str | int | list | tuple) -> tuple[int, ...]:
    """``"640-800"`` → 640, 672, …, 800 (step 32); ``"640,704"`` → (640, 704); ``320`` → (320,)."""
    if isinstance(spec, (list, tuple)):
        return tuple(int(v) for v in spec)
    s = str(spec).strip()
    try:
        if "-" in s:
            lo, hi = (int(v) for v in s.split("-", 1))
            if lo > hi:
                raise ValueError
            return tuple(range(lo, hi + 1, 32)) if (hi - lo) % 32 == 0 else tuple(range(lo, hi + 1, 32)) + (hi,)
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise InputError(f"--min-size {spec!r} is not a size, a list like 640,672 or a range like 640-800") from None


def resized_hw(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Size after resizing the short side to ``short`` with the long side capped at ``max_size``
    (detectron2's ``ResizeShortestEdge`` arithmetic, so both engines resize to the same size)."""
    scale = short * 1.0 / min(h, w)
    newh, neww = (float(short), scale * w) if h < w else (scale * h, float(short))
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``H0×W0×3`` uint8 RGB → ``H×W×3``: PIL bilinear (antialiased when shrinking), as
    detectron2's ``ResizeTransform`` and so AdelaiDet resize images."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR))


def masks_to_input_frame(masks: np.ndarray, hw: tuple[int, int], flip: bool) -> np.ndarray:
    """``N×H0×W0`` 0/1 masks → ``N×H×W`` uint8 0/1 resized and maybe flipped: PIL nearest
    neighbour (pixel centres), as detectron2's ``ResizeTransform.apply_segmentation`` resizes
    RLE masks for AdelaiDet."""
    from PIL import Image

    h, w = hw
    out = np.empty((len(masks), h, w), dtype=np.uint8)
    for i, m in enumerate(masks):
        r = np.asarray(Image.fromarray(np.ascontiguousarray(m, dtype=np.uint8)).resize((w, h), Image.NEAREST))
        out[i] = r[:, ::-1] if flip else r
    return out


@dataclass
class Sample:
    """One network input: ``image`` ``3×H×W`` uint8 RGB (resized), its targets (training), the
    image id and the original ``(H0, W0)``."""

    image: Tensor
    image_id: int
    original_hw: tuple[int, int]
    targets: InstanceTargets | None = None


@dataclass
class FailedSample:
    """An image that could not be read (the run goes on without it)."""

    image_id: int
    file_name: str
    message: str


def _load(rec: ImageRecord) -> np.ndarray:
    return load_image_rgb(rec.path, (rec.width, rec.height) if rec.width else None)


def draw_augmentation(seed: int, min_sizes: tuple[int, ...], flip_prob: float) -> tuple[int, bool]:
    """The short side and the flip of a training item with augmentation seed ``seed``."""
    rng = np.random.default_rng(seed)
    short = int(min_sizes[rng.integers(len(min_sizes))])
    return short, bool(rng.random() < flip_prob)


class TrainDataset(Dataset):
    """Training samples addressed by ``(index, seed)`` (see the module docstring).

    Args:
        records: from :func:`load_dataset`.
        min_sizes: short-side sizes drawn uniformly per sample.
        max_size: cap on the long side.
        flip_prob: probability of a horizontal flip.
        alt_ranks: 1-based ranks of alternatives to load for MPS (rank r ↦ ``alternatives[r-2]``);
            empty to load none.
        rules: the target rules (``SOLOv2Config.data_rules()``; default AdelaiDet's).
    """

    def __init__(self, records: list[ImageRecord], min_sizes: tuple[int, ...], max_size: int,
                 flip_prob: float = 0.5, alt_ranks: tuple[int, ...] = (), rules: dict[str, str] | None = None) -> None:
        self.rules = rules or {"mask_target": "official", "centre": "official", "scale_box": "official"}
        self.records = records
        self.min_sizes = tuple(min_sizes)
        self.max_size = max_size
        self.flip_prob = flip_prob
        self.alt_cols = [r - 2 for r in alt_ranks if r >= 2]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]) -> Sample | FailedSample:
        index, seed = item
        rec = self.records[index]
        short, flip = draw_augmentation(seed, self.min_sizes, self.flip_prob)
        try:
            img = _load(rec)
        except ImageError as e:
            return FailedSample(rec.image_id, rec.file_name, str(e))
        h0, w0 = img.shape[:2]
        h, w = resized_hw(h0, w0, short, self.max_size)
        img = resize_image(img, (h, w))
        if flip:
            img = img[:, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        h4, w4 = -(-h // 4), -(-w // 4)
        if not rec.rles:
            return Sample(image, rec.image_id, (h0, w0), InstanceTargets.empty(h4, w4))
        full = torch.from_numpy(masks_to_input_frame(decode_rles(rec.rles), (h, w), flip))
        alive = full.flatten(1).any(dim=1)  # a tiny instance can vanish when shrunk
        boxes = torch.from_numpy(boxes_to_input_frame(np.array(rec.boxes), (h0, w0), (h, w), flip))
        targets = rule_targets(full, torch.tensor(rec.labels, dtype=torch.long), boxes, self.rules)
        if self.alt_cols and rec.has_alternatives:
            keep = alive.nonzero().flatten().tolist()
            r = len(self.alt_cols)
            h4, w4 = targets.masks.shape[-2:]
            alt = np.zeros((len(keep), r, h4, w4), dtype=np.uint8)
            valid = np.zeros((len(keep), r), dtype=bool)
            for row, i in enumerate(keep):
                alts_i = rec.alternatives_of(i)
                have = [(j, alts_i[c]) for j, c in enumerate(self.alt_cols) if c < len(alts_i)]
                if have:
                    m = stride4_masks(torch.from_numpy(masks_to_input_frame(
                        decode_rles([a for _, a in have]), (h, w), flip)), self.rules["mask_target"]).numpy()
                    for (j, _), mj in zip(have, m):
                        alt[row, j] = mj
                        valid[row, j] = mj.any()
            targets.alt_masks = torch.from_numpy(alt)
            targets.alt_valid = torch.from_numpy(valid)
        return Sample(image, rec.image_id, (h0, w0), targets)


class InferenceDataset(Dataset):
    """Images resized to the test short side (no flip), addressed by plain index."""

    def __init__(self, records: list[ImageRecord], min_size: int, max_size: int) -> None:
        self.records, self.min_size, self.max_size = records, min_size, max_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample | FailedSample:
        rec = self.records[index]
        try:
            img = _load(rec)
        except ImageError as e:
            return FailedSample(rec.image_id, rec.file_name, str(e))
        h0, w0 = img.shape[:2]
        h, w = resized_hw(h0, w0, self.min_size, self.max_size)
        img = resize_image(img, (h, w))
        return Sample(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), rec.image_id, (h0, w0))


def collate(items: list[Sample | FailedSample]) -> list[Sample | FailedSample]:
    """Keep the list as it is (images have different sizes; the model pads them)."""
    return items


def batch_warning(batch: int, n_images: int) -> str | None:
    """The warning for a ``--batch`` larger than the training set (legal: every step repeats
    images, but surely unintended), or ``None``."""
    if batch > n_images:
        return (f"--batch {batch} is larger than the {n_images} training images: every step repeats each image "
                f"about {batch // max(n_images, 1)} times; a batch of at most {n_images} is what you want")
    return None
