"""The official SAPNet code's box arithmetic, reproduced where it changes which mask is chosen.

Used under ``--reference official`` (see :mod:`.reference`). Boxes are ``XYXY`` in the network
input frame; the official code computes them in float32 and so do these functions, because two
of its rules depend on float32 rounding:

* the stage's top-1 box is the proposal times ``w = s / (s + 1e-8)`` (a top-1 "weighted
  merge", SAP_head.py l.310–314). Unless the score ``s`` is large (≳ 0.3) ``w`` is just below 1,
  so the box is a hair smaller than its proposal;
* BMS then considers candidates whose area is larger than the box's (l.371): the winner's own
  proposal qualifies, with IoU ≈ 1, and once accepted no later candidate can beat that IoU.

The IoU is mmdetection's (``union`` floored at 1e-6). Everything else of BMS (thresholds 0.6 /
0.3, the 2 px containment slack, the weighted updates) is the rule of :func:`.geometry.bms`.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6


def iou_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of ``...×4`` float32 XYXY boxes, union floored at 1e-6 (mmdetection)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = torch.max(area_a + area_b - inter, torch.tensor([EPS], dtype=a.dtype))
    return inter / union


def top1_box(proposal: np.ndarray, score: float | torch.Tensor, width: float, height: float) -> torch.Tensor:
    """The official top-1 box: ``proposal · s / (s + 1e-8)`` in float32, clamped to the image.

    Args:
        proposal: the winning proposal ``(x1, y1, x2, y2)``.
        score: its ``cls × ins`` score at the label (a float32 value).
        width, height: the image size in this frame.

    Returns:
        ``4`` float32 tensor.
    """
    s = torch.as_tensor(score, dtype=torch.float32).reshape(1, 1)
    weight = s / (s + 1e-8)
    box = (torch.as_tensor(np.asarray(proposal), dtype=torch.float32).reshape(1, 4) * weight)[0]
    box[0::2] = box[0::2].clamp(0, width)
    box[1::2] = box[1::2].clamp(0, height)
    return box


def bms(box: torch.Tensor, candidates: np.ndarray, expand_iou: float = 0.6, contain_iou: float = 0.3,
        slack: float = 2.0, minable: np.ndarray | None = None) -> tuple[torch.Tensor, str]:
    """BMS as the official code computes it (float32 areas, IoUs and updates).

    Args:
        box: ``4`` float32 top-1 box (:func:`top1_box`).
        candidates: ``3×4`` the point prompt's proposals.
        minable: None (official), or a bool per candidate: False ones are skipped
            (``rule_mining: scored``).

    Returns:
        The mined float32 box and the last branch taken (``expand``, ``contain``, ``none``).
    """
    box = box.clone().float()
    cands = torch.as_tensor(np.asarray(candidates), dtype=torch.float32).reshape(-1, 4)
    ref_area = (box[2] - box[0]) * (box[3] - box[1])
    best = torch.zeros(1)
    branch = "none"
    for c, cand in enumerate(cands):
        area = (cand[2] - cand[0]) * (cand[3] - cand[1])
        if not bool(ref_area < area) or (minable is not None and not minable[c]):
            continue
        iou = iou_f32(box[None], cand[None])
        if bool(iou > expand_iou) and bool(iou > best):
            box = (cand + box * iou) / (iou + 1)
            branch = "expand"
        elif (bool(iou > contain_iou) and bool(cand[0] - slack < box[0]) and bool(cand[1] - slack < box[1])
              and bool(cand[2] + slack > box[2]) and bool(cand[3] + slack > box[3]) and bool(iou > best)):
            box = ((cand * iou) + box) / (iou + 1)
            branch = "contain"
        else:
            continue
        best = iou
        ref_area = area
    return box, branch


def ppg_source_index(proposals: np.ndarray, mined: torch.Tensor | np.ndarray) -> int:
    """Which proposal the official PPG rescales (SAP_head.py l.189).

    The first proposal whose four coordinates are each within 1 px (strictly) of the mined
    stage-0 box, else the bag's last proposal.
    """
    props = torch.as_tensor(np.asarray(proposals), dtype=torch.float32).reshape(-1, 4)
    m = torch.as_tensor(np.asarray(mined), dtype=torch.float32).reshape(4)
    close = ((props - 1 < m) & (m < props + 1)).all(dim=1)
    hits = close.nonzero().flatten()
    return int(hits[0]) if len(hits) else len(props) - 1


def final_index(proposals: np.ndarray, mined: torch.Tensor | np.ndarray) -> int:
    """The proposal whose box has the highest float32 IoU with the mined box (first on ties)."""
    props = torch.as_tensor(np.asarray(proposals), dtype=torch.float32).reshape(-1, 4)
    m = torch.as_tensor(np.asarray(mined), dtype=torch.float32).reshape(1, 4).expand_as(props)
    k = len(props)
    # the official code sums K equal IoUs per proposal before its argmax; so do we (same rounding)
    iou = iou_f32(props, m)[:, None].expand(k, k).sum(dim=1)
    return int(torch.argmax(iou))
