"""LabelMe and X-AnyLabeling: one JSON per image, ``shapes`` with ``shape_type: "point"``.

Each file names its image in ``imagePath`` (relative to the JSON file) and usually its size in
``imageWidth``/``imageHeight``; without them the size is read from the image. A point shape's
``points`` is ``[[x, y]]`` in pixels (the Qt canvas: continuous, pixel ``(col, row)`` covers
``[col, col+1)``). Point shapes that share a ``group_id`` (within one file and label) are the
clicks of one object; a point without a ``group_id`` is an object of its own. Other shapes are
counted, not read. X-AnyLabeling writes the same format with extra keys, which are ignored.
Neither tool ships a parsing library worth a dependency: the format is plain JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError

from .common import Export, ImageIndex, IngestOptions, RawImage, RawObject


def _files(path: Path) -> list[Path]:
    if Path(path).is_dir():
        files = sorted(Path(path).rglob("*.json"))
        if not files:
            raise InputError(f"{path} holds no LabelMe .json files")
        return files
    return [Path(path)]


def _read(f: Path) -> dict[str, Any]:
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{f} is not a readable LabelMe JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list) or not data.get("imagePath"):
        raise InputError(f"{f} is not a LabelMe/X-AnyLabeling file (it needs 'shapes' and 'imagePath')")
    return data


def read_labelme(path: Path, options: IngestOptions, index: ImageIndex) -> Export:
    """Read one LabelMe/X-AnyLabeling JSON file or a folder of them (recursively); every file's
    image must be under ``--images`` (``index``)."""
    images, objects, other = [], [], Counter()
    for f in _files(path):
        data = _read(f)
        name = str(data["imagePath"]).replace("\\", "/")
        if index.find(name, str(f), "its imagePath") is None:
            raise InputError(f"{f}: its image {name!r} is missing from {index.root}")
        w, h = data.get("imageWidth"), data.get("imageHeight")
        images.append(RawImage(name, w if isinstance(w, int) else None, h if isinstance(h, int) else None,
                               where=str(f)))
        groups: dict[Any, RawObject] = {}
        for i, shape in enumerate(data["shapes"]):
            if shape.get("shape_type", "polygon") != "point":
                other[shape.get("shape_type", "polygon")] += 1
                continue
            pts = shape.get("points")
            where = f"shape {i} (label {shape.get('label')!r})"
            if (not isinstance(pts, list) or len(pts) != 1 or not isinstance(pts[0], list) or len(pts[0]) != 2):
                raise InputError(f"{f}: {where} is a point shape whose 'points' is not [[x, y]]")
            gid = shape.get("group_id")
            key = (shape.get("label"), gid) if gid is not None else ("#", i)
            obj = groups.setdefault(key, RawObject(name, str(shape.get("label")), [], f"{f}: {where}"))
            obj.clicks.append((float(pts[0][0]), float(pts[0][1]), 1))
        objects.extend(groups.values())
    return Export(images, objects, None, {f"ignored_{t}": n for t, n in other.items()})
