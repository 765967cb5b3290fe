"""Ground truth of one image and SOLOv2's assignment of instances to grid cells.

Frames: the *input* frame is the resized (and maybe flipped) image before padding, in pixels;
the padded batch is ``Hp×Wp`` (multiples of 32); mask targets live at stride 4 of it.

Assignment (SOLOv2): an instance goes to every level whose scale range holds ``sqrt(w·h)`` of
its box. On a level with an ``S×S`` grid laid over the padded input, it owns the cells of the
*centre region*: the box of half-size ``sigma · (w/2, h/2)`` around its centre of mass, clipped
to at most one cell on each side of the centre cell. Where two instances claim one cell, the
smaller instance wins (instances are written largest first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .postprocess import masks_to_boxes_xyxy


@dataclass
class InstanceTargets:
    """The instances of one image in the input frame.

    Attributes:
        labels: ``N`` long, contiguous class indices ``0..C-1``.
        boxes: ``N×4`` float XYXY in input pixels (exclusive right/bottom).
        centers: ``N×2`` float ``(x, y)`` centres of mass in input pixels.
        masks: ``N×h×w`` uint8 0/1 at stride 4 of the input (``h = ceil(H/4)``).
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
    """Targets of one image on one level: ``labels`` ``S×S`` long (``C`` = background) and
    ``instance`` ``S×S`` long (index into the image's instances, ``-1`` = none)."""

    labels: Tensor
    instance: Tensor


def downsample_stride4(masks: Tensor) -> Tensor:
    """``N×H×W`` 0/1 masks → ``N×ceil(H/4)×ceil(W/4)`` uint8: the 4×4 cells at least half covered."""
    n, h, w = masks.shape
    h4, w4 = -(-h // 4), -(-w // 4)
    x = torch.nn.functional.pad(masks.to(torch.float32), (0, w4 * 4 - w, 0, h4 * 4 - h))
    return (torch.nn.functional.avg_pool2d(x[:, None], 4)[:, 0] >= 0.5).to(torch.uint8)


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


def targets_from_masks(masks: Tensor, labels: Tensor) -> InstanceTargets:
    """:class:`InstanceTargets` of ``N×H×W`` 0/1 masks in the input frame (empty masks dropped)."""
    masks = masks.cpu().bool()
    keep = masks.flatten(1).any(dim=1) if len(masks) else torch.zeros(0, dtype=torch.bool)
    masks, labels = masks[keep], labels.cpu()[keep]
    boxes, centers = mask_geometry(masks)
    return InstanceTargets(labels.long(), boxes, centers, downsample_stride4(masks))


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


def build_level_targets(targets: InstanceTargets, padded_hw: tuple[int, int], num_grid: int,
                        scale_range: tuple[float, float], sigma: float, num_classes: int) -> LevelTargets:
    """Assign the instances of one image to the cells of one level (see the module docstring)."""
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
                  num_classes: int) -> list[LevelTargets]:
    """:func:`build_level_targets` for every level of one image (an image may have no instance)."""
    return [build_level_targets(targets, padded_hw, s, r, sigma, num_classes)
            for s, r in zip(num_grids, scale_ranges)]
