"""SAMRefiner++: adapt SAM's IoU prediction to a dataset with a rank-4 LoRA (ALGORITHMS.md §4).

SAM keeps the multimask output with the highest *predicted* IoU, and on a new domain that
prediction may prefer the wrong granularity. SAMRefiner++ adds a low-rank update to the last
layer of SAM's IoU head only, everything else frozen, and trains it so that the output that
agrees best with the coarse mask (highest IoU with it) is ranked first: a pairwise margin
ranking loss (margin 0.02) between that output's predicted IoU and each other output's.
SGD, lr 0.01, batch 5 masks, 1 epoch, lr /10 after steps 60 and 100.

Because only the last linear layer changes, its input (the IoU token's hidden vector after the
earlier layers, 256 values per object) is the same before and after training; it is recorded
once per object with the first-iteration prompts of `sap refine`, and training runs on those
vectors — exactly equivalent to back-propagating through the frozen model, and CPU-friendly.

The adapter file (``torch.save``) holds the LoRA matrices, the rank and scale, and the model
type and checkpoint sha256 it was trained for; :func:`apply_adapter` refuses any other model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pseudolabel.core.coco import annotations_by_image, load_coco_json
from pseudolabel.core.errors import ImageError, InputError
from pseudolabel.core.io import atomic_path
from pseudolabel.core.progress import logger, logging_to_tqdm, progress
from pseudolabel.core.rle import decode_rle
from pseudolabel.core.engines.base import default_prompt_batch

from .inputs import EmbeddingSource, classify_segmentation
from .lora import ADAPTER_FORMAT, ADAPTER_VERSION, LoRALinear, base_linear, iou_head_last_layer, remove_adapter
from .refiner import PromptState, RefineConfig, build_prompts, engine_for, make_sampler

@dataclass
class AdaptConfig:
    """Training settings of `sap refine adapt` (ALGORITHMS.md §4)."""

    rank: int = 4
    alpha: float = 4.0  # LoRA scale = alpha / rank
    margin: float = 0.02
    lr: float = 0.01
    momentum: float = 0.0
    batch_size: int = 5
    epochs: int = 1
    milestones: tuple[int, ...] = (60, 100)
    lr_decay: float = 0.1
    seed: int = 0


@dataclass
class RankingData:
    """What training needs per object.

    Attributes:
        hidden: ``N×256`` inputs of the last IoU layer (first-iteration prompts).
        coarse_iou: ``N×3`` IoU of each multimask output with the coarse mask.
    """

    hidden: torch.Tensor
    coarse_iou: torch.Tensor


@torch.no_grad()
def collect_image(engine, emb, masks: np.ndarray, cfg: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Hidden vectors (``N×256``) and output-vs-coarse IoUs (``N×3``) of one image's masks."""
    sampler = make_sampler(cfg, emb)
    captured: list[np.ndarray] = []
    layer = iou_head_last_layer(engine)
    hook = layer.register_forward_hook(lambda m, inp, out: captured.append(inp[0].float().cpu().numpy().copy()))
    hidden, ious = [], []
    try:
        step = cfg.chunk or default_prompt_batch(engine.device)
        for start in range(0, len(masks), step):
            chunk = masks[start:start + step]
            captured.clear()
            state = PromptState(chunk, cfg, sampler)
            low_res, _ = engine.decode(emb, **build_prompts(state, emb.input_size), multimask=True)
            outs = engine.upscale(low_res, emb).cpu().numpy()  # B×3×H×W
            coarse = chunk[:, None]
            inter = (outs & coarse).reshape(*outs.shape[:2], -1).sum(-1)
            union = (outs | coarse).reshape(*outs.shape[:2], -1).sum(-1)
            ious.append(inter / np.maximum(union, 1))
            hidden.append(captured[-1].reshape(len(chunk), -1))
    finally:
        hook.remove()
    return np.concatenate(hidden), np.concatenate(ious)


def ranking_loss(pred: torch.Tensor, coarse_iou: torch.Tensor, margin: float) -> torch.Tensor | None:
    """Mean pairwise margin ranking loss: the output with the best IoU to the coarse mask must
    out-score each output with a lower IoU by ``margin``. ``pred``, ``coarse_iou``: ``B×3``.
    Returns None when no pair exists (all outputs tie)."""
    best = coarse_iou.argmax(dim=1)
    rows = torch.arange(len(best))
    top_pred = pred[rows, best][:, None].expand_as(pred)
    pairs = coarse_iou < coarse_iou[rows, best][:, None]
    if not pairs.any():
        return None
    return F.margin_ranking_loss(top_pred[pairs], pred[pairs], torch.ones(int(pairs.sum())), margin=margin)


def ranking_accuracy(pred: torch.Tensor, coarse_iou: torch.Tensor) -> float:
    """Share of objects whose highest predicted IoU is the output closest to the coarse mask."""
    return float((pred.argmax(1) == coarse_iou.argmax(1)).float().mean()) if len(pred) else float("nan")


