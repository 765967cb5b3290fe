"""Bags of proposals, wherever they were stored: a `sap proposals` cache or a SAPNet-format JSON.

Two ways to read them:

* :func:`load_bags`: every bag in memory, by image id (small inputs, tools);
* :func:`open_bag_store`: a :class:`BagStore` that hands out one image's bags at a time. From a
  cache it reads them per image through the cache's indexes, so a process holds only the images
  in flight, whatever the size of the data set; each process (data-loading workers and
  ``torchrun`` ranks too) opens its own read-only connection on first use.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from .bags import Bag
from .cache import CacheReader, points_digest
from .coco import load_coco_json
from .errors import InputError
from .points import collect_points
from .sapnet_format import read_sapnet


def _check_cache_points(reader: CacheReader, path: Path, points_json: str | Path | dict) -> None:
    """Raise InputError unless the cache was made from this point file (its done images' points)."""
    coco = points_json if isinstance(points_json, dict) else load_coco_json(points_json)
    by_image, _ = collect_points(coco)
    done = {r["image_id"] for r in reader.images() if r["status"] == "done"}
    wanted = [p for img_id in done for p in by_image.get(img_id, [])]
    if "clicks" not in reader.config:  # a format-1 cache kept each object's first positive click only
        wanted = [replace(p, clicks=()) for p in wanted]
    if points_digest(wanted) != points_digest(reader.points()):
        raise InputError(f"the proposal cache {path} was made from a different point file")


def load_bags(path: str | Path, points_json: str | Path | dict | None = None) -> dict[int, list[Bag]]:
    """Bags by image id from a `sap proposals` cache folder or a SAPNet-format JSON file.

    Args:
        path: the cache folder, or a JSON file in the official SAPNet training format.
        points_json: the point file (path or parsed COCO) the caller works from; for a cache,
            its point set must be the one the cache was made from.

    Raises:
        InputError: unreadable, stale or mismatched cache.
    """
    path = Path(path)
    if path.is_file():
        return read_sapnet(path)
    with CacheReader(path) as reader:
        if points_json is not None:
            _check_cache_points(reader, path, points_json)
        return reader.bags()


class BagStore:
    """One image's bags at a time. ``image_ids()`` lists the images that have proposals;
    ``bags(image_id)`` returns their non-empty bags, ordered by annotation id."""

    def image_ids(self) -> list[int]:
        raise NotImplementedError

    def bags(self, image_id: int) -> list[Bag]:
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (the store reopens them if used again)."""


class MemoryBagStore(BagStore):
    """Bags held in a dict by image id (a SAPNet-format JSON, tests)."""

    def __init__(self, bags: dict[int, list[Bag]]) -> None:
        self._bags = {k: [b for b in v if len(b)] for k, v in bags.items()}
        self._bags = {k: v for k, v in self._bags.items() if v}

    def image_ids(self) -> list[int]:
        return sorted(self._bags)

    def bags(self, image_id: int) -> list[Bag]:
        return list(self._bags.get(image_id, []))


class CacheBagStore(BagStore):
    """Bags read per image from a `sap proposals` cache; nothing is held between calls.

    The SQLite connection belongs to the process that opened it: a forked or spawned process
    (a DataLoader worker) opens its own on first use, and pickling drops it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reader: CacheReader | None = None
        self._pid: int | None = None
        self._ids: list[int] | None = None

    def reader(self) -> CacheReader:
        """This process's open reader."""
        if self._reader is None or self._pid != os.getpid():
            self._reader = CacheReader(self.path)
            self._pid = os.getpid()
        return self._reader

    def image_ids(self) -> list[int]:
        if self._ids is None:
            self._ids = self.reader().proposal_image_ids()
        return list(self._ids)

    def bags(self, image_id: int) -> list[Bag]:
        return self.reader().image_bags(image_id)

    def close(self) -> None:
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None, "_pid": None}


def open_bag_store(path: str | Path, points: dict[str, Any] | None = None, source: str | None = None) -> BagStore:
    """A :class:`BagStore` over a cache folder (streamed) or a SAPNet-format JSON (in memory).

    Args:
        path: the cache folder or the JSON file.
        points: the parsed point file; when given, the proposals are checked against it.
        source: how messages name the proposals (default: the path).

    Raises:
        InputError: unreadable, stale or mismatched proposals (see :func:`check_bags`).
    """
    path = Path(path)
    source = source or str(path)
    if path.is_file():
        bags = read_sapnet(path)
        if points is not None:
            check_bags(points, bags, source)
        return MemoryBagStore(bags)
    store = CacheBagStore(path)
    if points is not None:
        reader = store.reader()
        _check_cache_points(reader, path, points)
        sizes = {img["id"]: [int(img["height"]), int(img["width"])] for img in points["images"]}
        for image_id, h, w, ann_id in reader.mask_sizes():
            if [h, w] != sizes.get(image_id):
                raise InputError(f"the proposals of annotation {ann_id} in {source} have mask size {[h, w]}, "
                                 f"not its image's {sizes.get(image_id)} (H, W)")
    return store


def check_bags(points: dict[str, Any], bags: dict[int, list[Bag]], source: str) -> None:
    """Raise InputError when the bags do not belong to the point file (ids, images, categories,
    mask sizes)."""
    by_image, _ = collect_points(points, source=source)
    known = {p.ann_id: p for pts in by_image.values() for p in pts}
    sizes = {img["id"]: [int(img["height"]), int(img["width"])] for img in points["images"]}
    for image_bags in bags.values():
        for bag in image_bags:
            p = known.get(bag.ann_id)
            if p is None:
                raise InputError(f"the proposals in {source} belong to another point file: annotation "
                                 f"{bag.ann_id} is not a point of it")
            if p.image_id != bag.image_id or p.category_id != bag.category_id:
                raise InputError(f"the proposals in {source} disagree with the point file on annotation "
                                 f"{bag.ann_id} (image or category)")
            for rle in bag.rles:
                if [int(v) for v in rle["size"]] != sizes[bag.image_id]:
                    raise InputError(f"the proposals of annotation {bag.ann_id} in {source} have mask size "
                                     f"{list(rle['size'])}, not its image's {sizes[bag.image_id]} (H, W)")
