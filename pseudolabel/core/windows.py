"""Windows that follow the points: which part of a large image the engine sees for each point.

An engine resizes its whole input to its frame (SAM: 1024 px; the pocket SAM: 256), so on an
image far larger than the frame a small object shrinks to a few pixels. Windowing cuts square
windows of ``side`` image pixels (``frame / scale``: native resolution at scale 1) and encodes
only those that hold points, so the cost follows the number of points, not the image's area.

The rule (docs/windows.md):

* **Grid.** Cores of ``side - 2·halo`` px tile the image from ``(0, 0)``; a core's window is the
  core grown by ``halo`` on each side, shifted inside the image where it would leave it (a
  window is never cut, so it always shows ``side`` px unless the image is smaller).
* **Choice.** A point goes to the window, among those of its own core and the 8 around it, where
  it lies farthest from the window's border; a border on the image's edge does not count (no
  mask can cross it). A point in its own core is at least ``halo`` px from every border that counts.
* **Encoded.** Only the windows some point chose.

Coordinates: points ``(x, y)`` in image pixels; windows ``XYXY`` with exclusive right/bottom
edges; image sizes ``(H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: ``auto`` windows an image whose long side exceeds this many window sides (docs/windows.md:
#: measured with the pocket SAM in scripts/bench_windows.py)
AUTO_FACTOR = 1.25
#: the halo as a fraction of the window side (a quarter: the core is half the window)
HALO_FRACTION = 0.25


@dataclass(frozen=True)
class Window:
    """A window of an image: ``XYXY`` image pixels, right/bottom exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def hw(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def origin(self) -> tuple[int, int]:
        """``(x, y)`` of the window's top-left pixel in the image."""
        return self.x0, self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class WindowRule:
    """How windows are chosen: ``mode`` ``off``, ``auto`` or ``fixed`` with the window ``side`` in
    image pixels, its ``halo`` and the long-side factor beyond which ``auto`` windows an image."""

    mode: str
    side: int = 0
    halo: int = 0
    factor: float = AUTO_FACTOR

    def applies(self, hw: tuple[int, int]) -> bool:
        """Whether an ``(H, W)`` image is cut into windows."""
        long_side = max(hw)
        if self.mode == "auto":
            return long_side > self.factor * self.side
        return self.mode == "fixed" and long_side > self.side

    def record(self) -> dict:
        """The rule as the proposal cache records it (a rerun with another rule is refused)."""
        if self.mode == "off":
            return {"windows": "off"}
        return {"windows": self.mode, "window_side": self.side, "window_halo": self.halo,
                **({"window_auto_factor": self.factor} if self.mode == "auto" else {})}


def describe_layout(record: dict) -> str:
    """A cache configuration's window rule in words (``off`` for caches made before windows)."""
    mode = record.get("windows", "off")
    if mode == "off":
        return "off"
    return f"{mode} ({record.get('window_side')} px, halo {record.get('window_halo')})"


def window_rule(spec: str | int | None, frame: int, scale: float = 1.0) -> WindowRule:
    """Parse ``--windows auto|off|PIXELS`` and ``--window-scale S`` for an engine's ``frame``.

    ``auto``'s window side is ``frame / S`` image px; ``PIXELS`` is the side at scale S
    (``PIXELS / S`` image px) and may not be smaller than the frame (the engine would enlarge it).

    Raises:
        InputError: an unknown value, a scale that is not positive, a window under the frame.
    """
    text = str(spec if spec is not None else "off").strip().lower()
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise InputError(f"--window-scale must be a positive number, not {scale!r}")
    if text == "off":
        return WindowRule("off")
    if text == "auto":
        side = int(round(frame / scale))
        return WindowRule("auto", side, int(side * HALO_FRACTION))
    try:
        pixels = int(text)
    except ValueError:
        raise InputError(f"--windows must be auto, off or a window side in pixels, not {spec!r}") from None
    if pixels < frame:
        raise InputError(f"--windows {pixels} is smaller than the engine's {frame} px frame: the engine would "
                         f"enlarge each window; use --windows {frame} or more (or --window-scale to zoom in)")
    side = int(round(pixels / scale))
    return WindowRule("fixed", side, int(side * HALO_FRACTION))


def check_rule_fits(rule: WindowRule, sizes: list[tuple[int, int]]) -> None:
    """Refuse a fixed window larger than every image (``sizes``: ``(H, W)`` of each image).

    Raises:
        InputError: naming the window and the largest image side.
    """
    if rule.mode == "fixed" and sizes and rule.side > max(max(hw) for hw in sizes):
        raise InputError(f"--windows: a window of {rule.side} px is larger than every image (the largest "
                         f"side is {max(max(hw) for hw in sizes)} px); use --windows off or a smaller window")


def _place(start: int, side: int, size: int) -> int:
    """A window start shifted inside ``[0, size)`` (a window wider than the image starts at 0)."""
    return min(max(start, 0), max(size - side, 0))


def border_distance(xy: np.ndarray, window: Window, hw: tuple[int, int]) -> np.ndarray:
    """Distance of each ``N×2`` ``(x, y)`` point to the window's nearest border that is not on the
    image's edge (``inf`` when every border is); negative outside the window."""
    h, w = hw
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    sides = [(xy[:, 0] - window.x0, window.x0 > 0), (window.x1 - xy[:, 0], window.x1 < w),
             (xy[:, 1] - window.y0, window.y0 > 0), (window.y1 - xy[:, 1], window.y1 < h)]
    out = np.full(len(xy), np.inf)
    for dist, counts in sides:
        out = np.minimum(out, dist if counts else np.where(dist < 0, dist, np.inf))
    return out


def layout_windows(xy: np.ndarray, hw: tuple[int, int], side: int, halo: int
                   ) -> tuple[list[Window], np.ndarray]:
    """The windows an image's points need and the window of each point (the rule above).

    Args:
        xy: ``N×2`` ``(x, y)`` points in image pixels.
        hw: the image's ``(H, W)``.
        side: window side in image pixels.
        halo: overlap on each side; the core is ``side - 2·halo`` (at least 1).

    Returns:
        ``(windows, index)``: the chosen windows, sorted by row then column, and each point's
        window as an ``N`` int array of indexes into them.
    """
    h, w = hw
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    core = max(side - 2 * halo, 1)
    cells = np.floor(np.clip(xy, 0, [w - 1, h - 1]) / core).astype(int)  # N×2 (column, row)
    best: list[tuple[float, tuple[int, int, int, int]]] = []
    for n, (cx, cy) in enumerate(cells):
        cand = []
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                x0 = _place(int(cx + dx) * core - halo, side, w)
                y0 = _place(int(cy + dy) * core - halo, side, h)
                win = Window(x0, y0, min(x0 + side, w), min(y0 + side, h))
                cand.append((float(border_distance(xy[n], win, hw)[0]), -abs(dx) - abs(dy), win))
        d, _, win = max(cand, key=lambda c: (c[0], c[1]))
        best.append((d, (win.y0, win.x0, win.y1, win.x1)))
    keys = sorted({k for _, k in best})
    where = {k: i for i, k in enumerate(keys)}
    windows = [Window(x0, y0, x1, y1) for y0, x0, y1, x1 in keys]
    return windows, np.array([where[k] for _, k in best], dtype=int)


def paste_rle(mask: np.ndarray, origin: tuple[int, int], hw: tuple[int, int]) -> dict:
    """COCO compressed RLE of a window's ``h×w`` mask placed at ``origin`` ``(x, y)`` in an
    ``(H, W)`` image, without building the full-size mask (cost follows the window).

    pycocotools compresses the run lengths, which come from the mask's 0→1 and 1→0 steps in
    COCO's column-major order.
    """
    from pycocotools import mask as mask_utils

    big_h, big_w = int(hw[0]), int(hw[1])
    x0, y0 = int(origin[0]), int(origin[1])
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    padded = np.zeros((h + 2, w), dtype=np.int8)
    padded[1:-1] = m
    steps = np.diff(padded.T.reshape(-1))  # column-major, each column framed by zeros
    flat = np.flatnonzero(steps)
    col, row = np.divmod(flat, h + 2)  # the step lies between rows `row - 1` and `row` of `col`
    at = (x0 + col) * big_h + y0 + row  # the full image's column-major index of the first changed pixel
    at, times = np.unique(at, return_counts=True)  # a run through a full-height column's end: no step
    at = at[times % 2 == 1]
    bounds = np.concatenate([[0], at, [big_h * big_w]])
    counts = np.diff(bounds).astype(np.uint32)
    if len(counts) > 1 and counts[-1] == 0:  # a mask that reaches the last pixel ends on a run of ones
        counts = counts[:-1]
    rle = mask_utils.frPyObjects({"size": [big_h, big_w], "counts": counts.tolist()}, big_h, big_w)
    return {"size": [big_h, big_w], "counts": rle["counts"].decode("ascii")}


def paste_rles(masks: np.ndarray, origin: tuple[int, int], hw: tuple[int, int]) -> list[dict]:
    """:func:`paste_rle` for an ``N×h×w`` stack."""
    return [paste_rle(m, origin, hw) for m in masks]


def window_pixels(image, window: Window | None) -> np.ndarray:
    """The ``h×w×3`` uint8 pixels of ``window`` (None: all): a view of ``image`` (an array) or,
    for a reader with a ``read(window)`` method (:class:`.tiled.TiledTiff`), read from the file."""
    if hasattr(image, "read"):
        return image.read(window)
    if window is None:
        return image
    return image[window.y0:window.y1, window.x0:window.x1]
