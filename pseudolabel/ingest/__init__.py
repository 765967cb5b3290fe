"""Points from the labelling tools: each export format read into the canonical point file.

One module per format family, chosen by name from :data:`FORMATS` (``sap points --from``):
``labelstudio``, ``cvat`` (XML or COCO Keypoints), ``labelme`` (and X-AnyLabeling), ``pointsup``,
``p2bnet``, ``coco-keypoints``. Every reader returns a :class:`~.common.Export`;
:func:`read_points` checks it and returns the point file (COCO JSON with ``point`` and, for
several clicks, ``point_coords``/``point_labels``) without writing anything. A tools-layer
package: it imports only the core.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from pseudolabel.core.errors import InputError

from .common import Export, ImageIndex, IngestOptions, to_point_file


def _labelstudio(path: Path, options: IngestOptions, index: ImageIndex) -> Export:
    from .labelstudio import read_labelstudio

    return read_labelstudio(path, options)


def _cvat(path: Path, options: IngestOptions, index: ImageIndex) -> Export:
    from .cvat import read_cvat

    return read_cvat(path, options)


def _labelme(path: Path, options: IngestOptions, index: ImageIndex) -> Export:
    from .labelme import read_labelme

    return read_labelme(path, options, index)


def _coco(name: str) -> Callable[[Path, IngestOptions, ImageIndex], Export]:
    def read(path: Path, options: IngestOptions, index: ImageIndex) -> Export:
        from . import coco_formats

        return getattr(coco_formats, name)(path, options)
    return read


#: format name → reader ``(export path, options, image index) → Export``
FORMATS: dict[str, Callable[[Path, IngestOptions, ImageIndex], Export]] = {
    "labelstudio": _labelstudio,
    "cvat": _cvat,
    "labelme": _labelme,
    "pointsup": _coco("read_pointsup"),
    "p2bnet": _coco("read_p2bnet"),
    "coco-keypoints": _coco("read_coco_keypoints"),
}


def read_points(fmt: str, path: str | os.PathLike, images_dir: str | os.PathLike,
                options: IngestOptions | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """The canonical point file of the export at ``path`` (format ``fmt``), and its counts.

    Raises:
        InputError: an unknown format, an unreadable export, or any bad input (one sentence
            naming the file and the task, shape or annotation).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown point format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    options = options or IngestOptions()
    index = ImageIndex(images_dir)
    export = FORMATS[fmt](path, options, index)
    return to_point_file(export, index, str(path), fmt, options)


__all__ = ["FORMATS", "IngestOptions", "read_points"]
