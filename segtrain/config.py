"""What ``sap train`` is asked to do, and what it reports back, whichever engine runs it.

:class:`TrainConfig` (the options; defaults are AdelaiDet's SOLOv2 R50 1x), :func:`check_config`
(one sentence per unusable option), :func:`lr_schedule_of` (the schedule a configuration implies),
:func:`model_config_of` (the network it implies), :func:`config_differences` (what forbids a
resume) and :class:`TrainSummary` (the closing report). Both engines import this module; it
imports neither.

One clipping rule in both engines: ``clip_grad`` is the largest L2 norm of the gradient of all
parameters together (SOLO's mmdetection setting, 35); ``0`` turns clipping off (AdelaiDet's
detectron2 configs clip nothing).

Batches are built as AdelaiDet builds them on 8 GPUs of 2 images: ``images_per_pass`` images of
one orientation are padded together (to multiples of 32) and go through the network in one pass;
a process's share of ``batch`` is several such passes whose gradients add up, as GPUs' would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pseudolabel.core.errors import InputError

from .data import DataStats, parse_min_sizes
from .losses import MPS_REDUCTIONS
from .model import SOLOv2Config
from .solver import LRSchedule, SCHEDULES, make_schedule

ENGINES = ("torch", "detectron2")
#: the run folder's subfolder that holds the detectron2 engine's own files and checkpoints
D2_SUBDIR = "detectron2"


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
    clip_grad: float = 35.0  # max L2 norm of all gradients together (0 = off), in both engines
    images_per_pass: int = 2  # images padded together in one forward pass (AdelaiDet: 2 per GPU)
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

    def lines(self) -> list[str]:
        """One line for the terminal."""
        s = f"trained {self.iters - self.start_iter} iterations (to {self.iters}) in {self.seconds:.0f} s"
        if self.first_loss is not None and self.last_loss is not None:
            s += f"; loss {self.first_loss:.3f} -> {self.last_loss:.3f}"
        s += f"; data: {self.data.summary()}"
        if self.final_eval:
            s += "; val mask " + " ".join(f"{k} {v:.1f}" for k, v in self.final_eval.items())
        if self.failed_images:
            s += f"; {len(self.failed_images)} images failed: " + ", ".join(list(self.failed_images.values())[:10])
        return [s + f"; run folder {self.run_dir}"]


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
    check_range(cfg.images_per_pass, "images_per_pass", 1, integer=True)
    if cfg.mps_reduce not in MPS_REDUCTIONS:
        raise InputError(f"mps_reduce must be one of {', '.join(MPS_REDUCTIONS)}")
    if (cfg.val is None) != (cfg.val_images is None):
        raise InputError("--val and --val-images go together")
    if not cfg.out:
        raise InputError("--out (the run folder) is required")
    if cfg.engine == "torch" and (cfg.num_gpus != 1 or cfg.num_machines != 1 or cfg.machine_rank != 0):
        raise InputError("--num-gpus, --num-machines and --machine-rank are the detectron2 engine's launcher; "
                         "the torch engine runs on several GPUs through torchrun")
    lr_schedule_of(cfg)


def per_pass_of(cfg: TrainConfig, world_size: int) -> int:
    """Images per forward pass for one process's share of the batch.

    Raises:
        InputError: the batch does not split into the processes, or a process's share into passes.
    """
    if cfg.batch % world_size:
        raise InputError(f"--batch {cfg.batch} is not divisible by the {world_size} processes")
    per_rank = cfg.batch // world_size
    per_pass = min(cfg.images_per_pass, per_rank)
    if per_rank % per_pass:
        raise InputError(f"each process's {per_rank} images do not split into passes of images_per_pass "
                         f"{per_pass}: choose a --batch that is a multiple of {per_pass * world_size}")
    return per_pass


def lr_schedule_of(cfg: TrainConfig) -> LRSchedule:
    """The learning-rate schedule a configuration implies (base_lr scaled to the total batch).

    Raises:
        InputError: explicit steps that are not increasing or fall inside the warmup.
    """
    try:
        return make_schedule(cfg.schedule, cfg.iters, cfg.base_lr, cfg.batch, cfg.base_batch, cfg.warmup_iters,
                             cfg.warmup_factor, cfg.gamma, tuple(cfg.steps) if cfg.steps else None)
    except ValueError as e:
        raise InputError(str(e)) from None


def model_config_of(cfg: TrainConfig, num_classes: int) -> SOLOv2Config:
    """The network a configuration asks for: AdelaiDet's defaults, the options, then ``model:``.

    Raises:
        InputError: an unknown or malformed ``model:`` key.
    """
    if "num_classes" in cfg.model:
        raise InputError("model: num_classes comes from the training file's categories; remove it")
    base = SOLOv2Config(num_classes=num_classes, backbone=cfg.backbone, backbone_weights=str(cfg.backbone_weights),
                        mps_weight=cfg.mps_weight, mps_reduce=cfg.mps_reduce)
    try:
        return SOLOv2Config.from_dict({**base.to_dict(), **cfg.model})
    except (ValueError, TypeError) as e:
        raise InputError(f"bad model option in the configuration: {e}") from None


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every option that shapes the result and changed (resume check)."""
    keys = sorted((set(old) | set(new)) - RESUME_FREE)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
