"""Training and inference data for SOLOv2: COCO JSON (RLE or polygons) → resized images + targets.

* :func:`load_dataset` reads a COCO file once, checks it, and keeps per image the compressed RLE
  of every usable instance (and its ranked ``"alternatives"``, for the MPS loss). Annotations
  with an empty mask or marked ``iscrowd`` are skipped and counted; images missing from disk
  are an :class:`InputError` (or skipped and counted with ``missing="skip"``).
* :class:`TrainDataset` resizes (short side drawn from ``min_sizes``, long side at most
  ``max_size``), flips, and returns the image with :class:`~segtrain.targets.InstanceTargets`
  (masks at stride 4, boxes and centres of mass in the input frame). Items are addressed by
  ``(index, seed)`` so that augmentation is a pure function of the sampler's stream, which
  makes resumed runs identical to uninterrupted ones (:mod:`segtrain.sampling` makes the stream).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pseudolabel.core.alternatives import attach_alternatives
from pseudolabel.core.coco import check_categories, load_coco_json, mps_alternatives
from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.rle import RLE, decode_rles, rle_area, segmentation_to_rle

from .targets import InstanceTargets, downsample_stride4, targets_from_masks


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
    alternatives: list[list[RLE]] = field(default_factory=list)


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

    def summary(self) -> str:
        parts = [f"{self.images} images", f"{self.instances} instances"]
        for name in ("images_missing", "images_without_instances", "empty_masks", "crowd", "without_mask"):
            v = getattr(self, name)
            if v:
                parts.append(f"{v} {name.replace('_', ' ')} skipped")
        if self.with_alternatives:
            parts.append(f"{self.with_alternatives} with alternatives")
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
    coco = load_coco_json(json_path, require_annotations=with_annotations)
    check_categories(coco, str(json_path))  # a validation file's too
    if with_annotations:  # the selector's alternatives, from their sidecar (sap select's files)
        attach_alternatives(coco, json_path)
    cats = categories or CategoryMap.from_coco(coco)
    index = cats.index()
    stats = DataStats()
    records: dict[int, ImageRecord] = {}
    absent: list[str] = []
    for im in coco["images"]:
        path = images_dir / im["file_name"]
        if not path.is_file():
            absent.append(im["file_name"])
            continue
        records[im["id"]] = ImageRecord(int(im["id"]), im["file_name"], path, int(im["width"]), int(im["height"]))
    if absent:
        if missing == "error":
            raise InputError(f"{len(absent)} of {len(coco['images'])} images of {json_path.name} are missing from "
                             f"{images_dir} (first: {absent[0]}); pass --skip-missing-images to train without them")
        stats.images_missing = len(absent)
    for ann in coco["annotations"] if with_annotations else []:
        rec = records.get(ann["image_id"])
        if rec is None:
            continue
        if ann.get("iscrowd", 0):
            stats.crowd += 1
            continue
        if not ann.get("segmentation"):
            stats.without_mask += 1
            continue
        try:
            rle = segmentation_to_rle(ann["segmentation"], rec.height, rec.width)
            if rle_area(rle) == 0:
                stats.empty_masks += 1
                continue
            if ann["category_id"] not in index:
                raise InputError(f"category {ann['category_id']} is unknown to the trained model")
            alts = [segmentation_to_rle(a, rec.height, rec.width) for a in mps_alternatives(ann)]
        except InputError as e:
            raise InputError(f"{json_path}: annotation {ann.get('id')} of image {ann['image_id']}: {e}") from None
        stats.with_alternatives += bool(alts)
        rec.labels.append(index[ann["category_id"]])
        rec.rles.append(rle)
        rec.alternatives.append(alts)
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
    """Size after resizing the short side to ``short`` with the long side capped at ``max_size``."""
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def masks_to_input_frame(masks: np.ndarray, hw: tuple[int, int], flip: bool) -> np.ndarray:
    """``N×H0×W0`` 0/1 masks → ``N×H×W`` uint8 0/1 resized (bilinear, ≥ 0.5) and maybe flipped."""
    h, w = hw
    out = np.empty((len(masks), h, w), dtype=np.uint8)
    for i, m in enumerate(masks):
        r = cv2.resize(m * np.uint8(255), (w, h), interpolation=cv2.INTER_LINEAR) >= 128
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
    """

    def __init__(self, records: list[ImageRecord], min_sizes: tuple[int, ...], max_size: int,
                 flip_prob: float = 0.5, alt_ranks: tuple[int, ...] = ()) -> None:
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
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if flip:
            img = img[:, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        h4, w4 = -(-h // 4), -(-w // 4)
        if not rec.rles:
            return Sample(image, rec.image_id, (h0, w0), InstanceTargets.empty(h4, w4))
        full = torch.from_numpy(masks_to_input_frame(decode_rles(rec.rles), (h, w), flip))
        alive = full.flatten(1).any(dim=1)  # a tiny instance can vanish when shrunk
        targets = targets_from_masks(full, torch.tensor(rec.labels, dtype=torch.long))
        if self.alt_cols and any(rec.alternatives):
            keep = alive.nonzero().flatten().tolist()
            r = len(self.alt_cols)
            alt = np.zeros((len(keep), r, h4, w4), dtype=np.uint8)
            valid = np.zeros((len(keep), r), dtype=bool)
            for row, i in enumerate(keep):
                alts_i = rec.alternatives[i]
                have = [(j, alts_i[c]) for j, c in enumerate(self.alt_cols) if c < len(alts_i)]
                if have:
                    m = downsample_stride4(torch.from_numpy(
                        masks_to_input_frame(decode_rles([a for _, a in have]), (h, w), flip))).numpy()
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
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        return Sample(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), rec.image_id, (h0, w0))


def collate(items: list[Sample | FailedSample]) -> list[Sample | FailedSample]:
    """Keep the list as it is (images have different sizes; the model pads them)."""
    return items
