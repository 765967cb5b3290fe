"""Training and running the selector, on CPU or GPU, alone or under ``torchrun`` (DDP).

Schedule (official SAPNet): SGD, lr 0.015 for 32 images scaled linearly to the total batch,
momentum 0.9, weight decay 1e-4, gradient norm clipped at 35, linear warmup over 500 iterations
from 0.001 of the lr, ×0.1 at epochs 8 and 11 of 12 (at the same fractions of other lengths),
AMP on CUDA. Under ``torchrun --nproc_per_node N`` each process takes ``batch_size`` images per
step and rank 0 alone logs and writes. ``WORK_DIR/selector.pt`` is written after every epoch, and
``WORK_DIR/metrics.jsonl`` gains one line per epoch: ``epoch``, ``iter`` (iterations so far),
``lr`` (the last one), ``seconds`` and the epoch's mean of each loss (``psm``, ``prm``, ``neg``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from pseudolabel.core.config import to_jsonable
from pseudolabel.core.device import DistInfo, loader_workers
from pseudolabel.core.errors import InputError
from pseudolabel.core.io import atomic_path, disk_full_names, load_torch_file
from pseudolabel.core.journal import append_record
from pseudolabel.core.progress import logger, logging_to_tqdm, progress
from .data import BagDataset, collate
from .mil import PointChoice, SelectorStep
from .model import SelectorNet, random_init_norm
from .options import SelectConfig
from .reference import apply_reference

CHECKPOINT_FORMAT = "sap-selector-1"
CHECKPOINT_NAME = "selector.pt"
METRICS_NAME = "metrics.jsonl"


#: the rate per 32 images at which a selector from random weights learned the benchmark's classes
#: (scripts/bench_select.py --scenes shapes: 0.04 barely learned them in 100 iterations, 0.16 did in 300)
SCRATCH_LR = 0.16


def scratch_rate_advice(cfg: SelectConfig) -> str | None:
    """One sentence when ``cfg.lr`` is far below :data:`SCRATCH_LR` (for a selector trained from
    random weights, where SAPNet's ImageNet rate learns slowly), else None."""
    per32 = cfg.lr * 32 / cfg.lr_batch
    if per32 >= SCRATCH_LR / 2:
        return None
    return (f"lr {cfg.lr} per {cfg.lr_batch} images is a rate for ImageNet weights (SAPNet's: 0.015 per 32); from "
            f"random weights the selector learned far more slowly at such rates than at {SCRATCH_LR} per 32 over 300 "
            f"iterations (docs/selector.md, \"What the selector learns\"): consider --lr {SCRATCH_LR}")


def warmup_advice(cfg: SelectConfig, iterations: int) -> str | None:
    """One sentence when the linear warmup takes over half of a run of ``iterations`` (the rate
    then stays a fraction of ``cfg.lr`` for most of it: SAPNet's 500 iterations are 1 % of 12
    COCO epochs, but all of 12 epochs on 100 images at batch 4), else None."""
    if iterations <= 0 or cfg.warmup_iters <= iterations / 2:
        return None
    return (f"the warmup ({cfg.warmup_iters} iterations) is longer than half of this run's {iterations} iterations, "
            f"so the selector trains at a fraction of --lr for most of it: pass --warmup-iters "
            f"{max(1, iterations // 10)} (a tenth of the run) or train for more iterations")


def learning_rate(cfg: SelectConfig, world: int, epoch: int, it: int) -> float:
    """The lr at global iteration ``it`` of (0-based) ``epoch``."""
    base = cfg.lr * cfg.batch_size * world / cfg.lr_batch
    decays = sum(epoch >= s * cfg.epochs / 12.0 for s in cfg.lr_steps)
    lr = base * 0.1 ** decays
    if it < cfg.warmup_iters:
        lr *= 1.0 - (1.0 - it / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
    return lr


def build_model(cfg: SelectConfig, num_classes: int, backbone_norm: str | None = "auto") -> SelectorStep:
    """The selector for ``cfg.method`` (seeded, so every rank starts from the same weights).

    ``backbone_norm``: ``"auto"`` (GroupNorm from random weights, else the ``bn`` rule, see
    :func:`.model.random_init_norm`), a checkpoint's recorded norm, or None (the ``bn`` rule).
    """
    torch.manual_seed(cfg.seed)
    cfg = apply_reference(cfg)
    if backbone_norm == "auto":
        backbone_norm = random_init_norm(cfg.backbone_weights)
    net = SelectorNet(num_classes, cfg.stages, cfg.backbone, cfg.backbone_weights, cfg.rule_roi_align, cfg.rule_bn,
                      backbone_norm)
    return SelectorStep(net, cfg)


def save_checkpoint(path: Path, step: SelectorStep, categories: list[int], epoch: int, it: int,
                    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None) -> None:
    """Write the selector (and the training state) atomically."""
    state = {"format": CHECKPOINT_FORMAT, "model": step.net.state_dict(), "categories": categories,
             "backbone": step.cfg.backbone, "backbone_norm": step.net.backbone.norm,
             "stages": step.net.stages, "method": step.cfg.method,
             "epoch": epoch, "iter": it, "config": to_jsonable(step.cfg)}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, categories: list[int], cfg: SelectConfig) -> dict[str, Any]:
    """Read a selector checkpoint and check it fits this run.

    Raises:
        InputError: missing or unreadable file, other categories, fewer stages than the method
            needs, or another backbone.
    """
    path = Path(path)
    state = load_torch_file(path, "selector weights")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a checkpoint written by `sap select`")
    if list(state["categories"]) != list(categories):
        raise InputError(f"selector weights {path} were trained for other categories than the point file's")
    if state["stages"] < cfg.stages:
        raise InputError(f"selector weights {path} were trained for method {state['method']!r}, "
                         f"which lacks the stages {cfg.method!r} needs")
    if state["backbone"] != cfg.backbone:
        raise InputError(f"selector weights {path} use backbone {state['backbone']}, not {cfg.backbone} "
                         f"(pass --backbone {state['backbone']})")
    trained_bn = (state.get("config") or {}).get("rule_bn") or "frozen"  # before rule_bn: frozen BN
    if trained_bn != apply_reference(cfg).rule_bn:
        raise InputError(f"selector weights {path} were trained with rule_bn: {trained_bn}; "
                         f"put 'rule_bn: {trained_bn}' in the --config file to use them")
    return state


def load_net_state(step: SelectorStep, state: dict[str, Any]) -> None:
    """Put a checkpoint's weights into ``step`` (only PSM's when ``step`` has one stage)."""
    model_state = state["model"]
    if state["stages"] > step.net.stages:  # a sapnet checkpoint used for mil: PSM weights only
        model_state = {k: v for k, v in model_state.items() if not k.startswith(("fc_cls.1", "fc_ins.1"))}
    step.net.load_state_dict(model_state)


def _autocast(device: torch.device, cfg: SelectConfig):
    return torch.autocast(device_type=device.type, dtype=torch.float16,
                          enabled=bool(cfg.amp and device.type == "cuda"))


def train_selector(step: SelectorStep, dataset: BagDataset, cfg: SelectConfig, categories: list[int],
                   device: torch.device, info: DistInfo, work_dir: Path) -> dict[str, Any]:
    """Train ``step`` in place; returns timings and the last losses.

    ``work_dir/selector.pt`` is rewritten after every epoch (weights, optimizer, epoch); with
    ``cfg.resume`` training continues from it when it exists.
    """
    step.to(device)
    params = [p for p in step.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    use_amp = bool(cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_epoch, it = 0, 0
    ckpt = work_dir / CHECKPOINT_NAME
    if cfg.resume:
        if ckpt.is_file():
            state = load_checkpoint(ckpt, categories, cfg)
            load_net_state(step, state)
            if "optimizer" in state:
                optimizer.load_state_dict(state["optimizer"])
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            start_epoch, it = int(state["epoch"]), int(state["iter"])
            if info.is_main:
                logger.info(f"resuming the selector from {ckpt} after epoch {start_epoch}")
        elif info.is_main:
            logger.warning(f"--resume: no checkpoint at {ckpt}; training from the start")
    model: torch.nn.Module = step
    if info.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=loader_workers(cfg.workers),
                        collate_fn=collate, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    if info.is_main and (advice := warmup_advice(cfg, cfg.epochs * len(loader))):
        logger.warning(advice)
    step.train()
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.epochs):
        sums: dict[str, float] = {}
        count, t_epoch = 0, time.perf_counter()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        bar = progress(loader, desc=f"select: train epoch {epoch + 1}/{cfg.epochs}", total=len(loader),
                       unit="batch")
        with logging_to_tqdm():
            for batch in bar:
                for s in batch.failed:
                    logger.warning(f"image {s.image_id} skipped in training: {s.error}")
                lr = learning_rate(cfg, info.world_size, epoch, it)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                rng = np.random.default_rng([cfg.seed, epoch, it, info.rank])
                with _autocast(device, cfg):
                    losses = model(batch.images.to(device, non_blocking=True), batch.samples, True, rng)
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                it += 1
                last = {k: float(v.detach()) for k, v in losses.items()}
                sums = {k: sums.get(k, 0.0) + v for k, v in last.items()}
                count += 1
                if not np.isfinite(float(loss.detach())):
                    raise FloatingPointError(f"the selector's loss became {float(loss)} at iteration {it}")
                bar.set_postfix({**{k: f"{v:.4f}" for k, v in last.items()}, "lr": f"{lr:.2e}"})
        if info.is_main:
            save_checkpoint(ckpt, step, categories, epoch + 1, it, optimizer, scaler)
            record = {"epoch": epoch + 1, "iter": it, "lr": lr if count else None,
                      "seconds": round(time.perf_counter() - t_epoch, 3),
                      **{k: v / max(count, 1) for k, v in sums.items()}}
            with disk_full_names(work_dir / METRICS_NAME), open(work_dir / METRICS_NAME, "a") as f:
                append_record(f, record, sync=False)
    train_s = time.perf_counter() - t0
    epochs_run = cfg.epochs - start_epoch
    return {"train_s": train_s, "iterations": it, "epochs_run": epochs_run, "images": len(dataset),
            "s_per_image_epoch": train_s / max(1, epochs_run * len(dataset)), "last_losses": last}


@torch.no_grad()
def run_selector(step: SelectorStep, dataset: BagDataset, cfg: SelectConfig, device: torch.device,
                 info: DistInfo) -> tuple[dict[int, PointChoice], dict[int, str]]:
    """Choose a proposal for every point of ``dataset`` (this rank's share, gathered on all).

    Returns:
        ``(choices by annotation id, reasons by image id of the images that could not be read)``.
    """
    step.to(device).eval()
    shard = Subset(dataset, list(range(info.rank, len(dataset), info.world_size)))
    loader = DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, num_workers=loader_workers(cfg.workers),
                        collate_fn=collate)
    choices: dict[int, PointChoice] = {}
    failed: dict[int, str] = {}
    with logging_to_tqdm():
        for batch in progress(loader, desc="select: choose", total=len(loader), unit="batch"):
            for s in batch.failed:
                failed[s.image_id] = s.error or "unreadable"
            if not batch.samples:
                continue
            with _autocast(device, cfg):
                out = step(batch.images.to(device), batch.samples, False)
            choices.update({c.ann_id: c for c in out})
    if info.world_size > 1:
        gathered: list = [None] * info.world_size
        dist.all_gather_object(gathered, (choices, failed))
        for c, f in gathered:
            choices.update(c)
            failed.update(f)
    return choices, failed
