"""SAM's training losses: focal×20 + dice per mask, minimum over the multimask outputs, and the
IoU head's mean squared error (Kirillov et al. 2023, §A: "a linear combination of focal loss and
dice loss in a 20:1 ratio"; "the IoU prediction head is trained with mean-square-error loss
between the IoU prediction and the predicted mask's IoU with the ground truth mask"; with
ambiguity, "we only backpropagate the minimum loss over the predictions").

Shapes: logits ``B×C×h×w`` (C masks per prompt), targets ``B×h×w`` bool, optional per-cell
weights ``B×h×w`` (1 everywhere when absent).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), averaged over cells: ``B×C``."""
    t = targets[:, None].to(logits.dtype).expand_as(logits)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma * (alpha * t + (1 - alpha) * (1 - t))
    if weights is None:
        return loss.flatten(2).mean(-1)
    w = weights[:, None].expand_as(logits)
    return (loss * w).flatten(2).sum(-1) / w.flatten(2).sum(-1).clamp(min=1e-6)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
              eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice of ``sigmoid(logits)`` against the targets: ``B×C``."""
    t = targets[:, None].to(logits.dtype)
    p = torch.sigmoid(logits)
    if weights is not None:
        w = weights[:, None]
        p, t = p * w, t * w
    inter = (p * t).flatten(2).sum(-1)
    total = p.flatten(2).sum(-1) + t.expand_as(p).flatten(2).sum(-1)
    return 1 - (2 * inter + eps) / (total + eps)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with the targets, ``B×C`` (1 when both are empty)."""
    pred = logits > 0
    t = targets[:, None]
    inter = (pred & t).flatten(2).sum(-1).float()
    union = (pred | t).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor,
             weights: torch.Tensor | None = None, focal_weight: float = FOCAL_WEIGHT) -> tuple[torch.Tensor, dict]:
    """SAM's loss for one decoder call.

    Args:
        logits: ``B×C×h×w``; with C > 1 only the best output of each prompt is trained.
        iou_pred: ``B×C`` predicted IoUs.
        targets: ``B×h×w`` bool.
        weights: optional ``B×h×w`` cell weights (for losses on a subset of cells).
        focal_weight: the focal term's weight against dice (SAM: 20).

    Returns:
        ``(loss, parts)``: the scalar loss (mean over prompts) and a dict of detached floats
        (``mask``, ``iou_mse``, ``iou`` = mean true IoU of the trained outputs).
    """
    per = focal_weight * focal_loss(logits, targets, weights=weights) + dice_loss(logits, targets, weights)
    best = per.argmin(1)
    rows = torch.arange(len(best))
    mask_term = per[rows, best].mean()
    with torch.no_grad():
        true_iou = mask_iou(logits, targets)
    iou_term = F.mse_loss(iou_pred, true_iou)
    parts = {"mask": float(mask_term.detach()), "iou_mse": float(iou_term.detach()), "iou": float(true_iou[rows, best].mean())}
    return mask_term + iou_term, parts
