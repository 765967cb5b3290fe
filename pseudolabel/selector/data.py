"""Images and proposal bags as the selector sees them: resized, maybe flipped, normalised.

Resizing keeps the aspect ratio and fits the image into ``max_size × min_size`` (mmdetection's
``Resize(img_scale=(1333, 800), keep_ratio=True)``); boxes and points are scaled alike and all
geometry runs in that frame. Batches are padded to a multiple of 32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pseudolabel.core.bag_sources import BagStore, MemoryBagStore
from pseudolabel.core.bags import Bag
from pseudolabel.core.errors import ImageError
from pseudolabel.core.images import load_image_rgb
from pseudolabel.core.tiled import open_large_image
from pseudolabel.core.windows import Window, window_pixels
from .crops import CropRule, boxes_in_tile, selection_tiles, training_tiles

MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB, 0..255
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
PAD_DIVISOR = 32


def resize_scale(width: int, height: int, max_size: int = 1333, min_size: int = 800) -> float:
    """Scale that fits ``width × height`` into ``max_size`` (long side) × ``min_size`` (short)."""
    long_side, short_side = max(width, height), min(width, height)
    return min(max_size / long_side, min_size / short_side)


@dataclass
class Sample:
    """One image with its bags, in the network frame.

    Attributes:
        image_id: COCO image id.
        image: ``3×h×w`` float32 normalised tensor (None when the image failed).
        hw: ``(h, w)`` of the resized image (before padding).
        scale: ``(sx, sy)`` from original to network pixels.
        flipped: horizontally flipped.
        ann_ids: the P points' annotation ids.
        points: ``P×2`` points ``(x, y)``.
        labels: ``P`` contiguous class indices.
        boxes: P arrays ``K_i×4`` XYXY, the proposals of each point.
        error: why the image could not be read, else None.
        true_centres: ``P×2`` centres of the points' ``true_bbox`` (official SAPNet files), NaN
            where the bag has none; scaled and flipped like ``points``.
    """

    image_id: int
    image: torch.Tensor | None
    hw: tuple[int, int]
    scale: tuple[float, float]
    flipped: bool
    ann_ids: list[int]
    points: np.ndarray
    labels: np.ndarray
    boxes: list[np.ndarray] = field(default_factory=list)
    error: str | None = None
    true_centres: np.ndarray | None = None


@dataclass
class Batch:
    """Readable samples padded into one tensor ``B×3×H×W``, and the samples whose image failed."""

    images: torch.Tensor
    samples: list[Sample]
    failed: list[Sample] = field(default_factory=list)

    @property
    def image_hw(self) -> list[tuple[int, int]]:
        """The padded input size ``(H, W)``, once per sample."""
        return [(int(self.images.shape[-2]), int(self.images.shape[-1]))] * len(self.samples)


class BagDataset(Dataset):
    """Images that have at least one non-empty bag, with those bags.

    The bags are read per image from a :class:`~pseudolabel.core.bag_sources.BagStore` in
    ``__getitem__`` (in the data-loading worker), so the dataset itself holds only the image list.

    Args:
        images: COCO ``images`` entries (``id``, ``file_name``, ``width``, ``height``).
        bags: a bag store, or bags by image id (empty bags are ignored).
        images_dir: the folder of the image files.
        cat_index: category id → contiguous class index.
        max_size, min_size: the resize target (1333 × 800 in SAPNet).
        flip_prob: horizontal flip probability (0.5 in training, 0 for selection).
        seed: with the epoch and image id, decides the flips.
    """

    def __init__(self, images: list[dict[str, Any]], bags: BagStore | dict[int, list[Bag]],
                 images_dir: str | os.PathLike, cat_index: dict[int, int], max_size: int = 1333,
                 min_size: int = 800, flip_prob: float = 0.0, seed: int = 0) -> None:
        self.store = bags if isinstance(bags, BagStore) else MemoryBagStore(bags)
        have = set(self.store.image_ids())
        self.images = [{k: img[k] for k in ("id", "file_name", "width", "height")}
                       for img in images if img["id"] in have]
        self.images_dir = Path(images_dir)
        self.cat_index = cat_index
        self.max_size, self.min_size = max_size, min_size
        self.flip_prob = flip_prob
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        img = self.images[i]
        return self.make_sample(img, self.store.bags(int(img["id"])))

    def make_sample(self, img: dict[str, Any], bags: list[Bag], tile: Window | None = None,
                    tile_index: int = 0) -> Sample:
        """The sample of an image's ``bags``, whole or (``tile``) its crop, in the network frame."""
        w0, h0 = int(img["width"]), int(img["height"])
        origin = np.zeros(2)
        if tile is not None:
            origin = np.array(tile.origin, dtype=np.float64)
            h0, w0 = tile.hw
        s = resize_scale(w0, h0, self.max_size, self.min_size)
        w, h = int(w0 * s + 0.5), int(h0 * s + 0.5)
        sx, sy = w / w0, h / h0
        key = [self.seed, self.epoch, int(img["id"])] + ([tile_index] if tile is not None else [])
        rng = np.random.default_rng(key)
        flipped = bool(self.flip_prob > 0 and rng.random() < self.flip_prob)
        points = (np.array([b.point for b in bags], dtype=np.float64).reshape(-1, 2) - origin) * [sx, sy]
        centres = (np.array([(b.true_box[:2] + b.true_box[2:]) / 2 if b.true_box is not None else (np.nan, np.nan)
                             for b in bags], dtype=np.float64).reshape(-1, 2) - origin) * [sx, sy]
        boxes = [(b.boxes if tile is None else boxes_in_tile(b.boxes, tile)) * [sx, sy, sx, sy] for b in bags]
        if flipped:
            points[:, 0] = w - points[:, 0]
            centres[:, 0] = w - centres[:, 0]
            boxes = [np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1) for b in boxes]
        sample = Sample(int(img["id"]), None, (h, w), (sx, sy), flipped, [b.ann_id for b in bags], points,
                        np.array([self.cat_index[b.category_id] for b in bags], dtype=np.int64), boxes,
                        true_centres=centres)
        try:
            rgb = self.read_pixels(img, tile)
        except ImageError as e:
            sample.error = str(e)
            return sample
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        if flipped:
            rgb = rgb[:, ::-1]
        arr = (rgb.astype(np.float32) - MEAN) / STD
        sample.image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return sample

    def read_pixels(self, img: dict[str, Any], tile: Window | None) -> np.ndarray:
        """The image's ``H×W×3`` uint8 pixels (``tile``: only that crop)."""
        del tile
        return load_image_rgb(self.images_dir / img["file_name"], (int(img["width"]), int(img["height"])))


