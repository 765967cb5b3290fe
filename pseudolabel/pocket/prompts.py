"""SAM's training prompts, sampled from target masks in its 256×256 low-resolution frame.

SAM (Kirillov et al. 2023, §A "Training algorithm") starts each mask with a foreground point
drawn uniformly from the mask or with its box, each side moved by noise of standard deviation
10 % of the side (at most 20 px); then, for several iterations, adds one point drawn uniformly
from the error region of the previous prediction (a positive point where the object was missed, a
negative one where background was taken) and feeds the previous mask logits back as the mask
prompt. These functions draw those prompts for a batch of ``B`` targets at once.

Frames: targets and predictions are ``B×256×256`` in SAM's low-resolution frame (``scale`` = 4
input pixels per cell; a model with a smaller frame has coarser cells, e.g. ``B×128×128``, scale 8); points and boxes come back in SAM's 1024 input frame, points ``(x, y)``, boxes XYXY
with an exclusive max, ready for ``PromptEncoder`` (which adds the half-pixel shift itself).
"""

from __future__ import annotations

import torch

SCALE = 4  # input-frame pixels per low-resolution cell (1024 / 256)


def _uniform_cells(region: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One cell drawn uniformly from each of ``B`` regions (``B×h×w`` bool).

    Returns:
        ``(xy, found)``: ``B×2`` cell coordinates ``(x, y)`` as float, and ``B`` bool (False
        where a region is empty; its cell is then ``(0, 0)``).
    """
    b, _, w = region.shape
    flat = region.reshape(b, -1).float()
    found = flat.sum(1) > 0
    weights = torch.where(found[:, None], flat, torch.ones_like(flat))
    idx = torch.multinomial(weights, 1, generator=gen)[:, 0]
    xy = torch.stack([idx % w, idx // w], 1).float()
    return torch.where(found[:, None], xy, torch.zeros_like(xy)), found


def cells_to_input(xy: torch.Tensor, gen: torch.Generator, scale: float = SCALE) -> torch.Tensor:
    """Low-resolution cells ``(x, y)`` → input-frame points, uniform inside each cell's
    ``scale × scale`` pixels."""
    return xy * scale + torch.rand(xy.shape, generator=gen) * scale - 0.5


def point_in_mask(targets: torch.Tensor, gen: torch.Generator, scale: float = SCALE) -> torch.Tensor:
    """A foreground click per target, uniform over the mask: ``B×1×2`` input-frame ``(x, y)``."""
    xy, _ = _uniform_cells(targets, gen)
    return cells_to_input(xy, gen, scale)[:, None]


def target_boxes(targets: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """Tight boxes of ``B×256×256`` masks in the input frame: ``B×4`` XYXY, exclusive max."""
    b, h, w = targets.shape
    rows, cols = targets.any(2), targets.any(1)
    ar_h = torch.arange(h, dtype=torch.float32)
    ar_w = torch.arange(w, dtype=torch.float32)
    big = 1e9
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -big).amax(1) + 1
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -big).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1) * scale


def noisy_boxes(targets: torch.Tensor, gen: torch.Generator, std: float = 0.1, max_px: float = 20.0,
                limit: float = 1024.0, scale: float = SCALE) -> torch.Tensor:
    """SAM's box prompts: each side of the tight box moved by N(0, (std·side)²), capped at ±max_px.

    Returns:
        ``B×4`` XYXY in the input frame, clipped to ``[0, limit]`` and kept at least 1 px wide.
    """
    box = target_boxes(targets, scale)
    wh = (box[:, 2:] - box[:, :2]).repeat(1, 2)
    noise = torch.randn(box.shape, generator=gen) * std * wh
    box = box + noise.clamp(-max_px, max_px)
    box = box.clamp(0, limit)
    lo = torch.minimum(box[:, :2], box[:, 2:] - 1)
    return torch.cat([lo, torch.maximum(box[:, 2:], lo + 1)], 1)


def correction_points(pred: torch.Tensor, targets: torch.Tensor, gen: torch.Generator,
                      scale: float = SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's next click: uniform over the error region of each prediction.

    Args:
        pred: ``B×256×256`` bool, the previous prediction.
        targets: ``B×256×256`` bool.

    Returns:
        ``(points, labels)``: ``B×1×2`` input-frame ``(x, y)`` and ``B×1`` labels — 1 where the
        cell was missed (false negative), 0 where it was wrongly taken (false positive), and a
        positive point inside the target when the prediction is already exact.
    """
    error = pred ^ targets
    xy, found = _uniform_cells(error, gen)
    fallback, _ = _uniform_cells(targets, gen)
    xy = torch.where(found[:, None], xy, fallback)
    b = torch.arange(len(xy))
    label = targets[b, xy[:, 1].long(), xy[:, 0].long()].long()
    return cells_to_input(xy, gen, scale)[:, None], label[:, None]
