"""SOLOv2 trained on pseudo-labels (``sap train`` / ``sap predict``).

Parts, one module each: ``backbone`` (ResNet + FPN), ``heads`` (instance and mask-feature
branches), ``targets`` (assignment to grid cells), ``losses`` (focal, dice, MPS), ``postprocess``
(point-NMS, maskness, matrix NMS, boxes from masks), ``model`` (composition + config), ``data``
(COCO → samples), ``solver``, ``checkpoint``, ``engine`` (torch training loop), ``predict``
(COCO results) and ``d2`` (the detectron2 engine, the only place detectron2 is imported).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SOLOv2", "SOLOv2Config", "build_model", "TrainConfig", "train", "predict"]

_WHERE = {"SOLOv2": "model", "SOLOv2Config": "model", "build_model": "model", "TrainConfig": "engine",
          "train": "engine", "predict": "predict"}


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import torch
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