def collate(samples: list[Sample]) -> Batch:
    """Pad the readable samples' images into one ``B×3×H×W`` tensor (H, W multiples of 32).

    The per-sample image tensors are dropped once copied; samples with ``error`` go to
    ``Batch.failed``.
    """
    ok = [s for s in samples if s.image is not None]
    failed = [s for s in samples if s.image is None]
    if not ok:
        return Batch(torch.zeros(0, 3, PAD_DIVISOR, PAD_DIVISOR), [], failed)
    hpad = -(-max(s.image.shape[1] for s in ok) // PAD_DIVISOR) * PAD_DIVISOR
    wpad = -(-max(s.image.shape[2] for s in ok) // PAD_DIVISOR) * PAD_DIVISOR
    images = torch.zeros(len(ok), 3, hpad, wpad)
    for i, s in enumerate(ok):
        images[i, :, : s.image.shape[1], : s.image.shape[2]] = s.image
        s.image = None
    return Batch(images, ok, failed)


class CropBagDataset(BagDataset):
    """:class:`BagDataset` whose large images come as tiles around their points (``--crops``,
    :mod:`.crops`): in training every tile that holds a point, with the points it holds; in
    selection each point in one tile. Images the rule leaves whole stay one sample.

    The bags' points are read once here (from the store) to lay the tiles out; each worker keeps
    the last few decoded images (a tiled TIFF is read tile by tile instead).

    Args:
        rule: the crop rule (:func:`.crops.crop_rule`).
        training: the training layout (else the selection layout).
        Others as :class:`BagDataset`.
    """

    #: decoded images a worker keeps for the next tiles of the same image, at most
    CACHE_IMAGES = 4

    def __init__(self, images: list[dict[str, Any]], bags: BagStore | dict[int, list[Bag]],
                 images_dir: str | os.PathLike, cat_index: dict[int, int], max_size: int, min_size: int,
                 flip_prob: float, seed: int, rule: CropRule, training: bool) -> None:
        super().__init__(images, bags, images_dir, cat_index, max_size, min_size, flip_prob, seed)
        self.rule = rule
        self.items: list[tuple[int, Window | None, int, frozenset[int]]] = []
        layout = training_tiles if training else selection_tiles
        for i, img in enumerate(self.images):
            w, h = int(img["width"]), int(img["height"])
            if not rule.applies(w, h, resize_scale(w, h, max_size, min_size)):
                self.items.append((i, None, 0, frozenset()))
                continue
            held = [b for b in self.store.bags(int(img["id"])) if len(b)]
            xy = np.array([b.point for b in held], dtype=np.float64).reshape(-1, 2)
            for k, (tile, idx) in enumerate(layout(xy, w, h, rule)):
                self.items.append((i, tile, k, frozenset(held[j].ann_id for j in idx)))
        self._pixels: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> Sample:
        i, tile, k, ann_ids = self.items[j]
        img = self.images[i]
        bags = self.store.bags(int(img["id"]))
        if tile is None:
            return self.make_sample(img, bags)
        return self.make_sample(img, [b for b in bags if b.ann_id in ann_ids], tile, k)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": {}}  # workers decode their own images

    def read_pixels(self, img: dict[str, Any], tile: Window | None) -> np.ndarray:
        if tile is None:
            return super().read_pixels(img, None)
        name = str(img["file_name"])
        source = self._pixels.pop(name, None)
        if source is None:
            path, wh = self.images_dir / name, (int(img["width"]), int(img["height"]))
            source = open_large_image(path, wh)
            source = load_image_rgb(path, wh) if source is None else source
        self._pixels[name] = source  # the most recent last
        while len(self._pixels) > self.CACHE_IMAGES:
            old = self._pixels.pop(next(iter(self._pixels)))
            getattr(old, "close", lambda: None)()
        return np.ascontiguousarray(window_pixels(source, tile))
