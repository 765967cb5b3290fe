"""``sap train``: check the configuration, then hand it to the engine it names.

Engines by name: ``torch`` (:func:`segtrain.engine.train_torch`, plain PyTorch, always there) and
``detectron2`` (:func:`segtrain.d2.trainer.train_detectron2`, imported only when asked for, since
detectron2 is an optional install).
"""

from __future__ import annotations

from typing import Callable

from .config import ENGINES, TrainConfig, TrainSummary, check_config


def _torch_engine() -> Callable:
    from .engine import train_torch

    return train_torch


def _detectron2_engine() -> Callable:
    from .d2.trainer import train_detectron2

    return train_detectron2


ENGINE_REGISTRY: dict[str, Callable[[], Callable]] = {"torch": _torch_engine, "detectron2": _detectron2_engine}
assert set(ENGINE_REGISTRY) == set(ENGINES)


def run_train(cfg: TrainConfig, resume: bool = False) -> TrainSummary | None:
    """Train SOLOv2 with ``cfg.engine``; the summary on rank 0, ``None`` on other ranks.

    Raises:
        InputError: an unusable option or input (one sentence).
    """
    import os

    from pseudolabel.core.io import check_output_dir
    from pseudolabel.core.lock import output_lock

    check_config(cfg)
    check_output_dir(cfg.out, "--out")
    if int(os.environ.get("RANK", 0)) != 0:  # torchrun: rank 0 holds the run folder's lock
        return ENGINE_REGISTRY[cfg.engine]()(cfg, resume=resume)
    with output_lock(cfg.out):
        return ENGINE_REGISTRY[cfg.engine]()(cfg, resume=resume)
