"""RoI features of boxes from a feature pyramid, as the official SAPNet code pools them.

mmdetection's ``SingleRoIExtractor`` with mmcv's ``RoIAlign(output_size=7)``: each box goes to
level ``floor(log2(sqrt(w·h) / 56 + 1e-6))`` clamped to the available levels (strides 4 … 64),
and is pooled there with ``aligned=True`` (coordinates shifted by −0.5 px after scaling) and
adaptive sampling (``sampling_ratio=0``: ``ceil(bin size)`` samples per bin and axis).
torchvision's ``roi_align`` with the same arguments computes the same thing.

On CPU the pooling runs as one sparse matrix product (:func:`roi_align_matrix`: the bilinear
weights of every sample, summed per output bin and feature pixel), which gives torchvision's
values (to float rounding) and a backward that is a second sparse product instead of
torchvision's per-element scatter (7–12× faster on one core; docs/selector.md, "Cheaper
iterations"). On other devices torchvision's kernel runs.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchvision.ops import roi_align

FINEST_SCALE = 56


def roi_levels(boxes: torch.Tensor, num_levels: int, finest_scale: float = FINEST_SCALE) -> torch.Tensor:
    """Pyramid level (0-based) of ``N×4`` XYXY boxes: ``floor(log2(sqrt(area) / 56 + 1e-6))``."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def roi_align_matrix(rois: torch.Tensor, batch: int, height: int, width: int, spatial_scale: float,
                     output_size: int = 7, sampling_ratio: int = 0, aligned: bool = True) -> torch.Tensor:
    """RoIAlign as a sparse ``(R·S·S) × (batch·height·width)`` matrix (torchvision's rules).

    Row ``r·S² + py·S + px`` holds the weights that bin ``(py, px)`` of RoI ``r`` gives to the
    pixels of the ``B×H×W`` map (flattened row-major): each of the bin's ``gy × gx`` samples
    (``ceil(bin size)`` per axis when ``sampling_ratio`` is 0) adds its 4 bilinear weights divided
    by the sample count; samples beyond one pixel outside the map add nothing, others are clamped
    to it. ``rois``: ``R×5`` float ``(batch index, x1, y1, x2, y2)`` in input pixels (XYXY).
    Returns a coalesced COO float32 tensor.
    """
    rois = rois.detach().float().cpu()
    s = output_size
    off = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - off, rois[:, 2] * spatial_scale - off
    rw, rh = rois[:, 3] * spatial_scale - off - x1, rois[:, 4] * spatial_scale - off - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bw, bh = rw / s, rh / s
    if sampling_ratio > 0:
        gx = torch.full_like(rw, sampling_ratio).long()
        gy = gx.clone()
    else:
        gx, gy = torch.ceil(rw / s).long().clamp(min=0), torch.ceil(rh / s).long().clamp(min=0)
    count = (gx * gy).clamp(min=1).float()
    per_roi = s * s * gx * gy
    r = torch.repeat_interleave(torch.arange(len(rois)), per_roi)
    local = torch.arange(len(r)) - torch.repeat_interleave(torch.cumsum(per_roi, 0) - per_roi, per_roi)
    gxr, gyr = gx[r], gy[r]
    ix = local % gxr
    rest = local // gxr
    iy = rest % gyr
    rest = rest // gyr
    px, py = rest % s, rest // s
    y = y1[r] + py.float() * bh[r] + (iy.float() + 0.5) * bh[r] / gyr.float()
    x = x1[r] + px.float() * bw[r] + (ix.float() + 0.5) * bw[r] / gxr.float()
    keep = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    r, px, py, x, y = r[keep], px[keep], py[keep], x[keep], y[keep]
    y, x = y.clamp(min=0.0), x.clamp(min=0.0)
    ylo, xlo = y.long(), x.long()
    ytop, xtop = ylo >= height - 1, xlo >= width - 1
    ylo, xlo = torch.where(ytop, height - 1, ylo), torch.where(xtop, width - 1, xlo)
    y, x = torch.where(ytop, ylo.float(), y), torch.where(xtop, xlo.float(), x)
    yhi, xhi = torch.where(ytop, ylo, ylo + 1), torch.where(xtop, xlo, xlo + 1)
    ly, lx = y - ylo.float(), x - xlo.float()
    hy, hx = 1.0 - ly, 1.0 - lx
    base = rois[r, 0].long() * (height * width)
    row = (r * (s * s) + py * s + px).repeat(4)
    col = torch.cat([base + ylo * width + xlo, base + ylo * width + xhi, base + yhi * width + xlo,
                     base + yhi * width + xhi])
    val = torch.cat([hy * hx, hy * lx, ly * hx, ly * lx]) / count[r].repeat(4)
    shape = (len(rois) * s * s, batch * height * width)
    return torch.sparse_coo_tensor(torch.stack([row, col]), val, shape, check_invariants=False).coalesce()


class _SparseRoIAlign(torch.autograd.Function):
    """``pooled = M · features`` with the transposed product as backward (CSR both ways)."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, matrix: torch.Tensor, matrix_t: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(matrix_t)
        return torch.mm(matrix, feats)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (matrix_t,) = ctx.saved_tensors
        return torch.mm(matrix_t, grad.contiguous()), None, None


def sparse_roi_align(feats: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
                     sampling_ratio: int = 0, aligned: bool = True) -> torch.Tensor:
    """``R×C×S×S`` RoIAlign of a ``B×C×H×W`` CPU map: torchvision's ``roi_align`` by sparse products."""
    b, c, h, w = feats.shape
    m = roi_align_matrix(rois, b, h, w, spatial_scale, output_size, sampling_ratio, aligned)
    flat = feats.permute(0, 2, 3, 1).reshape(b * h * w, c)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        m_csr = m.to(flat.dtype).to_sparse_csr()
        # the transposed matrix only when a backward will need it
        mt_csr = m.t().coalesce().to(flat.dtype).to_sparse_csr() if flat.requires_grad else None
    out = torch.mm(m_csr, flat) if mt_csr is None else _SparseRoIAlign.apply(flat, m_csr, mt_csr)
    return out.view(len(rois), output_size, output_size, c).permute(0, 3, 1, 2)


class LevelRoIAlign(nn.Module):
    """Multi-level RoIAlign with mmdetection's level rule.

    Args:
        names: the pyramid's feature names, finest first.
        strides: their strides (4, 8, 16, 32, 64 in SAPNet).
        output_size: pooled size (7).
        sampling_ratio: samples per bin and axis (0: adaptive).
        aligned: shift by −0.5 px (mmcv's default, True).
        sparse: pool CPU maps by :func:`sparse_roi_align` (same values, faster backward).
    """

    def __init__(self, names: list[str], strides: list[int], output_size: int = 7, sampling_ratio: int = 0,
                 aligned: bool = True, sparse: bool = True) -> None:
        super().__init__()
        self.names, self.strides = list(names), list(strides)
        self.output_size, self.sampling_ratio, self.aligned = output_size, sampling_ratio, aligned
        self.sparse = sparse

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
            pool = sparse_roi_align if self.sparse and f.device.type == "cpu" else roi_align
            pooled = pool(f, rois[idx].to(f.dtype), self.output_size, 1.0 / stride, self.sampling_ratio,
                          self.aligned)
            out[idx] = pooled.to(out.dtype)
        return out + sum(unused) if unused else out
