"""The run folder both engines share: metric lines, old checkpoints, and what a resume may continue.

``RUN/metrics.jsonl`` holds one JSON object per line: training lines (``iter``, ``lr``, ``loss``,
``loss_cate``, ``loss_mask`` ..., averaged over the logging window) and evaluation lines
(``"type": "eval"`` with the COCO mask AP family). ``RUN/last_checkpoint`` names the newest
``sap`` checkpoint; the detectron2 engine keeps its own checkpoints under ``RUN/detectron2/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError
from pseudolabel.core.io import disk_full_names, write_text_atomic
from pseudolabel.core.journal import read_journal

from .checkpoint import last_checkpoint
from .config import D2_SUBDIR, config_differences


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (a ``None`` path writes nothing)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with disk_full_names(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none if the file is absent)."""
    return [r for r in read_journal(path) if isinstance(r, dict)]


def trim_metrics(path: Path, upto: int) -> None:
    """Drop metric lines written after iteration ``upto`` by an interrupted run (and a line torn
    by the kill), and add ``{"resumed_at": upto}``: the first window means after it average only
    the iterations run since the resume, so they differ from an uninterrupted run's."""
    if path.is_file():
        kept = [r for r in read_metrics(path) if r.get("iter", 0) <= upto and "resumed_at" not in r
                or r.get("resumed_at", upto + 1) <= upto]
        kept.append({"resumed_at": upto})
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def loss_range(path: Path) -> tuple[float | None, float | None]:
    """The first and last training loss of a ``metrics.jsonl`` (``None`` when there are none)."""
    losses = [r["loss"] for r in read_metrics(path) if "loss" in r]
    return (losses[0], losses[-1]) if losses else (None, None)


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest periodic checkpoints (``keep <= 0`` keeps all)."""
    if keep > 0:
        for old in sorted(folder.glob("model_[0-9]*.pth"))[:-keep]:
            old.unlink(missing_ok=True)


def d2_last_checkpoint(run_dir: Path) -> Path | None:
    """The detectron2 engine's newest checkpoint in ``RUN/detectron2`` (its ``last_checkpoint``)."""
    marker = run_dir / D2_SUBDIR / "last_checkpoint"
    if not marker.is_file():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if path.is_file() else None


def refuse_unresumable(run_dir: Path, resume: bool, found: Path | None, stored: dict[str, Any] | None,
                       cfg_record: dict[str, Any], train_sha: str) -> None:
    """One sentence when ``run_dir`` holds a run that this one may not continue.

    Args:
        found: the checkpoint of the run already there (``None``: a fresh folder).
        stored: that run's ``train_config`` and ``train_sha256`` (a checkpoint's ``sap`` fields).
    """
    if found is None:
        return
    if not resume:
        raise InputError(f"{run_dir} already holds a training run ({found.name}); "
                         "pass --resume to continue it or choose another --out")
    diffs = config_differences((stored or {}).get("train_config", {}), cfg_record)
    if (stored or {}).get("train_sha256") != train_sha:
        diffs.insert(0, "the training file's content")
    if diffs:
        raise InputError(f"cannot resume {run_dir}: it was started with a different configuration "
                         f"({'; '.join(diffs[:4])})")


def other_engine_run(run_dir: Path, engine: str) -> None:
    """Refuse a folder in which the other engine left an unfinished run."""
    if engine == "torch" and d2_last_checkpoint(run_dir) is not None and last_checkpoint(run_dir) is None:
        raise InputError(f"{run_dir} holds an unfinished detectron2-engine run: resume it with --engine detectron2 "
                         "--resume, or choose another --out")
