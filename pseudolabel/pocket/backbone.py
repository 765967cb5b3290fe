"""Pretraining the pocket backbone: supervised classification of object crops from generated
scenes, the way ImageNet pretraining teaches a ResNet what objects look like.

The pocket SAM stands in for SAM on :mod:`.scenes`; the pocket backbone stands in for the
ImageNet ResNet that SAPNet's selector starts from. Its classes are what a scene knows about a
region: the five shape kinds of :data:`.scenes.KINDS` (a crop around a whole object),
``part`` (a crop around a part of another colour) and ``background`` (a crop that holds no
object's bulk). A crop is the region's box, widened and shifted at random (as
RandomResizedCrop does on ImageNet), resized to ``crop`` px, flipped half of the time, and
normalised with the ImageNet mean and std the selector uses.

Scenes come from their own split (:func:`.quality.scene_seed` ``"backbone"``), disjoint from the
pocket SAM's training scenes and from every held-out set. The weights are a function of the
configuration (one torch thread, a fixed number of steps, every draw seeded from ``seed`` and
the step). Boxes are ``XYXY`` pixels, exclusive ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pseudolabel.core.resnet_fpn import resnet_body

from .quality import scene_seed
from .scenes import KINDS, Scene, make_scene
from .train import _lr_at

CLASSES = (*KINDS, "part", "background")
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)  # RGB, 0..255 (ImageNet's)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


@dataclass
class BackboneConfig:
    """Everything that determines the pretrained weights."""

    backbone: str = "resnet18_half"
    seed: int = 0
    threads: int = 1
    split: str = "backbone"  # the scenes it learns from (:func:`.quality.scene_seed`)
    # the data: per scene every object and part ``views`` times, and background crops
    crop: int = 64  # px a side
    views: int = 4  # drawing a scene costs more than a step
    background_per_scene: int = 3
    batch: int = 64
    label_smoothing: float = 0.1
    held_out: str = "test"  # the scenes of the held-out accuracy
    # AdamW, linear warm-up then cosine to ``min_lr_ratio``
    steps: int = 2500  # the committed weights' (docs/selector.md, "The pocket backbone")
    warmup: int = 20
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight ``XYXY`` box of a non-empty ``H×W`` bool mask (exclusive ends)."""
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def jitter_box(box: tuple[int, int, int, int], hw: tuple[int, int], rng: np.random.Generator,
               grow: tuple[float, float] = (1.0, 1.5), shift: float = 0.1) -> tuple[int, int, int, int]:
    """``box`` widened by a factor in ``grow`` per side length and moved by up to ``shift`` of
    its size, clipped to the ``(H, W)`` frame, at least 8 px a side."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, 8), max(y1 - y0, 8)
    w, h = w * rng.uniform(*grow), h * rng.uniform(*grow)
    cx, cy = cx + rng.uniform(-shift, shift) * w, cy + rng.uniform(-shift, shift) * h
    H, W = hw
    nx0, ny0 = int(np.clip(cx - w / 2, 0, W - 8)), int(np.clip(cy - h / 2, 0, H - 8))
    return nx0, ny0, int(np.clip(cx + w / 2, nx0 + 8, W)), int(np.clip(cy + h / 2, ny0 + 8, H))


def background_box(scene: Scene, rng: np.random.Generator, tries: int = 10) -> tuple[int, int, int, int] | None:
    """A random square box where no object covers more than 15 % of the box or holds more
    than 30 % of its own area; None when ``tries`` draws found none."""
    H, W = scene.image.shape[:2]
    for _ in range(tries):
        s = int(rng.uniform(0.15, 0.5) * min(H, W))
        x0, y0 = int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))
        inside = [m[y0:y0 + s, x0:x0 + s].sum() for m in scene.masks]
        if all(a <= 0.15 * s * s and a <= 0.3 * m.sum() for a, m in zip(inside, scene.masks)):
            return x0, y0, x0 + s, y0 + s
    return None


def scene_crops(scene: Scene, rng: np.random.Generator, cfg: BackboneConfig) -> tuple[list[np.ndarray], list[int]]:
    """Every labelled crop of a scene (``crop×crop×3`` float32, normalised) and its class index."""
    import cv2

    regions = [(m, k) for m, k in zip(scene.masks, scene.kinds)]
    regions += [(p, CLASSES.index("part")) for _, p in scene.parts]
    boxes = [(jitter_box(box_of(m), scene.image.shape[:2], rng), k) for m, k in regions for _ in range(cfg.views)]
    for _ in range(cfg.background_per_scene):
        if (b := background_box(scene, rng)) is not None:
            boxes.append((b, CLASSES.index("background")))
    crops, labels = [], []
    for (x0, y0, x1, y1), k in boxes:
        c = cv2.resize(scene.image[y0:y1, x0:x1], (cfg.crop, cfg.crop), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            c = c[:, ::-1]
        crops.append((c.astype(np.float32) - MEAN) / STD)
        labels.append(k)
    return crops, labels


def crop_batch(cfg: BackboneConfig, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At least ``cfg.batch`` crops (``B×3×crop×crop``) and labels (``B``) from the scenes of
    ``split`` numbered from ``index`` on; a pure function of its arguments."""
    rng = np.random.default_rng(scene_seed(cfg.seed, index, split))
    crops: list[np.ndarray] = []
    labels: list[int] = []
    j = 0
    while len(crops) < cfg.batch:
        c, lab = scene_crops(make_scene(scene_seed(cfg.seed, index * 16 + j, split)), rng, cfg)
        crops += c
        labels += lab
        j += 1
    x = torch.from_numpy(np.stack(crops[:cfg.batch])).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels[:cfg.batch])


def build_classifier(cfg: BackboneConfig) -> nn.Module:
    """The ResNet body with a :data:`CLASSES` head, BatchNorm trained (as on ImageNet)."""
    torch.manual_seed(cfg.seed)
    return resnet_body(cfg.backbone, nn.BatchNorm2d, num_classes=len(CLASSES))


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over ``batches``."""
    was = model.training
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    model.train(was)
    return hits / max(1, sum(len(y) for _, y in batches))


def pretrain(cfg: BackboneConfig, log=print, eval_batches: int = 8, eval_every: int = 500,
             resume: dict | None = None, save=None, save_every: int = 0) -> tuple[nn.Module, list[dict]]:
    """Train the classifier; returns it and the curve (step, loss, held-out accuracy).

    ``resume``: a state ``save`` received (``step``, ``model``, ``opt``, ``curve``); the run then
    continues to the same weights. Held-out accuracy is on crops of the ``cfg.held_out`` split.
    """
    torch.set_num_threads(cfg.threads)
    model = build_classifier(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    held_out = [crop_batch(cfg, cfg.held_out, i) for i in range(eval_batches)]
    start, curve = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        start, curve = resume["step"], resume["curve"]
    model.train()
    ema = math.nan
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        x, y = crop_batch(cfg, cfg.split, step)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        ema = value if math.isnan(ema) else 0.98 * ema + 0.02 * value
        if (step + 1) % eval_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": round(ema, 4), "held_out_acc": round(accuracy(model, held_out), 4)})
            log(f"step {step + 1}/{cfg.steps} lr {_lr_at(step, cfg):.2e} loss {ema:.3f} "
                f"held-out accuracy {curve[-1]['held_out_acc']:.3f}")
        if save is not None and save_every and (step + 1) % save_every == 0 and step + 1 < cfg.steps:
            save({"step": step + 1, "model": model.state_dict(), "opt": opt.state_dict(), "curve": curve})
    return model, curve
