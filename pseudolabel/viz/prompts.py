"""`sap viz prompts`: draw the prompts `sap refine --dump-prompts` handed to SAM.

One PNG per image: each annotation's mask (from the COCO file given, e.g. the coarse input) as an
outline in its colour, its box in the same colour (on a white halo where CEBox ran and gave
it), positive points as green discs and negative points as red discs, all of the chosen
iteration. Dump lines are ``{"id", "iteration", "pos", "neg", "box", "cebox"}`` with ``(x, y)``
pixel indices and boxes ``[x0, y0, x1, y1]`` with inclusive max (refine/instances.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.progress import progress

from .draw import Instance, _line_width, annotation_mask, draw_instances, instance_color, write_png
from .sheets import VizReport, _anns_by_image, _image_index, _load, _out_names, _pick_images

POSITIVE, NEGATIVE, CEBOX = (40, 220, 40), (230, 40, 40), (255, 255, 255)
DUMP_KEYS = {"id", "iteration", "pos", "neg", "box", "cebox"}


def read_dump(path: str | os.PathLike, iteration: int) -> dict[Any, dict]:
    """Annotation id → its dump line at ``iteration`` (read line by line).

    Raises:
        InputError: the file is missing or a line is not a dump line (one sentence).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt dump {path} does not exist")
    out: dict[Any, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and DUMP_KEYS <= set(rec)
            except json.JSONDecodeError:
                ok = False
            if not ok:
                raise InputError(f"line {n} of {path} is not a `sap refine --dump-prompts` line")
            if rec["iteration"] == iteration:
                out[rec["id"]] = rec
    return out


def draw_prompts(image: np.ndarray, lines: Sequence[Mapping[str, Any]],
                 masks: Mapping[Any, np.ndarray | None]) -> np.ndarray:
    """The image with each dump line's mask outline, box, CEBox box and points drawn."""
    import cv2

    h, w = image.shape[:2]
    canvas = draw_instances(image, [Instance(mask=masks.get(r["id"]), color=instance_color(r["id"]), fill=False)
                                    for r in lines if masks.get(r["id"]) is not None])
    t = _line_width(h, w)
    radius = max(3, 2 * t + 1)
    for r in lines:
        color = instance_color(r["id"])
        if r["cebox"] is not None:  # a white halo under the box: CEBox ran (and gave this box)
            x0, y0, x1, y1 = (int(v) for v in r["cebox"])
            cv2.rectangle(canvas, (x0, y0), (x1, y1), CEBOX, 3 * t)
        if r["box"] is not None:
            x0, y0, x1, y1 = (int(v) for v in r["box"])
            cv2.rectangle(canvas, (x0, y0), (x1, y1), color, t)
        for key, c in (("pos", POSITIVE), ("neg", NEGATIVE)):
            for x, y in r[key]:
                cv2.circle(canvas, (int(x), int(y)), radius, c, -1)
                cv2.circle(canvas, (int(x), int(y)), radius, (0, 0, 0), 1)
    return canvas


def render_prompts(coco: Mapping[str, Any], dump: str | os.PathLike, images_dir: str | os.PathLike,
                   out_dir: str | os.PathLike, iteration: int = 0, image_ids: Sequence[Any] | None = None,
                   limit: int | None = None) -> VizReport:
    """Write ``OUT_DIR/<image stem>.png`` for each image holding dumped annotations."""
    lines = read_dump(dump, iteration)
    if not lines:
        raise InputError(f"{dump} holds no prompts of iteration {iteration}")
    by_image = _anns_by_image(coco)
    index = {k: v for k, v in _image_index(coco).items()
             if any(a["id"] in lines for a in by_image.get(k, []))}
    chosen = _pick_images(index, image_ids, limit)
    stems = _out_names(chosen)
    report = VizReport()
    for im in progress(chosen, desc="viz", total=len(chosen)):
        try:
            image = _load(Path(images_dir), im)
            anns = [a for a in by_image.get(im["id"], []) if a["id"] in lines]
            masks = {a["id"]: annotation_mask(a, image.shape[0], image.shape[1]) for a in anns}
            drawn = draw_prompts(image, [lines[a["id"]] for a in anns], masks)
            report.written.append(write_png(Path(out_dir) / f"{stems[im['id']]}.png", drawn))
        except (ImageError, InputError) as e:
            report.failed[im["id"]] = str(e)
    return report
