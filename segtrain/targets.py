"""Ground truth of one image and SOLOv2's assignment of instances to grid cells.

Frames: the *input* frame is the resized (and maybe flipped) image before padding, in pixels;
the padded batch is ``Hp×Wp`` (multiples of 32); mask targets live at stride 4 of it.

Assignment (SOLOv2): an instance goes to every level whose scale range holds ``sqrt(w·h)`` of
its box. On a level with an ``S×S`` grid laid over the padded input, it claims the cells of the
*centre region*: the box of half-size ``sigma · (w/2, h/2)`` around its centre of mass, clipped
to at most one cell on each side of the centre cell.

Four rules have two variants (``official`` = AdelaiDet @ 3672122, the default; ``sap``), chosen
by name (:data:`RULES`; docs/fidelity.md, "SOLOv2 training"):

* ``cell_conflict``: official — instances are written in annotation order, the last claimant
  gives a cell its class, and every claimant trains its mask there (one mask target per
  claimant); sap — the smaller instance wins the cell, its class and its mask (one per cell).
* ``mask_target``: official — OpenCV bilinear resize of the input-frame mask to
  ``int(w/4 + 0.5) × int(h/4 + 0.5)`` in uint8 (``imrescale``); sap — the 4×4 cells at least half
  covered, ``ceil(w/4) × ceil(h/4)``.
* ``centre``: official — pixel ``i`` sits at coordinate ``i``, in float32; sap — at ``i + 0.5``.
* ``scale_box``: official — the annotation's ``bbox`` (in the input frame) sizes the scale range
  and the centre region; sap — the tight box of the mask. The caller passes the annotation boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from .postprocess import masks_to_boxes_xyxy


@dataclass
class InstanceTargets:
    """The instances of one image in the input frame.

    Attributes:
        labels: ``N`` long, contiguous class indices ``0..C-1``.
        boxes: ``N×4`` float XYXY in input pixels (exclusive right/bottom): the boxes that size
            the scale range and the centre region (``scale_box`` rule).
        centers: ``N×2`` float ``(x, y)`` centres of mass in input pixels (``centre`` rule).
        masks: ``N×h×w`` uint8 0/1 at stride 4 of the input (``mask_target`` rule: ``h = ceil(H/4)``
            or ``int(H/4 + 0.5)``); the losses pad them at the bottom/right.
        alt_masks: ``N×R×h×w`` uint8, the ranked alternative proposals used by the multi-mask
            auxiliary loss (``R = 0`` when there are none).
        alt_valid: ``N×R`` bool, which alternatives exist.
    """

    labels: Tensor
    boxes: Tensor
    centers: Tensor
    masks: Tensor
    alt_masks: Tensor | None = None
    alt_valid: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def to(self, device: torch.device | str) -> "InstanceTargets":
        """A copy on ``device``."""
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return InstanceTargets(move(self.labels), move(self.boxes), move(self.centers), move(self.masks),
                               move(self.alt_masks), move(self.alt_valid))

    @staticmethod
    def empty(h: int, w: int) -> "InstanceTargets":
        """An image with no instance; ``(h, w)`` is the stride-4 mask size."""
        return InstanceTargets(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), torch.zeros(0, 2),
                               torch.zeros(0, h, w, dtype=torch.uint8))


@dataclass
class LevelTargets:
    """Targets of one image on one level.

    Attributes:
        labels: ``S×S`` long class of each cell (``C`` = background).
        instance: ``S×S`` long, the instance that gave the cell its class (``-1`` = none).
        cells: ``K`` long, the flat (row-major) cell of each mask target.
        owners: ``K`` long, the instance whose mask is the target there (``cell_conflict``
            official: one per claimant, in AdelaiDet's order; sap: one per positive cell).
    """

    labels: Tensor
    instance: Tensor
    cells: Tensor | None = None
    owners: Tensor | None = None

    def pairs(self) -> tuple[Tensor, Tensor]:
        """``(cells, owners)``; by default one pair per positive cell, row-major."""
        if self.cells is not None and self.owners is not None:
            return self.cells, self.owners
        flat = self.instance.reshape(-1)
        cells = (flat >= 0).nonzero().flatten()
        return cells, flat[cells]


#: the rules with two variants, official (AdelaiDet's) first
RULES: dict[str, tuple[str, ...]] = {"cell_conflict": ("official", "sap"), "mask_target": ("official", "sap"),
                                     "centre": ("official", "sap"), "scale_box": ("official", "sap")}


def _check_rule(name: str, value: str) -> None:
    if value not in RULES[name]:
        raise ValueError(f"{name} must be one of {', '.join(RULES[name])}, not {value!r}")


def downsample_stride4(masks: Tensor) -> Tensor:
    """``N×H×W`` 0/1 masks → ``N×ceil(H/4)×ceil(W/4)`` uint8: the 4×4 cells at least half covered."""
    n, h, w = masks.shape
    h4, w4 = -(-h // 4), -(-w // 4)
    x = torch.nn.functional.pad(masks.to(torch.float32), (0, w4 * 4 - w, 0, h4 * 4 - h))
    return (torch.nn.functional.avg_pool2d(x[:, None], 4)[:, 0] >= 0.5).to(torch.uint8)


def imrescale_quarter(masks: np.ndarray) -> np.ndarray:
    """``N×H×W`` uint8 0/1 masks → ``N×int(H/4 + 0.5)×int(W/4 + 0.5)`` uint8 0/1: AdelaiDet's
    ``imrescale(mask, 1/4)``, OpenCV bilinear on the masks stacked as channels (as AdelaiDet
    stacks them; at most 512 channels per call, OpenCV's limit)."""
    n, h, w = masks.shape
    size = (int(w * 0.25 + 0.5), int(h * 0.25 + 0.5))  # (w, h), as OpenCV takes it
    out = np.zeros((n, size[1], size[0]), dtype=np.uint8)
    for start in range(0, n, 512):
        part = np.ascontiguousarray(masks[start:start + 512].astype(np.uint8).transpose(1, 2, 0))
        r = cv2.resize(part, size, interpolation=cv2.INTER_LINEAR)
        out[start:start + 512] = (r[..., None] if r.ndim == 2 else r).transpose(2, 0, 1)
    return out


def stride4_masks(masks: Tensor, rule: str = "official") -> Tensor:
    """``N×H×W`` 0/1 masks → uint8 mask targets at stride 4 under the ``mask_target`` rule."""
    _check_rule("mask_target", rule)
    if rule == "sap":
        return downsample_stride4(masks)
    return torch.from_numpy(imrescale_quarter(masks.cpu().to(torch.uint8).numpy()))


def centres_of_mass_official(masks: Tensor) -> Tensor:
    """``N×2`` float32 ``(x, y)`` centres of mass of ``N×H×W`` 0/1 masks with pixel ``i`` at ``i``:
    AdelaiDet's ``center_of_mass``, bit for bit.

    AdelaiDet sums ``mask · x`` along each row, then the rows, in float32. A row's sum holds whole
    numbers below 2²⁴ (``Σx < W²/2``, for any ``W`` below 5792), so it is exact however it is
    added up: here one matrix product; the sum over rows is then AdelaiDet's float32 reduction.
    """
    n, h, w = masks.shape
    m = masks.reshape(n * h, w).to(torch.float32)
    row_x = (m @ torch.arange(0, w, dtype=torch.float32)).reshape(n, h)
    row_n = m.sum(dim=-1).reshape(n, h)
    row_y = row_n * torch.arange(0, h, dtype=torch.float32)
    m00 = row_n.sum(dim=-1).clamp(min=1e-6)
    return torch.stack([row_x.sum(dim=-1) / m00, row_y.sum(dim=-1) / m00], dim=1)


def mask_geometry(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes ``N×4`` (XYXY, exclusive right/bottom) and centres of mass ``N×2`` ``(x, y)`` (pixel
    centres at ``i + 0.5``) of ``N×H×W`` 0/1 masks; zeros for empty masks."""
    n, h, w = masks.shape
    m = masks.to(torch.float32)
    rows, cols = m.sum(dim=2), m.sum(dim=1)  # N×H, N×W
    area = rows.sum(dim=1)
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    safe = area.clamp(min=1)
    centers = torch.stack([(cols * xs).sum(1) / safe, (rows * ys).sum(1) / safe], dim=1)
    return masks_to_boxes_xyxy(masks), centers


def targets_from_masks(masks: Tensor, labels: Tensor, boxes: Tensor | None = None, *, mask_target: str = "official",
                       centre: str = "official") -> InstanceTargets:
    """:class:`InstanceTargets` of ``N×H×W`` 0/1 masks in the input frame (empty masks dropped).

    Args:
        boxes: ``N×4`` XYXY annotation boxes in the input frame (``scale_box`` official: AdelaiDet
            sizes scale ranges and centre regions with them); ``None``: the tight box of each
            mask (``scale_box`` sap).
        mask_target, centre: the rules of the module docstring.
    """
    _check_rule("centre", centre)
    masks = masks.cpu().bool()
    keep = masks.flatten(1).any(dim=1) if len(masks) else torch.zeros(0, dtype=torch.bool)
    masks, labels = masks[keep], labels.cpu()[keep]
    if centre == "official":
        centers = centres_of_mass_official(masks)
        boxes = masks_to_boxes_xyxy(masks) if boxes is None else boxes.detach().cpu().to(torch.float32)[keep]
    else:
        mask_boxes, centers = mask_geometry(masks)
        boxes = mask_boxes if boxes is None else boxes.detach().cpu().to(torch.float32)[keep]
    return InstanceTargets(labels.long(), boxes, centers, stride4_masks(masks, mask_target))


def rule_targets(masks: Tensor, labels: Tensor, boxes: Tensor | None, rules: dict[str, str]) -> InstanceTargets:
    """:func:`targets_from_masks` under named rules (``mask_target``, ``centre``, ``scale_box``;
    :meth:`segtrain.model.SOLOv2Config.data_rules`): what both engines' data pipelines call.

    Raises:
        ValueError: ``scale_box`` official without annotation ``boxes``.
    """
    _check_rule("scale_box", rules["scale_box"])
    if rules["scale_box"] == "official" and boxes is None:
        raise ValueError("the scale_box rule official needs the annotation boxes")
    return targets_from_masks(masks, labels, boxes if rules["scale_box"] == "official" else None,
                              mask_target=rules["mask_target"], centre=rules["centre"])


def centre_region(center_xy: tuple[float, float], box_wh: tuple[float, float], padded_hw: tuple[int, int],
                  num_grid: int, sigma: float) -> tuple[int, int, int, int]:
    """Grid cells ``(top, bottom, left, right)`` (inclusive) owned by one instance.

    Args:
        center_xy: centre of mass ``(x, y)`` in input pixels.
        box_wh: box width and height in input pixels.
        padded_hw: ``(Hp, Wp)`` of the padded input the grid is laid over.
        num_grid: ``S``.
        sigma: the centre-region scale (0.2 in SOLOv2).
    """
    cx, cy = center_xy
    hp, wp = padded_hw
    cell_h, cell_w = hp / num_grid, wp / num_grid
    last = num_grid - 1

    def cell(v: float, size: float) -> int:
        return min(max(int(v // size), 0), last)

    half_w, half_h = 0.5 * box_wh[0] * sigma, 0.5 * box_wh[1] * sigma
    ci, cj = cell(cy, cell_h), cell(cx, cell_w)
    top = max(cell(cy - half_h, cell_h), ci - 1)
    bottom = min(cell(cy + half_h, cell_h), ci + 1)
    left = max(cell(cx - half_w, cell_w), cj - 1)
    right = min(cell(cx + half_w, cell_w), cj + 1)
    return top, bottom, left, right


def centre_region_official(center_xy: tuple[Tensor, Tensor], half_wh: tuple[Tensor, Tensor],
                           padded_hw: tuple[int, int], num_grid: int) -> tuple[int, int, int, int]:
    """:func:`centre_region` in AdelaiDet's float32 arithmetic: ``(top, bottom, left, right)``.

    Args:
        center_xy: 0-d float32 tensors ``(x, y)``, the centre of mass (pixel ``i`` at ``i``).
        half_wh: 0-d float32 tensors ``(sigma·w/2, sigma·h/2)`` of the annotation box.
        padded_hw: ``(Hp, Wp)`` of the padded input.
    """
    (cx, cy), (half_w, half_h), (hp, wp) = center_xy, half_wh, padded_hw
    step = 1.0 / num_grid

    def cell(v: Tensor, size: int) -> int:
        return int((v / size) // step)

    ci, cj = cell(cy, hp), cell(cx, wp)
    top = max(max(0, cell(cy - half_h, hp)), ci - 1)
    bottom = min(min(num_grid - 1, cell(cy + half_h, hp)), ci + 1)
    left = max(cj - 1, max(0, cell(cx - half_w, wp)))
    right = min(min(num_grid - 1, cell(cx + half_w, wp)), cj + 1)
    return top, bottom, left, right


def _official_level(targets: InstanceTargets, padded_hw: tuple[int, int], num_grid: int,
                    scale_range: tuple[float, float], sigma: float, num_classes: int) -> LevelTargets:
    """AdelaiDet's assignment: float32 box scales, annotation order, every claimant's mask."""
    labels = torch.full((num_grid, num_grid), num_classes, dtype=torch.long)
    instance = torch.full((num_grid, num_grid), -1, dtype=torch.long)
    cells: list[int] = []
    owners: list[int] = []
    if len(targets):
        boxes = targets.boxes.detach().cpu().to(torch.float32)
        scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        lo, hi = scale_range
        hit = ((scale >= lo) & (scale <= hi)).nonzero().flatten()
        half_w = 0.5 * (boxes[hit, 2] - boxes[hit, 0]) * sigma
        half_h = 0.5 * (boxes[hit, 3] - boxes[hit, 1]) * sigma
        centers = targets.centers.detach().cpu().to(torch.float32)[hit]
        cls = targets.labels.detach().cpu()
        for k, i in enumerate(hit.tolist()):
            top, bottom, left, right = centre_region_official((centers[k, 0], centers[k, 1]), (half_w[k], half_h[k]),
                                                              padded_hw, num_grid)
            labels[top:bottom + 1, left:right + 1] = cls[i]
            instance[top:bottom + 1, left:right + 1] = i
            for r in range(top, bottom + 1):
                cells += range(r * num_grid + left, r * num_grid + right + 1)
                owners += [i] * (right - left + 1)
    return LevelTargets(labels, instance, torch.tensor(cells, dtype=torch.long), torch.tensor(owners, dtype=torch.long))


def build_level_targets(targets: InstanceTargets, padded_hw: tuple[int, int], num_grid: int,
                        scale_range: tuple[float, float], sigma: float, num_classes: int,
                        cell_conflict: str = "official") -> LevelTargets:
    """Assign the instances of one image to the cells of one level (see the module docstring)."""
    _check_rule("cell_conflict", cell_conflict)
    if cell_conflict == "official":
        return _official_level(targets, padded_hw, num_grid, scale_range, sigma, num_classes)
    labels = torch.full((num_grid, num_grid), num_classes, dtype=torch.long)
    instance = torch.full((num_grid, num_grid), -1, dtype=torch.long)
    if len(targets):
        boxes = targets.boxes.detach().cpu().double()
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        scale = (wh[:, 0] * wh[:, 1]).sqrt()
        lo, hi = scale_range
        chosen = ((scale >= lo) & (scale <= hi)).nonzero().flatten().tolist()
        chosen.sort(key=lambda i: -float(scale[i]))  # largest first: smaller ones overwrite
        centers = targets.centers.detach().cpu().double()
        cls = targets.labels.detach().cpu()
        for i in chosen:
            top, bottom, left, right = centre_region(
                (float(centers[i, 0]), float(centers[i, 1])), (float(wh[i, 0]), float(wh[i, 1])),
                padded_hw, num_grid, sigma)
            labels[top:bottom + 1, left:right + 1] = cls[i]
            instance[top:bottom + 1, left:right + 1] = i
    return LevelTargets(labels, instance)


def build_targets(targets: InstanceTargets, padded_hw: tuple[int, int], num_grids: tuple[int, ...],
                  scale_ranges: tuple[tuple[float, float], ...], sigma: float,
                  num_classes: int, cell_conflict: str = "official") -> list[LevelTargets]:
    """:func:`build_level_targets` for every level of one image (an image may have no instance)."""
    return [build_level_targets(targets, padded_hw, s, r, sigma, num_classes, cell_conflict)
            for s, r in zip(num_grids, scale_ranges)]
