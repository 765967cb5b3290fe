"""The files of a `sap pipeline` run folder that the review and the import read.

A run folder holds ``pipeline.yaml`` (the configuration: images, gt), one folder per stage with a
``stage.json`` naming its outputs, and ``corrections.json`` once `sap import` has written
corrections into it. Read from those files only (this tool sits below the pipeline package).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError

CORRECTIONS = "corrections.json"


@dataclass
class RunFiles:
    """Paths of one run (None where absent).

    Attributes:
        run: the run folder.
        labels: the current labels (refine's output, else the selection).
        selected: `sap select`'s output (pseudo.json).
        sam_top1: SAM's top-1 baseline beside it.
        cache: the proposal cache folder.
        predictions: the trained model's predictions (eval stage).
        images: the image folder of the configuration.
        gt: the ground truth of the configuration.
        corrections: ``RUN/corrections.json`` (may not exist yet).
    """

    run: Path
    labels: Path | None = None
    selected: Path | None = None
    sam_top1: Path | None = None
    cache: Path | None = None
    predictions: Path | None = None
    images: Path | None = None
    gt: Path | None = None
    corrections: Path | None = None


def _outputs(run: Path, folder: str) -> dict[str, Any]:
    path = run / folder / "stage.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("outputs", {}) or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def _existing(p: Any) -> Path | None:
    return Path(p) if p and Path(p).exists() else None


def is_run_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and (Path(path) / "pipeline.yaml").is_file()


def run_files(run: str | os.PathLike) -> RunFiles:
    """The files of the run folder ``run``.

    Raises:
        InputError: ``run`` is not a run folder, or no selection has been made in it yet.
    """
    import yaml

    run = Path(run)
    if not is_run_folder(run):
        raise InputError(f"{run} is not a `sap pipeline` run folder (it has no pipeline.yaml)")
    try:
        cfg = (yaml.safe_load((run / "pipeline.yaml").read_text()) or {}).get("config", {}) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{run / 'pipeline.yaml'} is not valid YAML ({e})") from None
    sel, ref = _outputs(run, "3_select"), _outputs(run, "4_refine")
    out = RunFiles(run=run, selected=_existing(sel.get("pseudo")), sam_top1=_existing(sel.get("sam_top1")),
                   cache=_existing(_outputs(run, "2_proposals").get("cache")),
                   predictions=_existing(_outputs(run, "6_eval").get("predictions")),
                   images=_existing(cfg.get("images")), gt=_existing(cfg.get("gt")), corrections=run / CORRECTIONS)
    out.labels = _existing(ref.get("labels")) or out.selected
    if out.labels is None:
        raise InputError(f"the run {run} has no labels yet: run `sap pipeline` at least to the select stage")
    return out
