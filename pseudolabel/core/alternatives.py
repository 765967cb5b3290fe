"""The selector's alternatives (each point's other proposals) in a sidecar beside the pseudo-labels.

`sap select` writes every annotation's alternatives — compressed RLEs, ranked best first, what
:func:`pseudolabel.core.coco.mps_alternatives` reads — not inside the pseudo-label JSON but in
``OUT.alternatives.jsonl`` beside it, one line per annotation in the JSON's order::

    {"id": 17, "alternatives": [{"size": [h, w], "counts": "..."}, ...]}

and names that file in the JSON's ``info.sap_alternatives`` (a path relative to the JSON's
folder). So the stages that never use them (eval, export, refine, viz) neither read nor hold
them: at 5 alternatives per point they are 75–85 % of the bytes. The readers that do (train's
multi-mask loss, review's runner-up signal) call :func:`attach_alternatives`, which streams the
sidecar line by line. A file whose annotations carry ``alternatives`` inline (older files, or
files made by hand) is read as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, TextIO

from .coco import is_locked
from .errors import InputError

#: the key of ``info`` that names the sidecar, relative to the JSON's folder
INFO_KEY = "sap_alternatives"


def sidecar_of(json_path: str | os.PathLike) -> Path:
    """``pseudo.json`` → ``pseudo.alternatives.jsonl`` (same folder)."""
    p = Path(json_path)
    return p.with_name(p.stem + ".alternatives.jsonl")


def write_line(f: TextIO, ann_id: int, alternatives: list[Any]) -> None:
    """One sidecar line: an annotation id and its alternatives (RLE dicts, best first)."""
    f.write(json.dumps({"id": int(ann_id), "alternatives": alternatives}) + "\n")


def referenced_sidecar(coco: Any, json_path: str | os.PathLike) -> Path | None:
    """The sidecar named in ``coco['info']``, resolved against ``json_path``'s folder (None: none named)."""
    info = coco.get("info")
    name = info.get(INFO_KEY) if isinstance(info, dict) else None
    return (Path(json_path).parent / name) if name else None


def rebase(info: dict[str, Any], source_json: str | os.PathLike, out_json: str | os.PathLike) -> dict[str, Any]:
    """``info`` for a file written to ``out_json`` from ``source_json``: the sidecar reference
    rewritten relative to the new folder (refine copies the selector's ``info`` forward)."""
    name = info.get(INFO_KEY)
    if not name:
        return info
    target = (Path(source_json).parent / name).resolve()
    return {**info, INFO_KEY: os.path.relpath(target, Path(out_json).resolve().parent)}


def iter_sidecar(path: Path) -> Iterator[tuple[int, list[Any]]]:
    """``(annotation id, alternatives)`` per line, streamed.

    Raises:
        InputError: a line is not ``{"id": int, "alternatives": [...]}``.
    """
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                yield int(rec["id"]), list(rec["alternatives"])
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}: line {n} is not {{\"id\": ..., \"alternatives\": [...]}}") from None


def existing_sidecar(coco: Any, json_path: str | os.PathLike) -> Path | None:
    """The sidecar ``coco`` (a parsed file or a :class:`~pseudolabel.core.coco_stream.CocoStream`)
    names, None when it names none.

    Raises:
        InputError: it names one that does not exist (the JSON was moved without it).
    """
    path = referenced_sidecar(coco, json_path)
    if path is not None and not path.is_file():
        raise InputError(f"{json_path} keeps its alternatives in {path}, which does not exist: copy it beside "
                         f"the JSON (sap train: or --mps-weight 0 to train without the multi-mask loss)")
    return path


def lacks_alternatives(ann: dict[str, Any]) -> bool:
    """Whether the sidecar's alternatives belong in ``ann``: it carries none inline and is not
    locked (a person's correction, :func:`pseudolabel.core.coco.lock_annotation`, gets none)."""
    return "alternatives" not in ann and not is_locked(ann)


def attach_alternatives(coco: dict[str, Any], json_path: str | os.PathLike) -> int:
    """Put the sidecar's alternatives into the annotations that lack them (in place); locked
    annotations (a person's corrections, :func:`pseudolabel.core.coco.lock_annotation`) get none.

    Args:
        coco: the parsed pseudo-label JSON of ``json_path``.
        json_path: where it was read from (the sidecar reference is relative to its folder).

    Returns:
        How many annotations got alternatives (0 when the file names no sidecar).

    Raises:
        InputError: the file names a sidecar that does not exist (moved without it): training
            would silently lose its multi-mask targets.
    """
    path = existing_sidecar(coco, json_path)
    if path is None:
        return 0
    by_id = {a["id"]: a for a in coco["annotations"] if lacks_alternatives(a)}
    n = 0
    for ann_id, alts in iter_sidecar(path):
        ann = by_id.get(ann_id)
        if ann is not None:
            ann["alternatives"] = alts
            n += 1
    return n


class SidecarReader:
    """A sidecar read alongside its JSON's annotations, which come in the same order: :meth:`get`
    reads forward to the id asked for and holds only the lines it passed (none when the orders
    agree; any order is still right)."""

    def __init__(self, path: Path) -> None:
        self._lines = iter_sidecar(path)
        self._passed: dict[int, list[Any]] = {}

    def get(self, ann_id: int) -> list[Any] | None:
        """The alternatives of ``ann_id`` (None when the sidecar has no line for it)."""
        if ann_id in self._passed:
            return self._passed.pop(ann_id)
        for i, alts in self._lines:
            if i == ann_id:
                return alts
            self._passed[i] = alts
        return None

    def attach(self, ann: dict[str, Any]) -> dict[str, Any]:
        """``ann`` with its alternatives from the sidecar when it :func:`lacks_alternatives` (a copy;
        ``ann`` itself otherwise). Its line is consumed either way."""
        alts = self.get(ann["id"])
        return {**ann, "alternatives": alts} if alts is not None and lacks_alternatives(ann) else ann
