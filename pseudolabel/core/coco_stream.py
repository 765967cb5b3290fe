"""A COCO file read without holding its annotations: the rest in memory, annotations streamed.

The pseudo-label JSON grows with the data set (about 0.5–1.6 KB per annotation); ``json.load``
of it costs about 5× its bytes in memory. A :class:`CocoStream` holds every top-level entry but
``annotations`` (``images``, ``categories``, ``info`` ...: a few hundred bytes per image) and
parses the annotations from disk, one at a time, each time they are asked for (ijson's C
parser). :meth:`CocoStream.by_image` gives them grouped by image in the images' order while
holding only the groups not complete yet: nothing when the file lists its annotations image by
image (what `sap select` and `sap refine` write); any order is still right, it only holds more.

Checks are those of :func:`pseudolabel.core.coco.load_coco_json`, made while the file is opened
(one streamed pass), plus every mask when ``check_masks`` is given.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .coco import check_annotation, check_coco_header, check_segmentation
from .errors import InputError

INSTALL = "reading large COCO files streamed needs ijson: pip install ijson"


def _ijson():
    try:
        import ijson
    except ImportError:
        raise InputError(INSTALL) from None
    return ijson


class CocoStream:
    """A COCO file's header (``stream["images"]``, ``stream.get("info")`` ...) and its annotations
    streamed (:meth:`annotations`, :meth:`by_image`). Open with :func:`open_coco_stream`."""

    def __init__(self, path: Path, header: dict[str, Any], counts: Counter) -> None:
        self.path = path
        self.header = header
        self.counts = counts  # image id -> its number of annotations

    def __getitem__(self, key: str) -> Any:
        if key == "annotations":
            raise KeyError("a CocoStream streams its annotations: use .annotations() or .by_image()")
        return self.header[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.header.get(key, default)

    def __len__(self) -> int:
        """The number of annotations."""
        return sum(self.counts.values())

    def annotations(self) -> Iterator[dict[str, Any]]:
        """Every annotation, in the file's order, parsed one at a time."""
        ijson = _ijson()
        with open(self.path, "rb") as f:
            yield from ijson.items(f, "annotations.item", use_float=True)

    def by_image(self, extra: dict[Any, list[dict]] | None = None,
                 change: Callable[[dict], dict] | None = None) -> Iterator[tuple[dict, list[dict]]]:
        """``(image, its annotations)`` for every image, in ``images`` order (annotations in file order).

        Args:
            extra: image id -> annotations appended to that image's (new objects of a correction).
            change: applied to each annotation as it is read (e.g. a correction replacing it).
        """
        return group_by_image(self.header["images"], self.annotations(), self.counts, extra, change)


def group_by_image(images: list[dict], anns: Iterable[dict], counts: Counter, extra: dict[Any, list[dict]] | None = None,
                   change: Callable[[dict], dict] | None = None) -> Iterator[tuple[dict, list[dict]]]:
    """Group the stream ``anns`` by image, in ``images`` order, given each image's count: an image
    is yielded as soon as it and every image before it are complete. Annotations of unknown
    images are skipped (the caller counted and reported them)."""
    extra = extra or {}
    pending: dict[Any, list[dict]] = {}
    it = iter(anns)
    for img in images:
        need = counts.get(img["id"], 0)
        while len(pending.get(img["id"], ())) < need:
            ann = next(it, None)
            if ann is None:
                raise InputError(f"the annotations of image {img['id']} changed while being read")
            if ann.get("image_id") in counts:
                pending.setdefault(ann["image_id"], []).append(change(ann) if change else ann)
        yield img, pending.pop(img["id"], []) + list(extra.get(img["id"], ()))


class _IdLog:
    """The annotation ids in file order, for :func:`~pseudolabel.core.coco.check_annotation`'s
    ``ann_ids`` (``in`` is always False: :meth:`first_repeat` finds repeats at the end)."""

    def __init__(self) -> None:
        self.ids = array("q")

    def __contains__(self, ann_id: Any) -> bool:
        return False

    def add(self, ann_id: int) -> None:
        self.ids.append(ann_id)

    def first_repeat(self) -> int | None:
        """The id of the first annotation, in file order, whose id came before (None: none)."""
        import numpy as np

        ids = np.frombuffer(self.ids, dtype=np.int64) if len(self.ids) else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        again = np.nonzero(ids[order][1:] == ids[order][:-1])[0]
        return int(ids[order[again + 1].min()]) if len(again) else None


