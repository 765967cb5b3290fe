"""What every format reader shares: the objects it reads, the image index, categories, and the
canonical point file they become.

A reader returns an :class:`Export`: the images it names (with the size it records, if any) and
the objects on them, each with its label name and its clicks ``(x, y, label)`` in continuous
original-image pixels (pixel ``(col, row)`` covers ``[col, col+1) × [row, row+1)``, as in
:mod:`pseudolabel.core.points`; label 1 positive, 0 negative). :func:`to_point_file` checks
everything and builds the point file every stage reads; nothing is written before that passes.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from pseudolabel.core.errors import InputError
from pseudolabel.core.points import make_point, point_annotation

Click = tuple[float, float, int]
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


@dataclass
class RawObject:
    """One object of an export: the image it is on (as the export names it), its label, its
    clicks ``(x, y, label)`` in pixels, and where it is in the export (for messages)."""

    image: str
    label: str
    clicks: list[Click]
    where: str


@dataclass
class RawImage:
    """An image the export names; ``width``/``height`` None when the export does not record them."""

    name: str
    width: int | None = None
    height: int | None = None
    where: str = ""


@dataclass
class Export:
    """What a reader found: images, objects, the file's own categories (``[{"id", "name"}]``,
    None when the format has no ids) and counts for the closing summary."""

    images: list[RawImage]
    objects: list[RawObject]
    categories: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestOptions:
    """Options every reader may use (``sap points --from``)."""

    categories: str | None = None  # YAML name → id, or a COCO JSON/YAML categories list
    annotator: str | None = None  # Label Studio: this annotator's annotation (id or email)
    keypoint: str | None = None  # coco-keypoints: the keypoint that marks each object


def base_name(path: str) -> str:
    """The file name of a path or URL (``/data/upload/3/ab12-img.jpg`` → ``ab12-img.jpg``)."""
    path = str(path).split("?", 1)[0]
    return PureWindowsPath(PurePosixPath(path).name).name


class ImageIndex:
    """The files under ``--images`` by file name, to map an export's paths onto them (a Label
    Studio upload ``/data/upload/1/3f2a9c1e-a.png`` matches ``a.png`` when no file has its full name)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder {self.root} does not exist")
        self.by_name: dict[str, list[str]] = {}
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                rel = Path(dirpath, f).relative_to(self.root).as_posix()
                self.by_name.setdefault(f, []).append(rel)

    def find(self, name: str, source: str, where: str) -> str | None:
        """The path (relative to the root) of the file named like ``name``, or None.

        Raises:
            InputError: two files under the root have that name.
        """
        base = base_name(name)
        hits = self.by_name.get(base, [])
        upload = UPLOAD_PREFIX.match(base)
        if not hits and upload:  # Label Studio names an upload <8 hex>-<its original name>
            hits = self.by_name.get(upload.group(1), [])
        if len(hits) > 1:
            raise InputError(f"{source}: the image {name!r} of {where} matches {len(hits)} files in "
                             f"{self.root} ({', '.join(sorted(hits)[:3])}); give each image a unique file name")
        return hits[0] if hits else None


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file as it is displayed (EXIF orientation applied)."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def category_map(spec: str | None, export: Export, source: str) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Label name → category id, and the categories list to write.

    From ``--categories`` (a YAML/JSON mapping name → id, or a COCO categories list, bare or
    under ``categories``), else the file's own categories, else ids 1..K in sorted name order.
    """
    if spec:
        from pseudolabel.core.config import load_config_file

        path = Path(spec)
        if path.suffix == ".json" and path.is_file():
            import json

            data: Any = json.loads(path.read_text(encoding="utf-8"))
        else:
            data = load_config_file(path) if path.is_file() else None
        if data is None:
            raise InputError(f"--categories {spec} does not exist")
        if isinstance(data, dict) and isinstance(data.get("categories"), list):
            data = data["categories"]
        if isinstance(data, list):
            cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in data
                    if isinstance(c, dict) and "id" in c and "name" in c]
            if len(cats) != len(data):
                raise InputError(f"--categories {spec}: every entry of a categories list needs 'id' and 'name'")
        elif isinstance(data, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
            cats = [{"id": v, "name": str(k)} for k, v in data.items()]
        else:
            raise InputError(f"--categories {spec} must map names to integer ids or be a COCO categories list")
    elif export.categories is not None:
        cats = [{"id": int(c["id"]), "name": str(c["name"])} for c in export.categories]
    else:
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(sorted({o.label for o in export.objects}))]
    mapping = {c["name"]: c["id"] for c in cats}
    unknown = Counter(o.label for o in export.objects if o.label not in mapping)
    if unknown:
        listed = ", ".join(f"{name!r} ({n})" for name, n in unknown.most_common())
        raise InputError(f"{source}: {sum(unknown.values())} objects have labels that are not in the "
                         f"category map ({'--categories ' + spec if spec else 'the file'}'s categories): {listed}")
    return mapping, sorted(cats, key=lambda c: c["id"])


def check_clicks(clicks: list[Click], w: float, h: float, source: str, where: str) -> None:
    """Every click inside its ``w×h`` image (the right and bottom borders included) and at least
    one positive click."""
    for x, y, _ in clicks:
        if not (math.isfinite(x) and math.isfinite(y)) or x < 0 or y < 0:
            raise InputError(f"{source}: {where} has the point ({x:g}, {y:g}) with a negative or "
                             "non-finite coordinate")
        if x > w or y > h:
            raise InputError(f"{source}: {where} has the point ({x:g}, {y:g}) outside its "
                             f"{w:g}×{h:g} image")
    if not any(label == 1 for *_, label in clicks):
        raise InputError(f"{source}: {where} has only negative clicks; an object needs a positive one")


def to_point_file(export: Export, index: ImageIndex, source: str, fmt: str,
                  options: IngestOptions) -> tuple[dict[str, Any], dict[str, int]]:
    """The canonical point file (COCO JSON with ``point`` and, for several clicks,
    ``point_coords``/``point_labels``) of an export, and its counts.

    Raises:
        InputError: a missing or ambiguous image, an unknown label, a point outside its image or
            with a negative coordinate, an object with only negative clicks.
    """
    images_dir = index.root
    mapping, categories = category_map(options.categories, export, source)
    files: dict[str, str] = {}  # export name → file under --images
    taken: dict[str, str] = {}  # file under --images → export name
    missing: list[str] = []
    images_out: list[dict[str, Any]] = []
    sizes: dict[str, tuple[int, int]] = {}
    for img in export.images:
        if img.name in files:
            continue
        rel = index.find(img.name, source, img.where or f"image {img.name!r}")
        if rel is None:
            missing.append(img.name)
            continue
        other = taken.setdefault(rel, img.name)
        if other != img.name:
            raise InputError(f"{source}: the images {other!r} and {img.name!r} are different images of the "
                             f"export but both map to {rel} in {images_dir}; give them unique file names")
        files[img.name] = rel
        w, h = (img.width, img.height) if img.width and img.height else image_size(index.root / rel)
        sizes[img.name] = (int(w), int(h))
        images_out.append({"id": len(images_out) + 1, "file_name": rel, "width": int(w), "height": int(h)})
    if missing:
        raise InputError(f"{source}: {len(missing)} images of the export are not in {images_dir} "
                         f"(first: {', '.join(repr(m) for m in missing[:3])})")
    ids = {name: images_out[i]["id"] for i, name in enumerate(files)}
    anns = []
    for obj in export.objects:
        w, h = sizes[obj.image]
        check_clicks(obj.clicks, w, h, source, obj.where)
        p = make_point(len(anns) + 1, ids[obj.image], mapping[obj.label], obj.clicks)
        anns.append(point_annotation(p))
    counts = {"images": len(images_out), "objects": len(anns),
              "clicks": sum(len(o.clicks) for o in export.objects),
              "negative_clicks": sum(c[2] == 0 for o in export.objects for c in o.clicks), **export.counts}
    info = {"description": f"points read from {fmt} export {source}", "sap_points": {"from": fmt, "source": source}}
    return {"info": info, "images": images_out, "categories": categories, "annotations": anns}, counts
