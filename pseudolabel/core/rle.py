"""Binary masks, COCO run-length encoding (RLE) and boxes.

Conventions used throughout ``sap``:

* a mask is a NumPy array of shape ``H×W`` (one mask) or ``N×H×W`` (a stack), any dtype,
  non-zero meaning foreground;
* RLE is COCO's *compressed* RLE as stored in JSON: ``{"size": [H, W], "counts": str}``;
* boxes are ``XYXY`` (``x1, y1, x2, y2``, exclusive right/bottom edge in pixels) unless the name
  says ``xywh`` (COCO's ``[x, y, w, h]``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from .errors import InputError

RLE = dict  # {"size": [H, W], "counts": str}


def encode_mask(mask: np.ndarray) -> RLE:
    """Encode one ``H×W`` mask as compressed RLE with ``counts`` as ``str`` (JSON-ready)."""
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects an H×W mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def encode_masks(masks: np.ndarray) -> list[RLE]:
    """Encode an ``N×H×W`` stack of masks; returns N compressed RLEs (``counts`` as ``str``)."""
    if masks.ndim != 3:
        raise ValueError(f"encode_masks expects N×H×W masks, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    if masks.dtype == np.bool_:
        masks = masks.view(np.uint8)  # no copy: column-major stacks (N×W×H in memory) need none
    fortran = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _as_coco_rle(rle: RLE) -> dict:
    """Return a pycocotools-ready copy of ``rle`` (``counts`` as bytes)."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def decode_rle(rle: RLE) -> np.ndarray:
    """Decode a compressed RLE into an ``H×W`` ``uint8`` mask of 0/1."""
    return mask_utils.decode(_as_coco_rle(rle))


def decode_rles(rles: Sequence[RLE]) -> np.ndarray:
    """Decode RLEs of one image size into an ``N×H×W`` ``uint8`` stack."""
    if not rles:
        raise ValueError("decode_rles needs at least one RLE to know the image size")
    out = mask_utils.decode([_as_coco_rle(r) for r in rles])
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels of an RLE."""
    return int(mask_utils.area(_as_coco_rle(rle)))


def rle_to_bbox_xywh(rle: RLE) -> list[float]:
    """COCO box ``[x, y, w, h]`` of an RLE (all zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(_as_coco_rle(rle))]


