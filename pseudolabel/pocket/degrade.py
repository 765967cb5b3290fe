"""Rough versions of true masks: the coarse masks the pocket SAM learns to refine.

SAM is trained on 11M photos and follows prompts it never saw in training, such as SAMRefiner's
(a point and a negative point from the coarse mask's distance map, its box, a Gaussian mask
prompt). The pocket SAM sees 10⁴ scenes; it follows only prompts of the kinds it was trained on.
So a share of its training scenes (``PocketConfig.coarse_share``) start from prompts built from a
rough mask made here. The defects are a family of their own, deliberately not `sap corrupt`'s
(the measure of refinement): a blocky mask (downsampled and back), a grown or shrunk outline, a
straight cut, a bump. Sizes are relative to ``√area`` as in DAVIS-style corruptions.

Masks are ``H×W`` bool at the scene's size; the result is never empty.
"""

from __future__ import annotations

import numpy as np


def _disc(r: float) -> np.ndarray:
    k = max(round(r), 1)
    y, x = np.ogrid[-k:k + 1, -k:k + 1]
    return (x * x + y * y <= r * r + 0.5).astype(np.uint8)


def rough_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One rough version of ``mask`` (``H×W`` bool): each defect drawn independently, at least one.

    * blocky (p 0.5): area-downsampled by 2.5–6× and bilinearly back, thresholded at half;
    * outline (p 0.5): dilated or eroded by a disc of radius 3–12 % of ``√area`` (≥ 1 px);
    * cut (p 0.4): the pixels beyond a random straight line, 10–30 % of the mask, removed;
    * bump (p 0.3): a disc of radius 15–30 % of ``√area`` added at a random outline pixel.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    if area == 0:
        return mask.copy()
    size = float(np.sqrt(area))
    h, w = mask.shape
    ops = rng.random(4) < np.array([0.5, 0.5, 0.4, 0.3])
    if not ops.any():
        ops[rng.integers(4)] = True
    out = mask.astype(np.uint8)
    if ops[0]:
        f = rng.uniform(2.5, 6.0)
        small = cv2.resize(out.astype(np.float32), (max(1, round(w / f)), max(1, round(h / f))),
                           interpolation=cv2.INTER_AREA)
        out = (cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.uint8)
    if ops[1]:
        kernel = _disc(max(1.0, rng.uniform(0.03, 0.12) * size))
        out = cv2.dilate(out, kernel) if rng.random() < 0.5 else cv2.erode(out, kernel)
    if ops[2] and out.any():
        ys, xs = np.nonzero(out)
        angle = rng.uniform(0, 2 * np.pi)
        proj = xs * np.cos(angle) + ys * np.sin(angle)
        cut = proj > np.quantile(proj, 1 - rng.uniform(0.1, 0.3))
        out[ys[cut], xs[cut]] = 0
    if ops[3]:
        edge = mask & ~cv2.erode(mask.astype(np.uint8), _disc(1)).astype(bool)
        ys, xs = np.nonzero(edge if edge.any() else mask)
        i = rng.integers(len(ys))
        cv2.circle(out, (int(xs[i]), int(ys[i])), max(1, int(rng.uniform(0.15, 0.3) * size)), 1, -1)
    out = out.astype(bool)
    return out if out.any() else mask.copy()
