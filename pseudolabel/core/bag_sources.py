"""Bags of proposals, wherever they were stored: a `sap proposals` cache or a SAPNet-format JSON."""

from __future__ import annotations

from pathlib import Path

from .bags import Bag
from .cache import CacheReader, points_digest
from .coco import load_coco_json
from .errors import InputError
from .points import collect_points
from .sapnet_format import read_sapnet


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
            coco = points_json if isinstance(points_json, dict) else load_coco_json(points_json)
            by_image, _ = collect_points(coco)
            done = {r["image_id"] for r in reader.images() if r["status"] == "done"}
            wanted = [p for img_id in done for p in by_image.get(img_id, [])]
            if points_digest(wanted) != points_digest(reader.points()):
                raise InputError(f"the proposal cache {path} was made from a different point file")
        return reader.bags()
