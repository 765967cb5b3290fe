"""Huge TIFFs read window by window, never decoded whole (tifffile).

:func:`open_large_image` decides how an image is read: a TIFF of more than
:data:`WHOLE_PIXELS` pixels is opened as a :class:`TiledTiff` when it is tiled (BigTIFF too), and
refused in one sentence naming the memory a whole decode needs when it is not; every other image
is decoded once, whole, by :func:`.images.load_image_rgb`. A :class:`TiledTiff` decodes only the
tiles a window covers (the last :data:`TILE_CACHE` decoded tiles are kept, since neighbouring
windows overlap). Coordinates: windows ``XYXY`` in image pixels, right/bottom exclusive.
GeoTIFFs are TIFFs: their pixels read the same way (their georeferencing is not used).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .errors import ImageError

WHOLE_PIXELS = 2 ** 27  # larger TIFFs are read window by window (a whole RGB decode: 384 MiB)
TILE_CACHE = 256  # decoded tiles kept (256 px RGB tiles: 48 MiB)
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


def _tifffile():
    try:
        import tifffile
    except ImportError:
        raise ImageError("reading large TIFFs window by window needs tifffile: pip install tifffile") from None
    return tifffile


class TiledTiff:
    """The first page of a tiled TIFF, read by window.

    Attributes:
        height, width: the image's size in pixels.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tif = _tifffile().TiffFile(self.path)
        page = self.tif.pages.first
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.tile_h, self.tile_w = int(page.tilelength), int(page.tilewidth)
        self.across = -(-self.width // self.tile_w)
        if page.planarconfig != 1 or page.imagedepth != 1:
            self.close()
            raise ImageError(f"image file {self.path} stores its colour planes apart (or in depth); sap reads "
                             "interleaved (contiguous) tiled TIFFs window by window")
        self._tile = functools.lru_cache(maxsize=TILE_CACHE)(self._decode_tile)

    def _decode_tile(self, index: int) -> np.ndarray:
        fh = self.tif.filehandle
        with fh.lock:
            fh.seek(self.page.dataoffsets[index])
            data = fh.read(self.page.databytecounts[index])
        seg, _, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
        if seg is None:  # an empty tile: black
            return np.zeros((self.tile_h, self.tile_w, 3), np.uint8)
        return _rgb_uint8(seg.reshape(self.tile_h, self.tile_w, -1))

    def read(self, window=None) -> np.ndarray:
        """``h×w×3`` uint8 RGB of ``window`` (an object with ``x0, y0, x1, y1``; None: all of it)."""
        x0, y0, x1, y1 = (0, 0, self.width, self.height) if window is None else \
            (window.x0, window.y0, window.x1, window.y1)
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // self.tile_h, (y1 - 1) // self.tile_h + 1):
            for tx in range(x0 // self.tile_w, (x1 - 1) // self.tile_w + 1):
                tile = self._tile(ty * self.across + tx)
                ty0, tx0 = ty * self.tile_h, tx * self.tile_w
                a, b = max(y0, ty0), min(y1, ty0 + self.tile_h)
                c, d = max(x0, tx0), min(x1, tx0 + self.tile_w)
                out[a - y0:b - y0, c - x0:d - x0] = tile[a - ty0:b - ty0, c - tx0:d - tx0]
        return out

    def close(self) -> None:
        self.tif.close()


def _rgb_uint8(seg: np.ndarray) -> np.ndarray:
    """``h×w×S`` samples (gray, gray+alpha, RGB, RGBA; 8 or 16 bit) → ``h×w×3`` uint8 RGB."""
    if seg.dtype == np.uint16:
        seg = (seg.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif seg.dtype != np.uint8:
        raise ImageError(f"a {seg.dtype} TIFF is not an 8- or 16-bit image sap can read window by window")
    if seg.shape[-1] in (1, 2):
        return np.repeat(seg[..., :1], 3, axis=-1)
    return np.ascontiguousarray(seg[..., :3])


def open_large_image(path: str | os.PathLike, expected_wh: tuple[int, int] | None = None):
    """A :class:`TiledTiff` for a TIFF of more than :data:`WHOLE_PIXELS` pixels, else None (the
    caller decodes the image whole).

    Raises:
        ImageError: the TIFF is not tiled and too large to decode whole (the sentence names the
            memory it would need), or its size disagrees with ``expected_wh`` ``(width, height)``.
    """
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return None
    try:
        with _tifffile().TiffFile(path) as tif:
            page = tif.pages.first
            h, w, tiled = int(page.imagelength), int(page.imagewidth), bool(page.is_tiled)
    except ImageError:
        raise
    except Exception as e:  # tifffile's TiffFileError and friends: let PIL report the file
        del e
        return None
    if h * w <= WHOLE_PIXELS:
        return None
    if expected_wh is not None and (w, h) != tuple(expected_wh):
        raise ImageError(f"image {path.name} is {w}×{h} but the annotation file says {expected_wh[0]}×{expected_wh[1]}")
    if not tiled:
        raise ImageError(f"image {path.name} is an untiled {w}×{h} TIFF: it cannot be read in windows and decoding it "
                         f"whole needs {h * w * 3 / 2 ** 30:.1f} GiB; save it tiled (e.g. tifffile's tile=(256, 256) "
                         "or gdal_translate -co TILED=YES)")
    return TiledTiff(path)
