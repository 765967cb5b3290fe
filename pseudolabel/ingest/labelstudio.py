"""Label Studio's JSON export with ``keypointlabels`` results.

Each task holds ``data`` (the image path: ``/data/upload/<project>/<hash>-<name>``, a URL or a
local-storage path) and ``annotations``, each with ``result`` regions. A keypoint region's
``value`` holds ``x``/``y`` in percent of ``original_width``/``original_height`` and its label in
``keypointlabels``. Of a task's annotations the newest (``created_at``) one that was not cancelled
is read, or the one of ``--annotator`` (its ``completed_by``: a user id or an e-mail). Keypoints
that share a ``parentID`` are the clicks of one object; ``is_positive: false`` on a keypoint
result (the flag Label Studio's SAM ML backend reads) marks a negative click.

``image_rotation`` (0, 90, 180 or 270, clockwise) is the rotation the image was displayed at;
``x``/``y`` are percent of the displayed image, whose size ``original_width``×``original_height``
is taken as the displayed one, and are turned back into the stored image's pixels.

label-studio-converter reads this export only together with the project's labelling config
(its XML) and drops ``image_rotation``; the export itself is plain JSON, read here.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError

from .common import Click, Export, IngestOptions, RawImage, RawObject


def _image_path(task: dict[str, Any], source: str) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise InputError(f"{source}: task {task.get('id')} has no 'data' with its image")
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for v in data.values() if isinstance(v, str)]
    if len(strings) != 1:
        raise InputError(f"{source}: task {task.get('id')}: cannot tell which of its data fields is the image "
                         f"({', '.join(sorted(data))}); name it 'image'")
    return strings[0]


def _annotator(ann: dict[str, Any]) -> set[str]:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        return {str(who.get(k)) for k in ("id", "email") if who.get(k) is not None}
    return {str(who)} if who is not None else set()


def choose_annotation(task: dict[str, Any], annotator: str | None) -> dict[str, Any] | None:
    """The task's newest annotation that was not cancelled, or ``annotator``'s (None: none)."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)
            and not a.get("was_cancelled") and not a.get("skipped")]
    if annotator is not None:
        anns = [a for a in anns if annotator in _annotator(a)]
    if not anns:
        return None
    return max(anns, key=lambda a: (str(a.get("created_at") or ""), a.get("id") or 0))


def unrotate(u: float, v: float, w: float, h: float, rotation: float, where: str) -> tuple[float, float]:
    """A point ``(u, v)`` of the image displayed ``w×h`` after a clockwise ``rotation`` → the
    stored image's pixels."""
    r = int(rotation) % 360
    if r != rotation % 360 or r % 90:
        raise InputError(f"{where} has image_rotation {rotation}; only multiples of 90 degrees map to pixels")
    return {0: (u, v), 90: (v, w - u), 180: (w - u, h - v), 270: (h - v, u)}[r]


def _click(r: dict[str, Any], source: str, where: str) -> tuple[Click, int, int, str]:
    value = r.get("value") or {}
    try:
        x, y = float(value["x"]), float(value["y"])
        w, h = float(r["original_width"]), float(r["original_height"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{source}: {where} needs value.x, value.y, original_width and original_height") from None
    if not (0.0 <= x <= 100.0 and 0.0 <= y <= 100.0):
        raise InputError(f"{source}: {where} has x={x:g}%, y={y:g}%: percentages must lie in 0..100")
    labels = value.get("keypointlabels") or []
    if len(labels) != 1:
        raise InputError(f"{source}: {where} has {len(labels)} keypoint labels; one per keypoint is needed")
    px, py = unrotate(x / 100.0 * w, y / 100.0 * h, w, h, float(r.get("image_rotation") or 0), f"{source}: {where}")
    rotated = int(r.get("image_rotation") or 0) % 180 == 90
    sw, sh = (int(h), int(w)) if rotated else (int(w), int(h))
    positive = r.get("is_positive", value.get("is_positive"))
    return (px, py, 0 if positive is False else 1), sw, sh, str(labels[0])


def read_labelstudio(path: Path, options: IngestOptions) -> Export:
    """Read a Label Studio JSON export (a list of tasks, or one task)."""
    source = str(path)
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{source} is not a readable Label Studio JSON export ({e})") from None
    tasks = [tasks] if isinstance(tasks, dict) else tasks
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise InputError(f"{source} is not a Label Studio JSON export (a list of tasks)")
    images, objects, other = [], [], Counter()
    counts = Counter()
    for task in tasks:
        name = _image_path(task, source)
        ann = choose_annotation(task, options.annotator)
        if ann is None:
            counts["tasks_without_annotation"] += 1
        groups: dict[str, RawObject] = {}
        size = None
        for i, r in enumerate((ann or {}).get("result") or []):
            if r.get("type") != "keypointlabels":
                other[r.get("type", "untyped")] += 1
                continue
            where = f"task {task.get('id')}, annotation {ann.get('id')}, region {r.get('id', i)}"
            click, sw, sh, label = _click(r, source, where)
            size = size or (sw, sh)
            key = str(r.get("parentID") or r.get("id") or f"#{i}")
            obj = groups.setdefault(key, RawObject(name, label, [], where))
            if obj.label != label:
                raise InputError(f"{source}: {where}: the keypoints of one object carry two labels "
                                 f"({obj.label!r}, {label!r})")
            obj.clicks.append(click)
        images.append(RawImage(name, *(size or (None, None)), where=f"task {task.get('id')}"))
        objects.extend(groups.values())
    if not objects and other:
        held = ", ".join(f"{n} {t}" for t, n in other.most_common())
        raise InputError(f"{source} holds no keypointlabels results but {held}: it was made with another "
                         "labelling config; export a project that labels objects with KeyPointLabels")
    if options.annotator is not None and not objects:
        raise InputError(f"{source}: no annotation by {options.annotator!r} has keypoints")
    counts.update({f"ignored_{t}": n for t, n in other.items()})
    return Export(images, objects, None, dict(counts))
