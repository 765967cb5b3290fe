"""Checkpoints of a training run, and loading a trained model for prediction.

A checkpoint is one dict saved with ``torch.save`` (atomically):
``format``, ``iter``, ``model`` (state dict), ``model_config`` (:class:`SOLOv2Config` as a
dict), ``categories`` (contiguous index ↔ original COCO ids and names), ``train_config``,
``train_sha256`` and, except in ``model_final.pth``, ``optimizer``/``scaler``/``rng`` to resume.
``RUN_DIR/last_checkpoint`` names the newest file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pseudolabel.core.errors import InputError
from pseudolabel.core.io import atomic_path, first_line, write_text_atomic

from .data import CategoryMap
from .model import SOLOv2, SOLOv2Config

FORMAT = "sap-solov2/1"
LAST = "last_checkpoint"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], run_dir: str | os.PathLike | None = None) -> Path:
    """Save ``payload`` (plus the format tag) atomically; update ``last_checkpoint`` in ``run_dir``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    if run_dir is not None:
        write_text_atomic(Path(run_dir) / LAST, path.name + "\n")
    return path


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run, or ``None``."""
    marker = Path(run_dir) / LAST
    if not marker.is_file():
        return None
    path = Path(run_dir) / marker.read_text().strip()
    return path if path.is_file() else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        InputError: the file is missing or is not a ``sap`` SOLOv2 checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        found = last_checkpoint(path) or (path / "model_final.pth")
        path = found
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise InputError(f"{path} cannot be read as a PyTorch checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a checkpoint written by `sap train` (format {FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> tuple[SOLOv2, CategoryMap]:
    """Rebuild the trained model (no download: the weights are in the checkpoint) and its categories."""
    cfg = SOLOv2Config.from_dict(ckpt["model_config"])
    model = SOLOv2(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), CategoryMap.from_dict(ckpt["categories"])
