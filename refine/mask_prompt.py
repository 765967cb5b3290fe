"""The Gaussian-style mask prompt: a coarse mask as SAM ``mask_input`` logits.

SAM's ``mask_input`` is ``1×256×256`` *logits* in the padded 1024 frame. A plain ±1 mask carries
the coarse outline's errors at full weight; SAMRefiner instead puts a Gaussian bump on the mask,
peaking at the distance-guided positive point, so confidence is high deep inside the object and
falls off towards the (possibly wrong) outline:

    g = exp(−(dt − max dt)² / max(A / gamma, 1))  inside the mask, 0 outside,

with ``dt`` the interior distance map and ``A`` the mask area. Both the ±1 mask and ``g`` are
resized to the ResizeLongestSide size, padded right and bottom to 1024×1024 (with −1 and 0),
and resized to 256×256 (bilinear, half-pixel centres, no antialiasing, as
``torch.nn.functional.interpolate``). Where the resized mask is positive the prompt is
``strength·g`` (``g ≤ 0`` read as 1); elsewhere it is ``−strength·g`` (rule ``mask_outside:
gaussian``, the official code, utils.py l.285-295: a band near the outline where ``g`` bled
through the resizes is close to 0, farther out −strength) or ``−strength`` (``constant``).

The three resizes are linear and separable, so they are applied as two small matrices per axis
(equal to running ``interpolate`` → pad → ``interpolate``, with torch's float32 sample
positions) without building 1024×1024 images.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .distance import DistanceMaps, distance_maps

FRAME = 1024
LOW_RES = 256
MASK_OUTSIDE = ("gaussian", "constant")


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

    Row ``d`` samples source position ``(d + 0.5)·n_in/n_out − 0.5`` (clamped to the edges),
    computed in float32 as ``torch.nn.functional.interpolate(mode="bilinear")`` does on the CPU
    (its scale and positions are float32: at 1024 samples they differ from exact ones by ~1e-4 px).
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    out = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(out, (rows, i0), (np.float32(1) - w1).astype(np.float64))
    np.add.at(out, (rows, np.minimum(i0 + 1, n_in - 1)), w1.astype(np.float64))
    return out


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


def gaussian_crop(maps: DistanceMaps, area: int, gamma: float = 4.0) -> np.ndarray:
    """The Gaussian on the crop of ``maps.interior``: ``exp(−(dt − max dt)² / max(A/gamma, 1))``
    where ``dt > 0`` (the mask), 0 elsewhere.

    Args:
        maps: the mask's distance maps.
        area: ``A``, the mask's pixel count.
        gamma: span; larger → narrower bump (4 in paper and code).

    Returns:
        Array shaped like ``maps.interior`` (float32 for the float32 chamfer maps, as the code).
    """
    dt = maps.interior
    ftype = dt.dtype.type
    spread = max(ftype(area) / ftype(gamma), ftype(1))
    g = np.exp(-np.square(dt - dt.max()) / spread)
    return np.where(dt > 0, g, ftype(0)).astype(dt.dtype)


def gaussian_field(mask: np.ndarray, gamma: float = 4.0, distance: str = "chamfer") -> np.ndarray:
    """The Gaussian of one non-empty ``H×W`` mask over the whole image (float64)."""
    mask = np.asarray(mask, dtype=bool)
    maps = distance_maps([mask], distance)[0]
    out = np.zeros(mask.shape, dtype=np.float64)
    g = gaussian_crop(maps, int(mask.sum()), gamma)
    x0, y0 = maps.origin
    out[y0:y0 + g.shape[0], x0:x0 + g.shape[1]] = g
    return out


def to_low_res_frame(images: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int],
                     pad_value: float) -> np.ndarray:
    """Resize ``N×H×W`` images to ResizeLongestSide size, pad to 1024 with ``pad_value``, resize
    to ``N×256×256`` (float64)."""
    ay, ax, inside = frame_operators(tuple(original_size), tuple(input_size))
    out = np.einsum("ah,nhw,bw->nab", ay, np.asarray(images, dtype=np.float64), ax, optimize=True)
    return out + pad_value * (1.0 - inside)


def mask_prompt(masks: np.ndarray, maps: list[DistanceMaps], input_size: tuple[int, int],
                strength: float | np.ndarray = 30.0, gamma: float = 4.0,
                outside: str = "gaussian") -> np.ndarray:
    """SAMRefiner's mask prompts for ``N`` masks of one image.

    Args:
        masks: ``N×H×W`` non-empty masks (original image size).
        maps: their :class:`~refine.distance.DistanceMaps`.
        input_size: ``(h', w')`` of the image after ResizeLongestSide.
        strength: amplitude, a scalar or ``(N,)`` (code 30, paper 15; the refiner passes 1 for
            objects whose box CEBox grew, so SAM may grow the mask).
        gamma: span of the Gaussian.
        outside: ``gaussian`` (−strength·g outside, the code) or ``constant`` (−strength).

    Returns:
        ``N×1×256×256`` float32 logits in the padded 1024 frame: ``+strength`` at the peak,
        ``−strength`` far from the mask and in the padding.
    """
    if outside not in MASK_OUTSIDE:
        raise ValueError(f"outside must be one of {MASK_OUTSIDE}, got {outside!r}")
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
        # Both fields vanish outside the interior map's crop, so only that crop enters the
        # products; the ±1 mask padded with −1 maps to 2·(ay m axᵀ) − 1.
        x0, y0 = maps[i].origin
        g = gaussian_crop(maps[i], int(m.sum()), gamma).astype(np.float64)
        y1, x1 = y0 + g.shape[0], x0 + g.shape[1]
        ayc, axc = ay[:, y0:y1], ax[:, x0:x1]
        binary = 2.0 * (ayc @ m[y0:y1, x0:x1].astype(np.float64) @ axc.T) - 1.0
        gl = ayc @ g @ axc.T
        weight = np.where(gl > 0, gl, 1.0)
        if outside == "gaussian":
            out[i, 0] = np.where(binary > 0, amp[i], -amp[i]) * weight
        else:
            out[i, 0] = np.where(binary > 0, amp[i] * weight, -amp[i])
    return out
