"""Optimiser and learning-rate schedule (detectron2's SGD + linear warmup + multi-step decay).

Schedules are named in :data:`SCHEDULES` (iterations and decay steps at 16 images per batch).
A run with ``--iters N`` keeps the shape of its schedule: the steps move proportionally.
Warmup is capped at a tenth of the run so that short runs are not all warmup.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: name -> (max_iter, lr decay steps) for 16 images per batch (AdelaiDet SOLOv2 1x / 3x)
SCHEDULES: dict[str, tuple[int, tuple[int, ...]]] = {
    "1x": (90_000, (60_000, 80_000)),
    "3x": (270_000, (210_000, 250_000)),
}


@dataclass(frozen=True)
class LRSchedule:
    """``lr(it) = base · warmup(it) · gamma^(#steps ≤ it)`` with linear warmup from ``warmup_factor``."""

    base_lr: float
    max_iter: int
    steps: tuple[int, ...]
    warmup_iters: int
    warmup_factor: float = 0.01
    gamma: float = 0.1

    def __call__(self, it: int) -> float:
        factor = self.gamma ** sum(1 for s in self.steps if it >= s)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return self.base_lr * factor


def make_schedule(name: str, iters: int | None, base_lr: float, batch: int, base_batch: int = 16,
                  warmup_iters: int = 1000, warmup_factor: float = 0.01, gamma: float = 0.1,
                  steps: tuple[int, ...] | None = None) -> LRSchedule:
    """The schedule of a run: ``base_lr`` scaled linearly to the total ``batch``.

    Steps scaled to a short run that land on or after its last iteration never act and are
    dropped (``--iters 4`` of 1x keeps the step at 3, drops the one at 4), so that every schedule
    is one detectron2's ``WarmupMultiStepLR`` can express too.

    Args:
        name: a key of :data:`SCHEDULES`.
        iters: override of the schedule's length (steps scale with it), or ``None``.
        steps: explicit decay steps (override): increasing, after the warmup.

    Raises:
        ValueError: explicit steps that are not increasing, not positive or inside the warmup.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    max_iter, sched_steps = SCHEDULES[name]
    if iters is not None:
        sched_steps = tuple(round(s * iters / max_iter) for s in sched_steps)
        max_iter = iters
    warmup = min(warmup_iters, max_iter // 10)
    if steps is not None:
        steps = tuple(int(s) for s in steps)
        if any(b <= a for a, b in zip(steps, steps[1:])) or any(s < 1 for s in steps):
            raise ValueError(f"lr steps {list(steps)} must be positive and increasing")
        if steps and steps[0] < warmup:
            raise ValueError(f"lr step {steps[0]} falls inside the {warmup}-iteration warmup")
        sched_steps = steps
    sched_steps = tuple(s for s in dict.fromkeys(sched_steps) if s < max_iter)
    return LRSchedule(base_lr * batch / base_batch, max_iter, sched_steps, warmup, warmup_factor, gamma)


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.SGD:
    """SGD over the trainable parameters; no weight decay on normalisation layers (detectron2's
    ``WEIGHT_DECAY_NORM = 0``)."""
    norm_types = (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm)
    decay, no_decay = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (no_decay if isinstance(module, norm_types) else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
