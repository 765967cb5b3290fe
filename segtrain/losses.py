"""SOLOv2 losses: sigmoid focal loss on the category grid, dice loss on the predicted masks, and
SAPNet's multi-mask proposal supervision (MPS) as an auxiliary dice term.

* category: sigmoid focal loss (alpha 0.25, gamma 2) summed over all cells and classes and
  divided by ``num_positive_cells + 1`` (so an image without instances is fine);
* mask: for every mask target (a positive cell and an instance that claims it: one per cell, or
  one per claimant under AdelaiDet's ``cell_conflict`` rule, see :mod:`segtrain.targets`),
  ``dice = 1 − 2·Σpt / (Σp² + ε + Σt² + ε)`` between the sigmoid of the cell's mask and the
  instance's mask at stride 4, averaged over mask targets, weight 3;
* MPS: the same dice between the cell's mask and the instance's alternative proposals at the
  chosen ranks; per cell the mean over the ranks present (``reduce="mean"``, the paper's
  ``γ = 0.25``) or their sum (``reduce="sum"``; the official code is ``weight = 0.5/6`` with
  ``sum``), times ``mps_weight`` and added inside the dice term (so it also carries weight 3).
  With all three ranks present the two conventions give the same number.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from .targets import InstanceTargets, LevelTargets

MPS_REDUCTIONS = ("mean", "sum")


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1e-3) -> Tensor:
    """Row-wise dice loss between ``K×P`` mask logits and ``K×P`` targets in ``[0, 1]``; returns ``K``."""
    p = logits.float().sigmoid()
    t = targets.float()
    inter = (p * t).sum(dim=1)
    denom = (p * p).sum(dim=1) + eps + (t * t).sum(dim=1) + eps
    return 1.0 - 2.0 * inter / denom


def focal_loss(logits: Tensor, labels: Tensor, num_classes: int, alpha: float = 0.25,
               gamma: float = 2.0) -> Tensor:
    """Summed sigmoid focal loss of ``M×C`` logits against ``M`` labels (``C`` = background)."""
    onehot = torch.zeros_like(logits, dtype=torch.float32)
    fg = labels < num_classes
    onehot[fg, labels[fg]] = 1.0
    return sigmoid_focal_loss(logits.float(), onehot, alpha=alpha, gamma=gamma, reduction="sum")


def _pad_to(masks: Tensor, h: int, w: int) -> Tensor:
    """Zero-pad the last two dims of ``masks`` to ``h×w`` (targets are top-left aligned)."""
    ph, pw = h - masks.shape[-2], w - masks.shape[-1]
    if ph < 0 or pw < 0:
        masks = masks[..., :h, :w]
        ph, pw = max(ph, 0), max(pw, 0)
    if ph or pw:
        masks = torch.nn.functional.pad(masks, (0, pw, 0, ph))
    return masks


def _mask_pairs(levels: list[LevelTargets], cells_per_level: list[int]) -> tuple[Tensor, Tensor]:
    """An image's mask targets over all levels: ``(cell, instance)`` pairs, cells numbered across
    the concatenated levels (level by level, row-major)."""
    cells, owners, offset = [], [], 0
    for lv, n in zip(levels, cells_per_level):
        c, o = lv.pairs()
        cells.append(c + offset)
        owners.append(o)
        offset += n
    return torch.cat(cells), torch.cat(owners)


def solo_losses(cate_preds: list[Tensor], kernel_preds: list[Tensor], mask_feats: Tensor,
                targets: list[InstanceTargets], level_targets: list[list[LevelTargets]], *,
                num_classes: int, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                focal_weight: float = 1.0, dice_weight: float = 3.0, dice_eps: float = 1e-3,
                mps_weight: float = 0.0, mps_ranks: tuple[int, ...] = (2, 4, 6),
                mps_reduce: str = "mean") -> dict[str, Tensor]:
    """The SOLOv2 (+ MPS) losses of a batch.

    Args:
        cate_preds: per level ``B×C×S×S`` category logits.
        kernel_preds: per level ``B×D×S×S`` dynamic kernels.
        mask_feats: ``B×D×h×w`` mask features at stride 4 of the padded batch.
        targets: per image :class:`InstanceTargets` (on the device of the predictions).
        level_targets: per image, per level :class:`LevelTargets` (any device).
        mps_ranks: 1-based ranks of the stage-1 ranking used by MPS; rank 1 is the selected
            mask, so rank ``r`` is ``alt_masks[:, r - 2]``.

    Returns:
        ``loss_cate``, ``loss_mask`` (dice incl. MPS) and, for logging, ``loss_mps`` (detached)
        and ``num_pos``.
    """
    if mps_reduce not in MPS_REDUCTIONS:
        raise ValueError(f"mps_reduce must be one of {MPS_REDUCTIONS}")
    device = mask_feats.device
    b, d, h, w = mask_feats.shape
    # category loss over every cell of every level and image
    logits = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, c.shape[1]) for c in cate_preds])
    labels = torch.cat([
        torch.stack([level_targets[i][lv].labels for i in range(b)]).reshape(-1)
        for lv in range(len(cate_preds))
    ]).to(device)
    num_pos = int((labels < num_classes).sum())
    loss_cate = focal_weight * focal_loss(logits, labels, num_classes, focal_alpha, focal_gamma) / (num_pos + 1)

    dice_terms: list[Tensor] = []
    mps_terms: list[Tensor] = []
    alt_cols = [r - 2 for r in mps_ranks if r >= 2]
    for i in range(b):
        pos, idx = _mask_pairs(level_targets[i], [k.shape[-2] * k.shape[-1] for k in kernel_preds])
        pos, idx = pos.to(device), idx.to(device)
        if pos.numel() == 0:
            continue
        kernels = torch.cat([k[i].reshape(d, -1) for k in kernel_preds], dim=1)[:, pos].t()  # K×D
        mask_logits = kernels @ mask_feats[i].reshape(d, -1)  # K×(h·w)
        gt = _pad_to(targets[i].masks, h, w)[idx].reshape(len(idx), -1)
        dice_terms.append(dice_loss(mask_logits, gt, dice_eps))
        tg = targets[i]
        if mps_weight > 0 and tg.alt_masks is not None and tg.alt_masks.shape[1] and alt_cols:
            cols = [c for c in alt_cols if c < tg.alt_masks.shape[1]]
            if not cols:
                continue
            valid = tg.alt_valid[idx][:, cols].float()  # K×R'
            alts = _pad_to(tg.alt_masks[:, cols], h, w)[idx]  # K×R'×h×w
            k, r = valid.shape
            per_rank = dice_loss(mask_logits.repeat_interleave(r, dim=0), alts.reshape(k * r, -1),
                                 dice_eps).reshape(k, r) * valid
            if mps_reduce == "mean":
                term = per_rank.sum(1) / valid.sum(1).clamp(min=1)
            else:
                term = per_rank.sum(1)
            mps_terms.append(term)
    if dice_terms:
        n = sum(t.numel() for t in dice_terms)
        loss_dice = torch.cat(dice_terms).sum() / n
        loss_mps = (mps_weight * torch.cat(mps_terms).sum() / n) if mps_terms else mask_feats.sum() * 0.0
    else:  # no instance in the batch: keep the graph connected for DDP
        loss_dice = mask_feats.sum() * 0.0 + sum(k.sum() for k in kernel_preds) * 0.0
        loss_mps = loss_dice * 0.0
    return {
        "loss_cate": loss_cate,
        "loss_mask": dice_weight * (loss_dice + loss_mps),
        "loss_mps": (dice_weight * loss_mps).detach(),
        "num_pos": torch.tensor(float(num_pos), device=device),
    }
