"""CEBox as the official code computes it (``--reference official``, rule ``cebox_rule: official``).

Differences from :mod:`refine.cebox` (our exact-geometry version), all from utils.py of
linyq2117/SAMRefiner@0b2db8c (``extract_bboxes_expand``, ``get_mask_embed``):

- features: the embedding's first ``int(64·short/long)`` cells along the short side (the
  non-padded region, rounded down) upsampled bilinearly to the image, *then* L2-normalised per
  pixel;
- query: the mean of the *raw* embedding over the mask resized to those cells by nearest
  neighbour, L2-normalised (a mask that vanishes there gives no query and no growth);
- steps: ``min(0.1·(x1 − x0), 10)`` with the inclusive box, new edge ``int(x0 − step)`` (Python
  truncation), accepted only strictly inside the image (an edge reaching row or column 0, or
  the last one, is refused); the left/right strips skip the box's last row, the top/bottom
  ones its last column; the right and bottom strips start on the box's own last column/row.

Boxes are ``(x0, y0, x1, y1)`` with inclusive max, in original-image pixels.
"""

from __future__ import annotations

import numpy as np

from .mask_prompt import interp_matrix


def feature_region(original_size: tuple[int, int], grid: int = 64) -> tuple[int, int]:
    """``(rows, cols)`` of embedding cells the official code reads for an ``H×W`` image."""
    h, w = original_size
    return (grid, int(grid * w / h)) if h >= w else (int(grid * h / w), grid)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output sample of ``interpolate(mode="nearest")`` (float32 as torch)."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


class OfficialFeatures:
    """The official CEBox's view of one image's embedding.

    Args:
        features: ``1×C×G×G`` or ``C×G×G`` array or tensor.
        original_size: ``(H, W)``.
        region: ``(rows, cols)`` of cells the image covers, if not SAM's padded layout
            (:func:`feature_region`); SAM 2 stretches every image over the whole grid.
    """

    def __init__(self, features, original_size: tuple[int, int], region: tuple[int, int] | None = None) -> None:
        if hasattr(features, "detach"):
            features = features.detach().float().cpu().numpy()
        f = np.asarray(features, dtype=np.float32)
        f = f[0] if f.ndim == 4 else f
        rh, rw = region if region is not None else feature_region(original_size, f.shape[-1])
        self.cells = f[:, :rh, :rw].astype(np.float64)  # C×rh×rw
        self.original_size = (int(original_size[0]), int(original_size[1]))
        h, w = self.original_size
        self.uy = interp_matrix(rh, h)  # H×rh
        self.ux = interp_matrix(rw, w)  # W×rw
        self.ny = nearest_indices(h, rh)
        self.nx = nearest_indices(w, rw)

    def query(self, mask: np.ndarray) -> np.ndarray | None:
        """Unit mean raw feature over the nearest-downsampled mask, None when that is empty."""
        small = np.asarray(mask, dtype=bool)[np.ix_(self.ny, self.nx)]
        count = int(small.sum())
        if count == 0:
            return None
        q = self.cells[:, small].sum(axis=1) / count
        return q / np.linalg.norm(q)

    def similar(self, query: np.ndarray, rows: tuple[int, int], cols: tuple[int, int],
                threshold: float) -> int:
        """How many pixels of ``rows × cols`` (half-open) have cosine similarity > threshold."""
        uy, ux = self.uy[rows[0]:rows[1]], self.ux[cols[0]:cols[1]]
        ci = np.flatnonzero(uy.any(axis=0))
        cj = np.flatnonzero(ux.any(axis=0))
        i0, i1, j0, j1 = ci[0], ci[-1] + 1, cj[0], cj[-1] + 1  # the cells the strip reads
        sampled = np.einsum("yi,cij,xj->yxc", uy[:, i0:i1], self.cells[:, i0:i1, j0:j1], ux[:, j0:j1],
                            optimize=True)
        norms = np.linalg.norm(sampled, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (sampled @ query) / norms
        return int(np.count_nonzero(cos > threshold))


def official_elastic_box(mask: np.ndarray, box: tuple[int, int, int, int], feats: OfficialFeatures,
                         margin: float, threshold: float = 0.5, step_fraction: float = 0.1,
                         step_max: float = 10) -> tuple[tuple[int, int, int, int], bool]:
    """One CEBox step by the official rules.

    Args:
        mask: ``H×W`` mask whose tight box is ``box``.
        box: ``(x0, y0, x1, y1)``, inclusive max.
        feats: the image's :class:`OfficialFeatures`.
        margin: a side moves when the share of similar strip pixels exceeds it (> 0).

    Returns:
        ``(new_box, grew)``.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = feats.original_size
    bh, bw = y2 - y1, x2 - x1
    if not (bh > 0 and bw > 0 and margin > 0):
        return (x1, y1, x2, y2), False
    query = feats.query(mask)
    if query is None:
        return (x1, y1, x2, y2), False
    steph, stepw = min(bh * step_fraction, step_max), min(bw * step_fraction, step_max)
    new = [x1, y1, x2, y2]
    left, right = int(x1 - stepw), int(x2 + stepw)
    top, bottom = int(y1 - steph), int(y2 + steph)
    sides = (  # (side index, accepted?, rows, cols, new edge)
        (0, 0 < left < x1, (y1, y2), (left, x1), left),
        (2, x2 < right < w, (y1, y2), (x2, right), right),
        (1, 0 < top < y1, (top, y1), (x1, x2), top),
        (3, y2 < bottom < h, (y2, bottom), (x1, x2), bottom),
    )
    for side, ok, rows, cols, edge in sides:
        if not ok:
            continue
        area = (rows[1] - rows[0]) * (cols[1] - cols[0])
        if feats.similar(query, rows, cols, threshold) / area > margin:
            new[side] = edge
    return tuple(new), tuple(new) != (x1, y1, x2, y2)