def train_lora(base: nn.Linear, data: RankingData, cfg: AdaptConfig) -> tuple[LoRALinear, dict[str, Any]]:
    """Train a LoRA on a copy of ``base`` (the last IoU layer) with the ranking loss.

    Returns:
        ``(lora, history)`` with losses per step, steps, and ranking accuracy before/after.
    """
    import copy

    base = copy.deepcopy(base).float().cpu()
    lora = LoRALinear(base, cfg.rank, cfg.alpha, cfg.seed)
    params = [lora.lora_a, lora.lora_b]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.lr_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    h, target = data.hidden.float(), data.coarse_iou.float()
    with torch.no_grad():
        acc_before = ranking_accuracy(lora(h)[:, 1:], target)
    losses: list[float] = []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(h), generator=gen)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            pred = lora(h[idx])[:, 1:]  # SAM's multimask outputs are IoU-head outputs 1..3
            loss = ranking_loss(pred, target[idx], cfg.margin)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    lora.eval()
    with torch.no_grad():
        acc_after = ranking_accuracy(lora(h)[:, 1:], target)
    return lora, {"steps": len(losses), "losses": losses, "objects": len(h),
                  "ranking_accuracy_before": acc_before, "ranking_accuracy_after": acc_after}


@dataclass
class AdaptSummary:
    images: int = 0
    objects: int = 0
    failed: list[tuple[Any, str]] = field(default_factory=list)
    history: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    out: str = ""

    def lines(self) -> list[str]:
        h = self.history
        first = np.mean(h["losses"][:5]) if h.get("losses") else float("nan")
        last = np.mean(h["losses"][-5:]) if h.get("losses") else float("nan")
        return [f"{self.objects} masks of {self.images} images, {h.get('steps', 0)} SGD steps in "
                f"{self.wall_s:.1f} s; loss {first:.4f} → {last:.4f}",
                f"best-output ranking accuracy {h.get('ranking_accuracy_before', float('nan')):.3f} → "
                f"{h.get('ranking_accuracy_after', float('nan')):.3f}",
                *[f"failed: image {i}: {r}" for i, r in self.failed],
                f"written: {self.out}"]


def adapt_coco(ann: str | os.PathLike, images_dir: str | os.PathLike, out: str | os.PathLike,
               cfg: RefineConfig | None = None, adapt: AdaptConfig | None = None, engine=None) -> AdaptSummary:
    """Train the SAMRefiner++ adapter on the coarse masks of a COCO JSON and save it to ``out``.

    Raises:
        InputError: unusable input, or no usable mask at all.
    """
    t0 = time.perf_counter()
    cfg = cfg or RefineConfig()
    adapt = adapt or AdaptConfig()
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist")
    coco = load_coco_json(ann)
    if engine is None:
        engine = engine_for(cfg)
    remove_adapter(engine)
    source = EmbeddingSource(engine, cfg.embeddings, cfg.rules.fp16_embeddings)
    summary = AdaptSummary(out=str(out))
    images = {img["id"]: img for img in coco["images"]}
    hidden, ious = [], []
    with logging_to_tqdm():
        for img_id, anns in progress(list(annotations_by_image(coco).items()), desc="adapt", unit="img"):
            img = images[img_id]
            rles = [classify_segmentation(a.get("segmentation"), img["height"], img["width"])[0] for a in anns]
            rles = [r for r in rles if r is not None]
            if not rles:
                continue
            try:
                emb = source.get(img, images_dir / img["file_name"])
            except ImageError as e:
                summary.failed.append((img_id, str(e)))
                logger.warning("image %s failed: %s", img_id, e)
                continue
            masks = np.stack([decode_rle(r) for r in rles]).astype(bool)
            h, iou = collect_image(engine, emb, masks, cfg)
            hidden.append(h)
            ious.append(iou)
            summary.images += 1
            summary.objects += len(masks)
    source.close()
    if not hidden:
        raise InputError(f"{ann} has no usable mask to adapt on")
    data = RankingData(torch.from_numpy(np.concatenate(hidden)), torch.from_numpy(np.concatenate(ious)))
    lora, history = train_lora(base_linear(engine), data, adapt)
    summary.history = history
    state = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, "rank": adapt.rank, "alpha": adapt.alpha,
             "lora_a": lora.lora_a.detach().cpu(), "lora_b": lora.lora_b.detach().cpu(),
             "model_type": engine.name, "checkpoint_sha256": engine.checkpoint_id,
             "prompts": list(cfg.prompts), "objects": summary.objects, "steps": history["steps"]}
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    from pseudolabel.core.config import write_run_config

    out = Path(out)
    write_run_config(out.with_name(out.stem + ".config.yaml"), "refine-adapt", adapt, refine=cfg,
                     sam=engine.info(), history={k: v for k, v in history.items() if k != "losses"})
    summary.wall_s = time.perf_counter() - t0
    return summary
