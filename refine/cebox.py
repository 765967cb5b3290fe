"""Context-aware elastic box (CEBox): let a coarse mask's box grow towards similar features.

This is ``sap``'s exact-geometry version (rule ``cebox_rule: sap``, used by ``--reference paper``);
:mod:`refine.cebox_official` is the official code's. Boxes here have an exclusive max.

A coarse mask often misses part of its object, and so does its tight box; SAM then cannot
recover the part. CEBox compares SAM's image features just outside each side of the box with
the object's mean feature and moves that side outwards when enough of them look alike.

Features: SAM's ``1×256×64×64`` embedding, L2-normalised per cell, is read at image pixels by
bilinear sampling at each pixel's centre in the padded 1024 frame (pixel ``u`` → frame
coordinate ``(u + 0.5)·w'/W``, cell coordinate ``frame/16 − 0.5``, clamped to the grid) — the
same geometry as upsampling the non-padded region to the image. Sampling is separable, so the
mask-averaged query and the strips need no full-resolution feature map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mask_prompt import linear_weights

SIDES = ("left", "top", "right", "bottom")


def bilinear_matrix(n_pixels: int, n_resized: int, grid: int = 64, frame: int = 1024) -> np.ndarray:
    """Interpolation weights from a ``grid``-cell axis to ``n_pixels`` original pixels.

    Args:
        n_pixels: image extent along the axis (W or H).
        n_resized: extent after ResizeLongestSide (w' or h').
        grid: feature cells along the axis of the padded frame.
        frame: padded frame size in resized pixels.

    Returns:
        ``n_pixels×grid`` float32 matrix whose rows sum to 1.
    """
    cell = frame / grid
    pos = (np.arange(n_pixels) + 0.5) * (n_resized / n_pixels) / cell - 0.5
    return linear_weights(pos, grid).astype(np.float32)


def _support(weights: np.ndarray) -> tuple[int, int]:
    """``(first, last + 1)`` of the grid cells a block of interpolation rows touches."""
    cols = np.flatnonzero(weights.any(axis=0))
    return int(cols[0]), int(cols[-1]) + 1


class FeatureSampler:
    """SAM features of one image, readable at original-image pixels.

    Args:
        features: ``C×G×G`` (or ``1×C×G×G``) array or tensor, the SAM embedding.
        original_size: ``(H, W)`` of the image.
        input_size: ``(h', w')`` after ResizeLongestSide.
    """

    def __init__(self, features, original_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        if hasattr(features, "detach"):
            features = features.detach().float().cpu().numpy()
        f = np.asarray(features, dtype=np.float32)
        if f.ndim == 4:
            f = f[0]
        if f.ndim != 3 or f.shape[1] != f.shape[2]:
            raise ValueError(f"features must be C×G×G, got shape {f.shape}")
        norm = np.linalg.norm(f, axis=0, keepdims=True)
        self.features = f / np.maximum(norm, 1e-12)  # C×G×G, unit length per cell
        grid = f.shape[1]
        h, w = original_size
        self.original_size = (int(h), int(w))
        self.uy = bilinear_matrix(h, input_size[0], grid)  # H×G
        self.ux = bilinear_matrix(w, input_size[1], grid)  # W×G

    def query(self, mask: np.ndarray) -> np.ndarray:
        """Unit-length mean of the sampled features over the mask's pixels: ``(C,)`` float32."""
        m = np.asarray(mask, dtype=bool)
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        if ys.size == 0:
            raise ValueError("query needs a non-empty mask")
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        uy, ux = self.uy[y0:y1], self.ux[x0:x1]
        (i0, i1), (j0, j1) = _support(uy), _support(ux)
        weights = uy[:, i0:i1].T @ m[y0:y1, x0:x1].astype(np.float32) @ ux[:, j0:j1]
        q = np.tensordot(self.features[:, i0:i1, j0:j1], weights, axes=([1, 2], [0, 1]))
        return (q / max(float(np.linalg.norm(q)), 1e-12)).astype(np.float32)

    def similarity(self, query: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Cosine similarity to ``query`` of the sampled features in rows ``y0:y1``, cols ``x0:x1``.

        Returns:
            ``(y1−y0)×(x1−x0)`` float32 array.
        """
        uy, ux = self.uy[y0:y1], self.ux[x0:x1]
        (i0, i1), (j0, j1) = _support(uy), _support(ux)
        sampled = np.einsum("yi,cij,xj->yxc", uy[:, i0:i1], self.features[:, i0:i1, j0:j1],
                            ux[:, j0:j1], optimize=True)
        norms = np.linalg.norm(sampled, axis=-1)
        return (sampled @ query / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class CeBoxParams:
    """CEBox settings (ALGORITHMS.md §4).

    Attributes:
        margin: a side moves when the fraction of similar strip pixels exceeds this
            (paper 0.1; ``<= 0`` turns CEBox off, as the public code's default 0 does).
        threshold: cosine similarity above which a pixel is "similar" (0.5).
        step_fraction: strip width as a fraction of the box extent along that axis (0.1).
        step_max: strip width cap in pixels (10).
    """

    margin: float = 0.1
    threshold: float = 0.5
    step_fraction: float = 0.1
    step_max: int = 10

    @property
    def enabled(self) -> bool:
        return self.margin > 0


def strip_width(extent: float, params: CeBoxParams) -> int:
    """Width in pixels of the strip outside a side: ``min(floor(step_fraction·extent), step_max)``."""
    return int(min(np.floor(params.step_fraction * extent), params.step_max))


def elastic_box(box: np.ndarray, query: np.ndarray, sampler: FeatureSampler,
                params: CeBoxParams = CeBoxParams()) -> tuple[np.ndarray, np.ndarray]:
    """Grow each side of a box by one step where the features beyond it resemble the object.

    For each side independently, the strip between the edge and the edge moved outwards by
    :func:`strip_width` (width for left/right, height for top/bottom), cut at the image border,
    is compared with ``query``; the side moves to the strip's outer edge when the fraction of
    pixels with cosine similarity > ``threshold`` exceeds ``margin``.

    Args:
        box: ``XYXY`` box (exclusive right/bottom), integer-valued.
        query: ``(C,)`` unit feature of the object (:meth:`FeatureSampler.query`).
        sampler: the image's features.
        params: CEBox settings.

    Returns:
        ``(new_box, grew)``: the ``XYXY`` box (float64) and a ``(4,)`` bool array saying which
        side moved, in the order left, top, right, bottom.
    """
    h, w = sampler.original_size
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    new = np.array([x1, y1, x2, y2], dtype=np.float64)
    grew = np.zeros(4, dtype=bool)
    if not params.enabled:
        return new, grew
    dx = strip_width(x2 - x1, params)
    dy = strip_width(y2 - y1, params)
    strips = (  # (rows, cols, new edge value) per side
        ((y1, y2), (max(x1 - dx, 0), x1), max(x1 - dx, 0)),
        ((max(y1 - dy, 0), y1), (x1, x2), max(y1 - dy, 0)),
        ((y1, y2), (x2, min(x2 + dx, w)), min(x2 + dx, w)),
        ((y2, min(y2 + dy, h)), (x1, x2), min(y2 + dy, h)),
    )
    for side, ((r0, r1), (c0, c1), edge) in enumerate(strips):
        if r1 <= r0 or c1 <= c0:
            continue  # no strip: zero step or already at the image border
        sim = sampler.similarity(query, r0, r1, c0, c1)
        if float(np.mean(sim > params.threshold)) > params.margin:
            new[side] = edge
            grew[side] = True
    return new, grew