def _read_header(path: Path, ijson) -> tuple[dict[str, Any], bool]:
    """Every top-level entry but ``annotations``, in file order, and whether ``annotations`` exists."""
    header: dict[str, Any] = {}
    builder, key, has_annotations = None, None, False
    with open(path, "rb") as f:
        for prefix, event, value in ijson.parse(f, use_float=True):
            if prefix == "":
                if event in ("map_key", "end_map") and builder is not None:
                    header[key] = builder.value
                    builder = None
                if event == "map_key":
                    key = value
                    has_annotations |= value == "annotations"
                    builder = None if value == "annotations" else ijson.ObjectBuilder()
                elif event != "start_map" and event != "end_map":
                    raise InputError(f"{path} is not a COCO dataset: it needs an 'images' list")
            elif builder is not None:
                builder.event(event, value)
    return header, has_annotations


def open_coco_stream(path: str | os.PathLike, require_annotations: bool = True, check_masks: str | None = None,
                     on_unknown_image: Callable[[dict], None] | None = None) -> CocoStream:
    """Open ``path`` as a :class:`CocoStream`, checked as :func:`~pseudolabel.core.coco.load_coco_json` checks.

    Args:
        check_masks: also check every mask (:func:`~pseudolabel.core.coco.check_segmentation`):
            ``"exact"``, or ``"other_size_ok"`` for tools that report a mask made for another size.
        on_unknown_image: called with an annotation naming no image of the file instead of the
            error (exporters record it as not represented).

    Raises:
        InputError: missing file, not JSON, not a COCO dataset, a bad annotation or mask.
    """
    ijson = _ijson()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file")
    try:
        header, has_annotations = _read_header(path, ijson)
        check_coco_header({**header, "annotations": [] if has_annotations else None}, path, require_annotations)
        header.setdefault("categories", [])
        images = {img["id"]: img for img in header["images"]}
        counts: Counter = Counter({i: 0 for i in images})
        ann_ids = _IdLog()  # 8 bytes per id, not a set's ~70: repeats are found after the pass
        for ann in (CocoStream(path, header, counts).annotations() if has_annotations else ()):
            if on_unknown_image is not None and isinstance(ann, dict) and ann.get("image_id") not in images:
                on_unknown_image(ann)
                continue
            check_annotation(ann, path, images, ann_ids)
            if check_masks:
                check_segmentation(ann, images[ann["image_id"]], str(path), check_masks == "other_size_ok")
            counts[ann["image_id"]] += 1
        if (repeated := ann_ids.first_repeat()) is not None:
            raise InputError(f"{path}: annotation id {repeated} appears twice")
    except (ijson.JSONError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None
    return CocoStream(path, header, counts)


class AnnotationIndex:
    """A COCO file's annotations by id on disk (a temporary SQLite table), for looking them up
    while another file streams: ``index.get(ann_id)`` → the annotation dict or None. Close it
    (or use it as a context manager) to delete the table."""

    def __init__(self, stream: CocoStream) -> None:
        import json
        import sqlite3
        import tempfile

        fd, self._path = tempfile.mkstemp(prefix="sap-index.", suffix=".sqlite")
        os.close(fd)
        self._db = sqlite3.connect(self._path)
        self._db.execute("CREATE TABLE ann (id INTEGER PRIMARY KEY, js TEXT NOT NULL)")
        self._db.executemany("INSERT OR REPLACE INTO ann VALUES (?, ?)",
                             ((a["id"], json.dumps(a)) for a in stream.annotations()))
        self._db.commit()
        self._loads = json.loads

    def get(self, ann_id: Any, default: Any = None) -> dict[str, Any] | None:
        row = self._db.execute("SELECT js FROM ann WHERE id = ?", (ann_id,)).fetchone()
        return self._loads(row[0]) if row else default

    def close(self) -> None:
        self._db.close()
        Path(self._path).unlink(missing_ok=True)

    def __enter__(self) -> "AnnotationIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
