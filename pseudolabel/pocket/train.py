"""Training the pocket SAM: SAM's recipe on generated scenes, on a CPU, repeatable from a seed.

Each step draws one scene (:mod:`.scenes`), runs SAM's image encoder once on it in its own frame
(resized and padded exactly as :class:`pseudolabel.core.engines.sam1.SamEngine` does), picks
``prompts_per_image`` target masks (objects and parts of at least ``min_target_area`` px; every
target once, then repeats with new clicks when the scene has fewer) and runs SAM's interactive loop on them
(:mod:`.prompts`): a first prompt — a click, a noisy box, or both — then ``iterations − 1``
correction clicks with the previous logits as the mask prompt. A share ``coarse_share`` of the
scenes (0 by default) start instead from a refinement prompt built from a rough mask of each
target (:mod:`.degrade`) by a function the caller hands in. Every decoder call is trained with
:func:`.losses.sam_loss` on the 3 multimask outputs and, when the prompt is not a lone click, on
the single output as well; the losses of all calls add up before one AdamW step.

Repeatability: the weights are a function of the configuration alone (scene seeds and prompt
generators derive from ``seed`` and the step), with one torch thread; the run stops after
``steps``, never after a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pseudolabel.core.engines.base import (
    IMAGE_SIZE,
    boxes_to_input_frame,
    coords_to_input_frame,
    resized_hw,
)
from pseudolabel.core.engines.loading import build_architecture
from pseudolabel.core.engines.sam1 import (
    encoder_input,
    to_model_masks,
    use_fused_attention,
)

from . import prompts as P
from .decoder import predict_masks
from .degrade import rough_mask
from .losses import sam_loss
from .quality import scene_seed
from .scenes import make_scene


@dataclass
class PocketConfig:
    """Everything that determines the trained weights."""

    engine: str = "sam_pocket"
    seed: int = 0
    steps: int = 14000
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    prompts_per_image: int = 8
    iterations: int = 2
    first_prompt: tuple[float, float, float] = (0.5, 0.3, 0.2)  # click, box, click + box
    threads: int = 1
    # SAM weighs focal:dice 20:1; from scratch in a few hundred steps that collapsed to empty
    # masks (IoU 0 after 100 steps), dice-led training did not: 1:1 (docs/pocket.md)
    focal_weight: float = 1.0
    # targets with fewer pixels (in the scene) are never asked for: the held-out measure skips
    # them too, and at 64² logits they are a few cells
    min_target_area: int = 100
    # share of scenes whose first prompt is a refinement prompt built from a rough mask
    # (:mod:`.degrade`) by the ``coarse_prompts`` function handed to :func:`train`
    coarse_share: float = 0.0


def prepare_image(model, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """``H×W×3`` uint8 → the encoder's ``1×3×F×F`` input and the resized ``(h', w')`` in the
    1024 frame (exactly as the engine prepares it: :func:`encoder_input`)."""
    h, w = image.shape[:2]
    nh, nw = resized_hw(h, w)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    return encoder_input(model, x, (nh, nw)), (nh, nw)


def low_res_size(model) -> int:
    """Side of the decoder's own logits (256 for SAM, 64 for the pocket SAM)."""
    return int(model.prompt_encoder.mask_input_size[0])