def rle_iou(a: Sequence[RLE], b: Sequence[RLE]) -> np.ndarray:
    """Mask IoU matrix ``len(a)×len(b)`` between two lists of RLEs of the same image size."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    return np.asarray(
        mask_utils.iou([_as_coco_rle(r) for r in a], [_as_coco_rle(r) for r in b], [0] * len(b)),
        dtype=np.float64,
    ).reshape(len(a), len(b))


#: the largest image, in pixels, whose masks ``sap`` takes (46,340² ≈ 2.1 G; an 8000×8000 photo is
#: 64 M, a 20,000² orthophoto, read in windows, 400 M); COCO's run lengths are 32-bit
MAX_MASK_PIXELS = 2 ** 31
_MAX_TOKEN_CHARS = 7  # 35 bits: a run count longer than this cannot belong to an image under the limit


def check_mask_size(height: Any, width: Any) -> tuple[int, int]:
    """``(height, width)`` as ints after checking they are positive whole numbers within
    :data:`MAX_MASK_PIXELS`.

    Raises:
        InputError: a size that is not a whole number, not positive, or absurdly large.
    """
    out = []
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer)) or v != v or int(v) != v:
            raise InputError(f"the {name} {v!r} is not a whole number of pixels")
        if v < 1:
            raise InputError(f"the {name} {v!r} is not positive")
        out.append(int(v))
    if out[0] * out[1] > MAX_MASK_PIXELS:
        raise InputError(f"the size {out[0]}×{out[1]} (H×W) is over the {MAX_MASK_PIXELS:,}-pixel limit")
    return out[0], out[1]


def rle_counts(counts: str) -> np.ndarray:
    """The run lengths encoded in a compressed RLE ``counts`` string (COCO's LEB128-like format:
    6 bits per character from ``'0'``, 5 payload bits, a continuation bit, sign on the last
    character, every run from the third on stored as the difference to the run two before).

    Pure NumPy, linear in the string length; never loops on garbage.

    Raises:
        InputError: a character outside the format, a cut-off run, or a run too long to be real.
    """
    try:
        raw = np.frombuffer(counts.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        raise InputError("RLE 'counts' holds non-ASCII characters") from None
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    c = raw.astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise InputError("RLE 'counts' holds characters outside the compressed RLE alphabet")
    more = (c & 0x20) != 0
    if more[-1]:
        raise InputError("RLE 'counts' is cut off in the middle of a run")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > _MAX_TOKEN_CHARS:
        raise InputError("RLE 'counts' holds a run too long for any image")
    token = np.repeat(np.arange(len(starts)), lengths)
    shift = 5 * (np.arange(raw.size) - starts[token])
    x = np.add.reduceat((c & 0x1F) << shift, starts)
    negative = (c[ends] & 0x10) != 0
    x = np.where(negative, x - (np.int64(1) << (5 * lengths)), x)
    runs = x.copy()
    runs[2::2] = np.cumsum(x[2::2])
    runs[3::2] = x[1] + np.cumsum(x[3::2]) if len(x) > 3 else runs[3::2]
    return runs


def check_rle(rle: RLE) -> None:
    """Check that a compressed RLE decodes to exactly ``H×W`` pixels, before pycocotools sees it.

    pycocotools trusts ``counts``: a cut-off or garbage string makes it read past the string,
    loop for minutes or write past the mask. This check is O(len(counts)) and allocates nothing
    of the mask's size.

    Raises:
        InputError: a size or counts that cannot be a mask of that size.
    """
    h, w = check_mask_size(*rle["size"])
    counts = rle["counts"]
    runs = rle_counts(counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts)
    if runs.size and runs.min() < 0:
        raise InputError("RLE 'counts' decodes to a negative run length")
    total = int(runs.sum())
    if total != h * w:
        raise InputError(f"RLE 'counts' covers {total} pixels, not the {h}×{w} = {h * w} of its size")


def _check_polygon(p: Any, height: int, width: int) -> list[float]:
    try:
        xy = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("a polygon holds a value that is not a number") from None
    if xy.ndim != 1:
        raise InputError("a polygon must be a flat list [x1, y1, x2, y2, ...]")
    if len(xy) < 6 or len(xy) % 2:
        raise InputError("a polygon needs at least 3 (x, y) points")
    if not np.isfinite(xy).all():
        raise InputError("a polygon holds a coordinate that is not finite")
    # pycocotools rasterises every edge pixel by pixel: bound the coordinates (one image size of
    # slack on each side) so that a coordinate of 1e9 cannot make it allocate gigabytes
    xs, ys = xy[0::2], xy[1::2]
    if xs.min() < -width or xs.max() > 2 * width or ys.min() < -height or ys.max() > 2 * height:
        raise InputError(f"a polygon reaches far outside its {width}×{height} image")
    return xy.tolist()


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """Convert any COCO segmentation of an ``height×width`` image to compressed RLE, checked.

    Accepts polygons (a list of flat ``[x1, y1, x2, y2, ...]`` lists, unioned), uncompressed RLE
    (``counts`` a list of ints) and compressed RLE (``counts`` a str or bytes). Everything is
    validated before pycocotools touches it (see :func:`check_rle`), so garbage input costs
    microseconds, not a hang.

    Raises:
        InputError: the segmentation is malformed, a polygon has fewer than 3 points or reaches
            far outside the image, an RLE's size disagrees with the image size, or its counts do
            not cover exactly its size.
    """
    height, width = check_mask_size(height, width)
    if isinstance(segmentation, dict):
        if "size" not in segmentation or "counts" not in segmentation:
            raise InputError("an RLE segmentation needs both 'size' and 'counts'")
        size = segmentation["size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise InputError(f"RLE 'size' must be [height, width], not {size!r}")
        size = list(check_mask_size(*size))
        if size != [height, width]:
            raise InputError(
                f"RLE size {size} disagrees with the image size [{height}, {width}] (H, W)"
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in counts):
                raise InputError("uncompressed RLE 'counts' must be a list of whole numbers")
            if any(v < 0 for v in counts) or sum(counts) != height * width:
                raise InputError(f"uncompressed RLE 'counts' must be non-negative runs covering "
                                 f"the {height}×{width} pixels of its size")
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
            rle["counts"] = rle["counts"].decode("ascii")
            return rle
        if isinstance(counts, bytes):
            try:
                counts = counts.decode("ascii")
            except UnicodeDecodeError:
                raise InputError("RLE 'counts' holds non-ASCII bytes") from None
        if not isinstance(counts, str):
            raise InputError("RLE 'counts' must be a string or a list of integers")
        rle = {"size": size, "counts": counts}
        check_rle(rle)
        return rle
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if isinstance(p, (list, tuple))]
        if not polys or len(polys) != len(segmentation):
            raise InputError("a polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists")
        checked = [_check_polygon(p, height, width) for p in polys]
        rles = mask_utils.frPyObjects(checked, height, width)
        rle = mask_utils.merge(rles)
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    raise InputError(f"unsupported segmentation of type {type(segmentation).__name__}")


def mask_to_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """Tight ``XYXY`` box of one ``H×W`` mask, exclusive right/bottom; zeros for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return np.zeros(4, dtype=np.float64)
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def masks_to_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """Tight ``XYXY`` boxes (``N×4``) of an ``N×H×W`` stack; zeros for empty masks."""
    return np.stack([mask_to_box_xyxy(m) for m in masks]) if len(masks) else np.zeros((0, 4))


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Convert ``...×4`` COCO ``[x, y, w, h]`` boxes to ``[x1, y1, x2, y2]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """Convert ``...×4`` ``[x1, y1, x2, y2]`` boxes to COCO ``[x, y, w, h]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``len(a)×len(b)`` of ``XYXY`` boxes (``N×4`` and ``M×4``)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``H×W`` masks (0 when both are empty)."""
    a = a.astype(bool)
    b = b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
