"""The Gaussian-style mask prompt: a coarse mask as SAM ``mask_input`` logits.

SAM's ``mask_input`` is ``1×256×256`` *logits* in the padded 1024 frame. A plain ±1 mask carries
the coarse outline's errors at full weight; SAMRefiner instead puts a Gaussian bump on the mask,
peaking at the distance-guided positive point, so confidence is high deep inside the object and
falls off towards the (possibly wrong) outline:

    g = exp(−(dt − max dt)² / (A / gamma))  inside the mask, 0 outside,

with ``dt`` the interior distance map and ``A`` the mask area. Both the ±1 mask and ``g`` are
resized to the ResizeLongestSide size, padded right and bottom to 1024×1024 (with −1 and 0),
and resized to 256×256 (bilinear, half-pixel centres, no antialiasing, as
``torch.nn.functional.interpolate``); the prompt is ``strength·g`` where the resized mask is
positive (``g ≤ 0`` read as 1) and ``−strength`` elsewhere, padding included.

The three resizes are linear and separable, so they are applied as two small matrices per axis
(exactly equal to running ``interpolate`` → pad → ``interpolate``) without building 1024×1024
images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .prompts import interior_distance, interior_distance_crop

FRAME = 1024
LOW_RES = 256


def linear_weights(src: np.ndarray, n_in: int) -> np.ndarray:
    """``len(src)×n_in`` linear-interpolation weights: row ``d`` samples position ``src[d]`` of
    an ``n_in``-sample axis (clamped to the edges); each row sums to 1 (float64)."""
    src = np.clip(np.asarray(src, dtype=np.float64), 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    out = np.zeros((len(src), n_in), dtype=np.float64)
    rows = np.arange(len(src))
    np.add.at(out, (rows, i0), 1 - w1)
    np.add.at(out, (rows, i1), w1)
    return out


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``n_out×n_in`` bilinear resize weights along one axis (``align_corners=False``).

    Row ``d`` samples source position ``(d + 0.5)·n_in/n_out − 0.5`` (clamped to the edges), as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` does.
    """
    return linear_weights((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, n_in)


@lru_cache(maxsize=16)
def frame_operators(original_size: tuple[int, int], input_size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matrices taking an ``H×W`` image to SAM's 256×256 low-resolution padded frame.

    Returns:
        ``(ay, ax, inside)``: ``ay`` ``256×H`` and ``ax`` ``256×W`` so that the resized, padded,
        downsized image is ``ay @ img @ ax.T + pad·(1 − inside)``; ``inside`` (``256×256``) is the
        weight each low-resolution cell takes from the non-padded region (cached, read-only).
    """
    h, w = original_size
    nh, nw = input_size
    down = interp_matrix(FRAME, LOW_RES)  # 256×1024, rows sum to 1
    ay = down[:, :nh] @ interp_matrix(h, nh)
    ax = down[:, :nw] @ interp_matrix(w, nw)
    inside = np.outer(down[:, :nh].sum(1), down[:, :nw].sum(1))
    for a in (ay, ax, inside):
        a.flags.writeable = False
    return ay, ax, inside


def gaussian_field(mask: np.ndarray, gamma: float = 4.0, dist: np.ndarray | None = None) -> np.ndarray:
    """``exp(−(dt − max dt)² / (A / gamma))`` inside the mask, 0 outside (``H×W`` float64).

    Args:
        mask: ``H×W`` non-empty mask.
        gamma: span; larger → narrower bump (ALGORITHMS.md: 4 in paper and code).
        dist: its interior distance map, if already computed.
    """
    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    if area == 0:
        raise ValueError("gaussian_field needs a non-empty mask")
    dt = interior_distance(mask) if dist is None else dist
    g = np.exp(-((dt - dt.max()) ** 2) / (area / gamma))
    return np.where(mask, g, 0.0)


def to_low_res_frame(images: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int],
                     pad_value: float) -> np.ndarray:
    """Resize ``N×H×W`` images to ResizeLongestSide size, pad to 1024 with ``pad_value``, resize
    to ``N×256×256`` (float64)."""
    ay, ax, inside = frame_operators(tuple(original_size), tuple(input_size))
    out = np.einsum("ah,nhw,bw->nab", ay, np.asarray(images, dtype=np.float64), ax, optimize=True)
    return out + pad_value * (1.0 - inside)


def mask_prompt(masks: np.ndarray, input_size: tuple[int, int], strength: float | np.ndarray = 30.0,
                gamma: float = 4.0, dist_crops: list | None = None) -> np.ndarray:
    """SAMRefiner's mask prompts for ``N`` masks of one image.

    Args:
        masks: ``N×H×W`` non-empty masks (original image size).
        input_size: ``(h', w')`` of the image after ResizeLongestSide.
        strength: amplitude, a scalar or ``(N,)`` (ALGORITHMS.md: code 30, paper 15; the refiner
            passes 1 for objects whose box CEBox grew, so SAM may grow the mask).
        gamma: span of the Gaussian.
        dist_crops: each mask's :func:`~refine.prompts.interior_distance_crop`, if computed.

    Returns:
        ``N×1×256×256`` float32 logits in the padded 1024 frame: ``+strength`` at the peak,
        ``−strength`` outside the mask and in the padding.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"mask_prompt expects N×H×W masks, got shape {masks.shape}")
    n, h, w = masks.shape
    out = np.empty((n, 1, LOW_RES, LOW_RES), dtype=np.float32)
    if n == 0:
        return out
    ay, ax, _ = frame_operators((int(h), int(w)), (int(input_size[0]), int(input_size[1])))
    amp = np.broadcast_to(np.asarray(strength, dtype=np.float64).reshape(-1), (n,))
    for i, m in enumerate(masks):
        # Both fields vanish outside the mask's box, so only that crop enters the products;
        # the ±1 mask padded with −1 maps to 2·(ay m axᵀ) − 1.
        dist, (y0, y1, x0, x1) = interior_distance_crop(m) if dist_crops is None else dist_crops[i]
        crop = m[y0:y1, x0:x1]
        g = gaussian_field(crop, gamma, dist)
        ayc, axc = ay[:, y0:y1], ax[:, x0:x1]
        binary = 2.0 * (ayc @ crop.astype(np.float64) @ axc.T) - 1.0
        gl = ayc @ g @ axc.T
        out[i, 0] = np.where(binary > 0, amp[i] * np.where(gl > 0, gl, 1.0), -amp[i])
    return out