def lowres_targets(masks: list[np.ndarray], resized: tuple[int, int], low_res: int = 256) -> torch.Tensor:
    """Original-size bool masks → ``B×L×L`` bool in the decoder's low-resolution frame
    (``L = low_res``, ``1024 / L`` input-frame pixels per cell): resized (antialiased) straight to
    the cells the image covers, thresholded at half, padded right and bottom."""
    nh, nw = resized
    scale = IMAGE_SIZE / low_res
    ch, cw = math.ceil(nh / scale), math.ceil(nw / scale)
    m = torch.from_numpy(np.stack(masks)).float()[:, None]
    m = F.interpolate(m, (ch, cw), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(m, (0, low_res - cw, 0, low_res - ch))[:, 0] > 0.5


def _lr_at(step: int, cfg: PocketConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _decode(model, feats, points, boxes, mask_input):
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return predict_masks(model.mask_decoder, feats, model.prompt_encoder.get_dense_pe(), sparse, dense)


#: ``(rough masks B×H×W bool, resized (h', w')) → decode kwargs``: ``point_coords`` ``B×K×2`` and
#: ``boxes`` ``B×4`` in the scene's pixels (x, y; inclusive max), ``point_labels`` ``B×K`` (−1 =
#: no point), ``mask_input`` ``B×1×256×256`` logits; e.g. SAMRefiner's prompts (the training script)
CoarsePrompts = Callable[[np.ndarray, tuple[int, int]], dict]


def _coarse_first_prompt(model, masks: list[np.ndarray], resized: tuple[int, int], rng: np.random.Generator,
                         coarse_prompts: CoarsePrompts):
    """Points, labels, boxes (1024 frame) and mask_input (the model's size) from rough masks."""
    rough = np.stack([rough_mask(m, rng) for m in masks])
    args = coarse_prompts(rough, resized)
    hw = rough.shape[1:]
    coords = torch.as_tensor(coords_to_input_frame(args["point_coords"], hw, resized), dtype=torch.float32)
    labels = torch.as_tensor(args["point_labels"], dtype=torch.int64)
    boxes = args.get("boxes")
    if boxes is not None:
        boxes = torch.as_tensor(boxes_to_input_frame(boxes, hw, resized), dtype=torch.float32)
    mask_input = args.get("mask_input")
    if mask_input is not None:
        mask_input = to_model_masks(model, torch.as_tensor(mask_input, dtype=torch.float32))
    return coords, labels, boxes, mask_input


def train_step(model, step: int, cfg: PocketConfig,
               coarse_prompts: CoarsePrompts | None = None) -> tuple[torch.Tensor, dict]:
    """The loss of one scene (summed over SAM's interactive iterations) and its statistics."""
    rng = np.random.default_rng(scene_seed(cfg.seed, step))
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    scene = make_scene(scene_seed(cfg.seed, step))
    candidates = [m for m in scene.targets() if m.sum() >= cfg.min_target_area] or scene.targets()
    # every target at least once when there are enough prompts, the rest drawn again (new clicks)
    n = cfg.prompts_per_image
    pick = rng.permutation(len(candidates))[:n]
    if n > len(candidates):
        pick = np.concatenate([pick, rng.choice(len(candidates), size=n - len(candidates))])
    x, resized = prepare_image(model, scene.image)
    low_res = low_res_size(model)
    scale = IMAGE_SIZE / low_res
    targets = lowres_targets([candidates[i] for i in pick], resized, low_res)
    feats = model.image_encoder(x)
    coarse = cfg.coarse_share > 0 and rng.random() < cfg.coarse_share
    first = -1 if coarse else rng.choice(3, p=cfg.first_prompt)
    coords = torch.zeros(len(pick), 0, 2)
    labels = torch.zeros(len(pick), 0, dtype=torch.int64)
    boxes = mask_input = None
    if coarse:
        if coarse_prompts is None:
            raise ValueError("coarse_share > 0 needs a coarse_prompts function")
        coords, labels, boxes, mask_input = _coarse_first_prompt(
            model, [candidates[i] for i in pick], resized, rng, coarse_prompts)
    if first in (0, 2):
        coords, labels = P.point_in_mask(targets, gen, scale), torch.ones(len(pick), 1, dtype=torch.int64)
    if first in (1, 2):
        boxes = P.noisy_boxes(targets, gen, scale=scale)
    total = torch.zeros(())
    stats = {"mask": 0.0, "iou_mse": 0.0, "iou_first": 0.0, "iou_last": 0.0}
    for it in range(cfg.iterations):
        points = (coords, labels) if coords.shape[1] else None
        logits, iou_pred = _decode(model, feats, points, boxes, mask_input)
        loss, parts = sam_loss(logits[:, 1:], iou_pred[:, 1:], targets, focal_weight=cfg.focal_weight)
        lone_click = boxes is None and coords.shape[1] == 1 and mask_input is None
        if not lone_click:
            loss1, _ = sam_loss(logits[:, :1], iou_pred[:, :1], targets, focal_weight=cfg.focal_weight)
            loss = loss + loss1
        total = total + loss / cfg.iterations
        stats["mask"] += parts["mask"] / cfg.iterations
        stats["iou_mse"] += parts["iou_mse"] / cfg.iterations
        stats["iou_first" if it == 0 else "iou_last"] = parts["iou"]
        if it + 1 == cfg.iterations:
            break
        with torch.no_grad():  # the next prompt: a correction click and the previous logits
            out = 1 + iou_pred[:, 1:].argmax(1) if lone_click else torch.zeros(len(pick), dtype=torch.long)
            prev = logits[torch.arange(len(pick)), out][:, None]
            pt, lb = P.correction_points(prev[:, 0] > 0, targets, gen, scale)
        coords, labels = torch.cat([coords, pt], 1), torch.cat([labels, lb], 1)
        mask_input = prev.detach()
    return total, stats


def _optimizer(model, cfg: PocketConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def train(cfg: PocketConfig, log=print, resume: dict | None = None, save_every: int = 0,
          save=None, log_every: int = 25, coarse_prompts: CoarsePrompts | None = None):
    """Train from scratch for ``cfg.steps``; returns the model in eval mode.

    Args:
        cfg: the recipe.
        log: called with one line every ``log_every`` steps.
        resume: a state from ``save`` (``step``, ``model``, ``optimizer``) to continue from; the
            result is the same as an uninterrupted run.
        save_every, save: call ``save(state)`` every ``save_every`` steps.
        coarse_prompts: builds the first prompt of the ``coarse_share`` scenes (see
            :data:`CoarsePrompts`); required when that share is not 0.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_architecture(cfg.engine, seed=cfg.seed)
    use_fused_attention(model)
    model.train()
    opt = _optimizer(model, cfg)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        start = int(resume["step"])
    t0, cpu0 = time.perf_counter(), time.process_time()
    window: list[dict] = []
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        loss, stats = train_step(model, step, cfg, coarse_prompts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append(stats)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            avg = {k: sum(s[k] for s in window) / len(window) for k in window[0]}
            window = []
            log(f"step {step + 1}/{cfg.steps} lr {_lr_at(step, cfg):.2e} loss {avg['mask']:.3f} "
                f"iou_mse {avg['iou_mse']:.3f} iou first {avg['iou_first']:.3f} last {avg['iou_last']:.3f} "
                f"wall {time.perf_counter() - t0:.0f}s cpu {time.process_time() - cpu0:.0f}s")
        if save is not None and save_every and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            save({"step": step + 1, "model": model.state_dict(), "optimizer": opt.state_dict()})
    return model.eval()


def config_record(cfg: PocketConfig) -> dict:
    return asdict(cfg)
