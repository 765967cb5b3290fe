"""RoI features of boxes from a feature pyramid, as the official SAPNet code pools them.

mmdetection's ``SingleRoIExtractor`` with mmcv's ``RoIAlign(output_size=7)``: each box goes to
level ``floor(log2(sqrt(w·h) / 56 + 1e-6))`` clamped to the available levels (strides 4 … 64),
and is pooled there with ``aligned=True`` (coordinates shifted by −0.5 px after scaling) and
adaptive sampling (``sampling_ratio=0``: ``ceil(bin size)`` samples per bin and axis).
torchvision's ``roi_align`` with the same arguments computes the same thing.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

FINEST_SCALE = 56


def roi_levels(boxes: torch.Tensor, num_levels: int, finest_scale: float = FINEST_SCALE) -> torch.Tensor:
    """Pyramid level (0-based) of ``N×4`` XYXY boxes: ``floor(log2(sqrt(area) / 56 + 1e-6))``."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class LevelRoIAlign(nn.Module):
    """Multi-level RoIAlign with mmdetection's level rule.

    Args:
        names: the pyramid's feature names, finest first.
        strides: their strides (4, 8, 16, 32, 64 in SAPNet).
        output_size: pooled size (7).
        sampling_ratio: samples per bin and axis (0: adaptive).
        aligned: shift by −0.5 px (mmcv's default, True).
    """

    def __init__(self, names: list[str], strides: list[int], output_size: int = 7, sampling_ratio: int = 0,
                 aligned: bool = True) -> None:
        super().__init__()
        self.names, self.strides = list(names), list(strides)
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, aligned

    def forward(self, feats: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_hw: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """``(Σ N_b)×C×7×7`` features of one ``N_b×4`` XYXY box tensor per image."""
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        first = feats[self.names[0]]
        out = first.new_zeros(len(rois), first.shape[1], self.output_size, self.output_size)
        if len(rois) == 0:
            return out
        levels = roi_levels(rois[:, 1:].float(), len(self.names))
        unused = []
        for lv, (name, stride) in enumerate(zip(self.names, self.strides)):
            idx = (levels == lv).nonzero().flatten()
            if idx.numel() == 0:
                unused.append(feats[name].sum() * 0.0)  # keeps every level in the graph (DDP)
                continue
            f = feats[name]
            pooled = roi_align(f, rois[idx].to(f.dtype), self.output_size, 1.0 / stride, self.sampling_ratio,
                               self.aligned)
            out[idx] = pooled.to(out.dtype)
        return out + sum(unused) if unused else out
