"""Box geometry of SAPNet's selection: PDG, PPG, NPG, BMS and the final mask choice.

Pure NumPy functions on small arrays. Conventions: boxes are ``XYXY`` floats
``(x1, y1, x2, y2)``, points are ``(x, y)``, all in one pixel frame (during training and
selection that is the network input frame, i.e. the resized image). The numbers are those of
ALGORITHMS.md section 3 (official SAPNet code where it and the paper differ; the paper's values
are reachable through the keyword arguments).
"""

from __future__ import annotations

import numpy as np

from pseudolabel.core.rle import box_iou_xyxy

# PPG: 15 centre-preserving up-scalings 1.01 … 1.15, then 5 growths 1.08 … 1.10 (no same-class
# neighbour inside) or 5 shrinkings 1 − (0.005 / score)·n, n = 1..5.
PPG_SCALE_FACTORS = 1.0 + 0.01 * np.arange(1, 16)
PPG_GROW_FACTORS = 1.0 + 0.005 * np.arange(16, 21)
PPG_SHRINK_STEP = 0.005
PPG_EXTRA = len(PPG_SCALE_FACTORS) + len(PPG_GROW_FACTORS)  # 20 boxes added to each bag


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``N×4`` XYXY boxes (negative widths count as 0)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def points_inside(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``K×M`` bool: point m lies strictly inside box k (``x1 < x < x2`` and ``y1 < y < y2``)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = points[None, :, 0], points[None, :, 1]
    return ((boxes[:, 0:1] < x) & (x < boxes[:, 2:3]) & (boxes[:, 1:2] < y) & (y < boxes[:, 3:4]))


def pdg_distance_sum(boxes: np.ndarray, point: np.ndarray, others: np.ndarray,
                     root: float = 0.25) -> np.ndarray:
    """PDG's ``L`` per proposal: Σ over other same-class points inside the box of ``(dx²+dy²)^root``.

    Args:
        boxes: ``K×4`` proposals of the point.
        point: ``(x, y)`` of the bag's own point.
        others: ``M×2`` the other points of the same class in the image.
        root: 0.25 (official code: square root of the distance); 0.5 gives the paper's plain
            Euclidean distance.

    Returns:
        ``K`` sums, 0 where no other same-class point is inside.
    """
    others = np.asarray(others, dtype=np.float64).reshape(-1, 2)
    if len(others) == 0:
        return np.zeros(len(np.asarray(boxes).reshape(-1, 4)))
    d2 = ((others - np.asarray(point, dtype=np.float64).reshape(1, 2)) ** 2).sum(axis=1)
    inside = points_inside(boxes, others)
    return (inside * d2[None, :] ** root).sum(axis=1)


def pdg_scores(boxes: np.ndarray, point: np.ndarray, others: np.ndarray,
               root: float = 0.25) -> np.ndarray:
    """PDG score ``sigmoid(1 / L)`` per proposal (1 where no same-class neighbour is inside).

    The penalty multiplied into the stage-0 class logits is this score to the power 1/64
    (:func:`pdg_penalty`); PPG's shrink step uses the score itself.
    """
    dist = pdg_distance_sum(boxes, point, others, root)
    out = np.ones_like(dist)
    has = dist > 0
    out[has] = 1.0 / (1.0 + np.exp(-1.0 / dist[has]))
    return out


def pdg_penalty(scores: np.ndarray, power: float = 1.0 / 64) -> np.ndarray:
    """The factor on the stage-0 class logits: ``score ** power`` (paper: power d = 0.015)."""
    return np.asarray(scores, dtype=np.float64) ** power


def image_pdg_scores(points: np.ndarray, labels: np.ndarray, boxes: list[np.ndarray],
                     root: float = 0.25) -> list[np.ndarray]:
    """PDG scores of every bag of one image.

    Args:
        points: ``P×2`` the image's points.
        labels: ``P`` their class labels.
        boxes: P arrays ``K_i×4``, the proposals of each point.

    Returns:
        P arrays of ``K_i`` scores.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    out = []
    for i in range(len(points)):
        same = (labels == labels[i]) & (np.arange(len(points)) != i)
        out.append(pdg_scores(boxes[i], points[i], points[same], root))
    return out


def scale_box(box: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``F×4`` copies of ``box`` with width and height multiplied by each factor, centre kept."""
    box = np.asarray(box, dtype=np.float64).reshape(4)
    factors = np.asarray(factors, dtype=np.float64).reshape(-1, 1)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return np.concatenate([cx - hw * factors, cy - hh * factors, cx + hw * factors, cy + hh * factors],
                          axis=1)


def ppg_factors(pdg_score: float) -> np.ndarray:
    """The 20 PPG scale factors for a stage-0 box whose PDG score is ``pdg_score``."""
    if pdg_score >= 1.0:
        last = PPG_GROW_FACTORS
    else:
        last = 1.0 - (PPG_SHRINK_STEP / pdg_score) * np.arange(1, 6)
    return np.concatenate([PPG_SCALE_FACTORS, last])


def ppg_boxes(proposals: np.ndarray, pseudo_box: np.ndarray, pdg_score: float) -> np.ndarray:
    """Positive Proposal Generation: the stage-1 bag of one point.

    Args:
        proposals: ``K×4`` the point's SAM proposal boxes.
        pseudo_box: the stage-0 box to rescale (the winner, mined by BMS when it is on).
        pdg_score: PDG score of the stage-0 winner (1: no same-class neighbour inside).

    Returns:
        ``(K + 20)×4``: the proposals, 15 rescalings by 1.01 … 1.15, then 5 growths
        (1.08 … 1.10) or shrinkings (``1 − 0.005·n / score``), every coordinate clamped at 0.
    """
    proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    extra = scale_box(pseudo_box, ppg_factors(pdg_score))
    return np.clip(np.concatenate([proposals, extra]), 0.0, None)


def npg_random_boxes(width: float, height: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n×4`` random boxes: ``x1 ~ U[−0.2W, W)``, ``x2 = x1 + U[0,1)·(1.2W − x1)`` (same for y)."""
    x1 = -0.2 * width + rng.random(n) * 1.2 * width
    y1 = -0.2 * height + rng.random(n) * 1.2 * height
    x2 = x1 + rng.random(n) * (1.2 * width - x1)
    y2 = y1 + rng.random(n) * (1.2 * height - y1)
    return np.stack([x1, y1, x2, y2], axis=1)


def half_box(box: np.ndarray) -> np.ndarray:
    """The centred box of half the width and height of ``box``."""
    return scale_box(box, np.array([0.5]))[0]


def npg_boxes(width: float, height: float, proposals: np.ndarray, winners: np.ndarray,
              rng: np.random.Generator, n: int = 500, iou_thr: float = 0.3,
              part_iou_thr: float = 0.5, part_min_area: float = 64.0 * 64.0) -> np.ndarray:
    """Negative Proposal Generation for one image.

    Args:
        width, height: the image size in this frame.
        proposals: ``P×4`` every proposal box of the image (all its points' SAM proposals).
        winners: ``W×4`` the stage-0 winners of the image's points.
        rng: the random source (seeded by the caller).
        n: random boxes drawn; kept when their IoU with every proposal is below ``iou_thr``.
        part_iou_thr, part_min_area: each winner larger than ``part_min_area`` adds its centred
            half-size box (a "part" negative), kept when its IoU with the winner is below
            ``part_iou_thr``.

    Returns:
        ``N×4`` negative boxes (``N ≤ n + W``), random ones first.
    """
    rand = npg_random_boxes(width, height, n, rng)
    proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    if len(proposals):
        rand = rand[box_iou_xyxy(rand, proposals).max(axis=1) < iou_thr]
    parts = []
    for box in np.asarray(winners, dtype=np.float64).reshape(-1, 4):
        if box_areas(box[None])[0] > part_min_area:
            half = half_box(box)
            if box_iou_xyxy(half[None], box[None])[0, 0] < part_iou_thr:
                parts.append(half)
    return np.concatenate([rand, np.asarray(parts).reshape(-1, 4)])


def bms(pseudo_box: np.ndarray, candidates: np.ndarray, expand_iou: float = 0.6,
        contain_iou: float = 0.3, slack: float = 2.0, minable: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Box Mining Strategy: grow a selected box towards larger proposals of the same point.

    Candidates are visited in order (SAPNet passes the point prompt's first 3 proposals). One is
    considered only if its area exceeds the current reference area (the pseudo box's at first,
    then the last accepted candidate's) and its IoU with the current pseudo box beats the best
    IoU accepted so far. Then:

    * IoU > ``expand_iou``: ``pseudo ← (candidate + IoU·pseudo) / (1 + IoU)`` ("expand");
    * else IoU > ``contain_iou`` and the candidate contains the pseudo box with ``slack`` px to
      spare: ``pseudo ← (IoU·candidate + pseudo) / (1 + IoU)`` ("contain").

    ``minable`` (bool per candidate, ``rule_mining: scored``): a False candidate is skipped.

    Returns:
        The mined box and the last branch taken (``"expand"``, ``"contain"`` or ``"none"``).
    """
    box = np.asarray(pseudo_box, dtype=np.float64).reshape(4).copy()
    ref_area = box_areas(box[None])[0]
    best = 0.0
    branch = "none"
    for c, cand in enumerate(np.asarray(candidates, dtype=np.float64).reshape(-1, 4)):
        area = box_areas(cand[None])[0]
        if area <= ref_area or (minable is not None and not minable[c]):
            continue
        iou = float(box_iou_xyxy(box[None], cand[None])[0, 0])
        if iou > expand_iou and iou > best:
            box = (cand + iou * box) / (1.0 + iou)
            branch = "expand"
        elif (iou > contain_iou and iou > best and cand[0] - slack < box[0] and cand[1] - slack < box[1]
              and cand[2] + slack > box[2] and cand[3] + slack > box[3]):
            box = (iou * cand + box) / (1.0 + iou)
            branch = "contain"
        else:
            continue
        best = iou
        ref_area = area
    return box, branch


def final_mask_index(proposals: np.ndarray, pseudo_box: np.ndarray) -> int:
    """Index of the proposal whose box has the highest IoU with the mined box (first on ties)."""
    ious = box_iou_xyxy(np.asarray(proposals, dtype=np.float64).reshape(-1, 4),
                        np.asarray(pseudo_box, dtype=np.float64).reshape(1, 4))[:, 0]
    return int(np.argmax(ious))


def scored_final_index(proposals: np.ndarray, pseudo_box: np.ndarray, scores: np.ndarray, near: float = 0.9) -> int:
    """``rule_final: scored``: among the proposals whose box IoU with the mined box is at least
    ``near`` times the highest, the one with the highest score (then the higher IoU, then the
    first). ``scores``: one per proposal, e.g. the final stage's ``cls × ins``."""
    ious = box_iou_xyxy(np.asarray(proposals, dtype=np.float64).reshape(-1, 4),
                        np.asarray(pseudo_box, dtype=np.float64).reshape(1, 4))[:, 0]
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)[: len(ious)]
    ties = np.flatnonzero(ious >= near * ious.max())
    return int(ties[np.lexsort((-ious[ties], -scores[ties]))[0]])


def clamp_box(box: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clamp an XYXY box to ``[0, width] × [0, height]``."""
    box = np.asarray(box, dtype=np.float64).reshape(4).copy()
    box[0::2] = np.clip(box[0::2], 0, width)
    box[1::2] = np.clip(box[1::2], 0, height)
    return box
