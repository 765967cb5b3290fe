"""What ``sap train`` is asked to do, and what it reports back, whichever engine runs it.

:class:`TrainConfig` (the options; defaults are AdelaiDet's SOLOv2 R50 1x), :func:`check_config`
(one sentence per unusable option), :func:`lr_schedule_of` (the schedule a configuration implies)
and :class:`TrainSummary` (the closing report). Both engines import this module; it imports
neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError

from .data import DataStats, parse_min_sizes
from .solver import LRSchedule, SCHEDULES, make_schedule

ENGINES = ("torch", "detectron2")


@dataclass
class TrainConfig:
    """Options of ``sap train`` (defaults: AdelaiDet SOLOv2 R50 1x).

    ``model`` holds overrides of :class:`~segtrain.model.SOLOv2Config` fields (e.g.
    ``{"head_channels": 256}``) from a configuration file.
    """

    train: str = ""
    images: str = ""
    out: str = ""
    val: str | None = None
    val_images: str | None = None
    engine: str = "torch"
    backbone: str = "resnet50"
    backbone_weights: str = "imagenet"
    schedule: str = "1x"
    iters: int | None = None
    batch: int = 16
    base_lr: float = 0.01
    base_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.01
    steps: list[int] | None = None
    gamma: float = 0.1
    clip_grad: float = 35.0
    min_size: str = "640-800"
    max_size: int = 1333
    test_size: int | None = None
    flip_prob: float = 0.5
    amp: bool = True
    mps_weight: float = 0.25
    mps_reduce: str = "mean"
    checkpoint_period: int = 5000
    keep_checkpoints: int = 3
    eval_period: int = 0
    log_period: int = 20
    seed: int = 0
    workers: int = 4
    device: str | None = None
    skip_missing_images: bool = False
    keep_empty_images: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    # detectron2 engine only (its own launcher): GPUs per machine, machines, this machine, URL
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"

    def test_size_resolved(self) -> int:
        return int(self.test_size or max(parse_min_sizes(self.min_size)))


#: options that may change between a run and its resumption (they do not shape the result)
RESUME_FREE = frozenset({"out", "images", "val", "val_images", "device", "workers", "log_period",
                         "checkpoint_period", "keep_checkpoints", "eval_period", "train", "skip_missing_images",
                         "test_size_resolved", "num_gpus", "num_machines", "machine_rank", "dist_url"})


@dataclass
class TrainSummary:
    run_dir: Path
    iters: int
    start_iter: int
    first_loss: float | None
    last_loss: float | None
    data: DataStats
    failed_images: dict[int, str] = field(default_factory=dict)
    final_eval: dict[str, float] | None = None
    seconds: float = 0.0

    def text(self) -> str:
        s = f"trained {self.iters - self.start_iter} iterations (to {self.iters}) in {self.seconds:.0f} s"
        if self.first_loss is not None and self.last_loss is not None:
            s += f"; loss {self.first_loss:.3f} -> {self.last_loss:.3f}"
        s += f"; data: {self.data.summary()}"
        if self.final_eval:
            s += "; val mask " + " ".join(f"{k} {v:.1f}" for k, v in self.final_eval.items())
        if self.failed_images:
            s += f"; {len(self.failed_images)} images failed: " + ", ".join(list(self.failed_images.values())[:10])
        return s + f"; run folder {self.run_dir}"


def check_config(cfg: TrainConfig) -> None:
    """One sentence (:class:`InputError`) for the first unusable option."""
    from pseudolabel.core.config import check_range

    if cfg.iters is not None:
        check_range(cfg.iters, "--iters", 1, integer=True)
    check_range(cfg.batch, "--batch", 1, integer=True)
    check_range(cfg.base_lr, "--lr", 0, low_open=True)
    check_range(cfg.base_batch, "base_batch", 1, integer=True)
    for name in ("momentum", "weight_decay", "clip_grad", "warmup_factor", "gamma"):
        check_range(getattr(cfg, name), name, 0)
    check_range(cfg.mps_weight, "--mps-weight", 0)
    check_range(cfg.flip_prob, "flip_prob", 0, 1)
    check_range(cfg.max_size, "--max-size", 1, integer=True)
    if cfg.test_size is not None:
        check_range(cfg.test_size, "--test-size", 1, integer=True)
    for flag, name in (("--workers", "workers"), ("--checkpoint-period", "checkpoint_period"),
                       ("--eval-period", "eval_period"), ("warmup_iters", "warmup_iters"),
                       ("keep_checkpoints", "keep_checkpoints")):
        check_range(getattr(cfg, name), flag, 0, integer=True)
    check_range(cfg.log_period, "log_period", 1, integer=True)
    if min(parse_min_sizes(cfg.min_size), default=0) < 1:
        raise InputError(f"--min-size must hold sizes of at least 1 pixel, not {cfg.min_size!r}")
    if cfg.engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}")
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"--schedule must be one of {', '.join(SCHEDULES)}")
    if (cfg.val is None) != (cfg.val_images is None):
        raise InputError("--val and --val-images go together")
    if not cfg.out:
        raise InputError("--out (the run folder) is required")


def lr_schedule_of(cfg: TrainConfig) -> LRSchedule:
    """The learning-rate schedule a configuration implies (base_lr scaled to the total batch)."""
    return make_schedule(cfg.schedule, cfg.iters, cfg.base_lr, cfg.batch, cfg.base_batch, cfg.warmup_iters,
                         cfg.warmup_factor, cfg.gamma, tuple(cfg.steps) if cfg.steps else None)
