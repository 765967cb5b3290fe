"""SOLOv2 inference: point-NMS, maskness, matrix NMS, top-k before upsampling, boxes from masks.

Per image: category probabilities after point-NMS → candidates above ``score_thr`` → their masks
at stride 4 (``kernel · F``) → masks whose area is not above their level's stride are dropped →
score × maskness (mean probability inside the binary mask) → the ``nms_pre`` best → matrix NMS
→ scores ≥ ``update_thr`` → the ``max_per_img`` best. Only those are upsampled to the original
image size (in chunks), so memory does not grow with the number of candidates.

Matrix NMS kernels are chosen by name from :data:`MATRIX_NMS_KERNELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def point_nms(probs: Tensor, kernel: int = 2) -> Tensor:
    """Keep only the cells that are the maximum of their ``kernel×kernel`` window (SOLO's point-NMS).

    Args:
        probs: ``B×C×S×S`` category probabilities.

    Returns:
        ``probs`` with non-maximum cells set to 0.
    """
    hmax = F.max_pool2d(probs, kernel, stride=1, padding=1)
    if kernel == 2:
        hmax = hmax[..., :-1, :-1]
    return probs * (hmax == probs).to(probs.dtype)


def _gaussian_decay(iou: Tensor, comp: Tensor, sigma: float) -> Tensor:
    return torch.exp(-sigma * (iou ** 2 - comp ** 2))


def _linear_decay(iou: Tensor, comp: Tensor, sigma: float) -> Tensor:
    return (1 - iou) / (1 - comp).clamp(min=1e-6)


#: kernel name -> f(iou_ij, compensation_i, sigma) giving the decay of candidate j by candidate i
MATRIX_NMS_KERNELS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "gaussian": _gaussian_decay,
    "linear": _linear_decay,
}


def matrix_nms(masks: Tensor, labels: Tensor, scores: Tensor, kernel: str = "gaussian",
               sigma: float = 2.0) -> Tensor:
    """Matrix NMS (SOLOv2): decay every score by its overlap with higher-scored masks of its class.

    For candidates sorted by score, the decay of ``j`` is ``min_{i<j, same class} f(iou_ij, c_i)``
    where ``c_i`` is the largest IoU of ``i`` with any higher-scored mask of its class (how much
    ``i`` itself is suppressed). Gaussian: ``exp(−σ(iou² − c²))``; linear: ``(1 − iou)/(1 − c)``.

    Args:
        masks: ``K×h×w`` binary masks (any dtype, non-zero = foreground).
        labels: ``K`` class indices.
        scores: ``K`` scores.
        kernel: a key of :data:`MATRIX_NMS_KERNELS`.
        sigma: the gaussian kernel's sigma (2.0 in SOLOv2).

    Returns:
        ``K`` decayed scores, in the input order.
    """
    if kernel not in MATRIX_NMS_KERNELS:
        raise ValueError(f"unknown matrix NMS kernel {kernel!r}; choose one of {', '.join(MATRIX_NMS_KERNELS)}")
    k = scores.numel()
    if k == 0:
        return scores.clone()
    order = scores.argsort(descending=True)
    m = masks[order].reshape(k, -1).float()
    lab = labels[order]
    areas = m.sum(1)
    inter = m @ m.t()
    union = areas[:, None] + areas[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(inter))
    same = (lab[:, None] == lab[None, :]).float()
    iou = (iou * same).triu(diagonal=1)  # iou[i, j] for i scored above j, same class
    comp = iou.max(dim=0).values  # c_i = max IoU of i with its betters
    decay = MATRIX_NMS_KERNELS[kernel](iou, comp[:, None].expand(k, k), sigma)
    # only pairs i < j count; others must not lower the minimum
    upper = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(diagonal=1)
    decay = torch.where(upper, decay, torch.ones_like(decay)).min(dim=0).values
    out = torch.empty_like(scores)
    out[order] = scores[order] * decay.to(scores.dtype)
    return out


def masks_to_boxes_xyxy(masks: Tensor) -> Tensor:
    """Tight ``XYXY`` boxes (``K×4`` float, exclusive right/bottom) of ``K×H×W`` masks; empty → zeros."""
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4, device=masks.device)
    m = masks.bool()
    rows, cols = m.any(dim=2), m.any(dim=1)  # K×H, K×W
    h, w = m.shape[-2:]
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y1 = torch.where(rows, ar_h, h).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x1 = torch.where(cols, ar_w, w).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


@dataclass
class Prediction:
    """Instances found in one image, at its original size.

    Attributes:
        masks: ``K×H×W`` bool.
        scores: ``K`` float, best first.
        labels: ``K`` long, contiguous class indices.
        boxes: ``K×4`` float XYXY derived from the masks (exclusive right/bottom).
    """

    masks: Tensor
    scores: Tensor
    labels: Tensor
    boxes: Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


@dataclass
class InferenceParams:
    """Inference thresholds (SOLOv2 defaults)."""

    score_thr: float = 0.1
    mask_thr: float = 0.5
    nms_pre: int = 500
    update_thr: float = 0.05
    max_per_img: int = 100
    nms_kernel: str = "gaussian"
    nms_sigma: float = 2.0
    max_candidates: int = 2000  # cap on candidates whose masks are computed (highest scores)
    upsample_chunk: int = 16


def upsample_masks(soft: Tensor, input_hw: tuple[int, int], original_hw: tuple[int, int],
                   mask_thr: float, chunk: int = 16) -> Tensor:
    """Stride-4 soft masks of the padded input → binary masks at the original image size.

    Args:
        soft: ``K×h×w`` probabilities at stride 4 of the padded input.
        input_hw: size of the resized image inside the padding.
        original_hw: size of the original image.

    Returns:
        ``K×H0×W0`` bool, computed ``chunk`` masks at a time.
    """
    k, h, w = soft.shape
    out = torch.zeros((k, *original_hw), dtype=torch.bool, device=soft.device)
    for s in range(0, k, chunk):
        x = F.interpolate(soft[s:s + chunk, None].float(), size=(4 * h, 4 * w), mode="bilinear", align_corners=False)
        x = x[..., :input_hw[0], :input_hw[1]]
        x = F.interpolate(x, size=original_hw, mode="bilinear", align_corners=False)
        out[s:s + chunk] = x[:, 0] > mask_thr
    return out


def postprocess_image(cate_probs: list[Tensor], kernels: list[Tensor], mask_feat: Tensor,
                      strides: tuple[int, ...], input_hw: tuple[int, int], original_hw: tuple[int, int],
                      params: InferenceParams, upsample_all: bool = False) -> Prediction:
    """Turn the head outputs of one image into a :class:`Prediction`.

    Args:
        cate_probs: per level ``C×S×S`` probabilities after point-NMS.
        kernels: per level ``D×S×S`` dynamic kernels.
        mask_feat: ``D×h×w`` mask features (stride 4 of the padded input).
        strides: per level stride (masks whose stride-4 area is not above it are dropped).
        input_hw, original_hw: see :func:`upsample_masks`.
        upsample_all: the memory-hungry reference that upsamples all ``nms_pre`` candidates
            before NMS (for benchmarks only; the result is the same).
    """
    device = mask_feat.device
    num_classes = cate_probs[0].shape[0]
    d = mask_feat.shape[0]
    probs = torch.cat([c.reshape(num_classes, -1).t() for c in cate_probs])  # L×C
    kern = torch.cat([k.reshape(d, -1).t() for k in kernels])  # L×D
    stride = torch.cat([torch.full((c.shape[1] * c.shape[2],), float(s), device=device)
                        for c, s in zip(cate_probs, strides)])

    def empty() -> Prediction:
        return Prediction(torch.zeros((0, *original_hw), dtype=torch.bool, device=device),
                          torch.zeros(0, device=device), torch.zeros(0, dtype=torch.long, device=device),
                          torch.zeros(0, 4, device=device))

    cand = (probs > params.score_thr).nonzero()
    if cand.numel() == 0:
        return empty()
    scores = probs[cand[:, 0], cand[:, 1]]
    if scores.numel() > params.max_candidates:
        top = scores.topk(params.max_candidates).indices
        cand, scores = cand[top], scores[top]
    loc, labels = cand[:, 0], cand[:, 1]
    soft = (kern[loc].float() @ mask_feat.reshape(d, -1).float()).sigmoid().reshape(-1, *mask_feat.shape[1:])
    binary = soft > params.mask_thr
    areas = binary.sum(dim=(1, 2)).float()
    keep = areas > stride[loc]
    if not keep.any():
        return empty()
    soft, binary, areas, scores, labels = soft[keep], binary[keep], areas[keep], scores[keep], labels[keep]
    maskness = (soft * binary).sum(dim=(1, 2)) / areas
    scores = scores * maskness
    order = scores.argsort(descending=True)[: params.nms_pre]
    soft, binary, scores, labels = soft[order], binary[order], scores[order], labels[order]
    full = upsample_masks(soft, input_hw, original_hw, params.mask_thr, params.upsample_chunk) if upsample_all else None
    scores = matrix_nms(binary, labels, scores, params.nms_kernel, params.nms_sigma)
    keep = (scores >= params.update_thr).nonzero().flatten()
    if keep.numel() == 0:
        return empty()
    keep = keep[scores[keep].argsort(descending=True)][: params.max_per_img]
    masks = full[keep] if full is not None else upsample_masks(soft[keep], input_hw, original_hw,
                                                               params.mask_thr, params.upsample_chunk)
    nonempty = masks.flatten(1).any(dim=1)
    masks, keep = masks[nonempty], keep[nonempty]
    return Prediction(masks, scores[keep], labels[keep], masks_to_boxes_xyxy(masks))
