"""Huge TIFFs and GDAL rasters read window by window, never decoded whole (tifffile, rasterio).

:func:`open_large_image` decides how an image is read:

* a TIFF of more than :data:`WHOLE_PIXELS` pixels: a GeoTIFF, or a TIFF that is untiled
  (strips) or whose tiles tifffile cannot decode, is opened as a :class:`RasterioImage` when
  rasterio is installed (``pip install rasterio``, extra ``sap[geo]``: GDAL reads only the tiles
  or strips a window covers); any other tiled TIFF (BigTIFF too) as a :class:`TiledTiff`
  (tifffile); an untiled one without rasterio is refused in one sentence naming the memory a
  whole decode needs;
* a raster only GDAL reads (:data:`GDAL_SUFFIXES`: JPEG 2000, VRT, ERDAS IMAGINE), any size:
  through rasterio, or one sentence of install help;
* every other image is decoded once, whole, by :func:`.images.load_image_rgb`.

A :class:`TiledTiff` decodes only the tiles a window covers (the last :data:`TILE_CACHE` decoded
tiles are kept, since neighbouring windows overlap). Coordinates: windows ``XYXY`` in image
pixels, right/bottom exclusive. Georeferencing is not used: pixels are pixels.
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
GDAL_SUFFIXES = (".jp2", ".j2k", ".vrt", ".img")  # rasters PIL does not read: rasterio (GDAL) only
RASTERIO_HELP = "pip install rasterio (sap's extra: pip install 'sap[geo]')"


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


def _rasterio():
    """The rasterio module, or None when it is not installed."""
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


class RasterioImage:
    """A raster read by window through rasterio (GDAL decodes only the blocks a window covers).

    Bands 1-3 are RGB; a raster of 1 or 2 bands is grey (band 1). 8- and 16-bit samples.

    Attributes:
        height, width: the raster's size in pixels.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        rasterio = _rasterio()
        if rasterio is None:
            raise ImageError(f"reading {Path(path).name} window by window needs rasterio: {RASTERIO_HELP}")
        self.path = Path(path)
        try:
            self.ds = rasterio.open(self.path)
        except Exception as e:  # rasterio's RasterioIOError and friends
            raise ImageError(f"image file {self.path} cannot be read by rasterio (GDAL): {e}") from None
        self.height, self.width = int(self.ds.height), int(self.ds.width)
        self.bands = [1, 2, 3] if self.ds.count >= 3 else [1]

    def read(self, window=None) -> np.ndarray:
        """``h×w×3`` uint8 RGB of ``window`` (an object with ``x0, y0, x1, y1``; None: all of it)."""
        from rasterio.windows import Window as RasterWindow

        x0, y0, x1, y1 = (0, 0, self.width, self.height) if window is None else \
            (window.x0, window.y0, window.x1, window.y1)
        bands = self.ds.read(self.bands, window=RasterWindow(x0, y0, x1 - x0, y1 - y0))  # bands×h×w
        return _rgb_uint8(np.ascontiguousarray(bands.transpose(1, 2, 0)))

    def close(self) -> None:
        self.ds.close()


def open_large_image(path: str | os.PathLike, expected_wh: tuple[int, int] | None = None):
    """A reader with ``read(window)`` for an image read by window (module docstring), else None
    (the caller decodes the image whole).

    Raises:
        ImageError: a raster only GDAL reads without rasterio, an untiled TIFF too large to decode
            whole without rasterio (the sentence names the memory it would need), or a size that
            disagrees with ``expected_wh`` ``(width, height)``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in GDAL_SUFFIXES and path.is_file():
        return _checked(RasterioImage(path), path, expected_wh)
    if suffix not in TIFF_SUFFIXES or not path.is_file():
        return None
    try:
        with _tifffile().TiffFile(path) as tif:
            page = tif.pages.first
            h, w, tiled, geo = int(page.imagelength), int(page.imagewidth), bool(page.is_tiled), bool(page.is_geotiff)
    except ImageError:
        raise
    except Exception as e:  # tifffile's TiffFileError and friends: let PIL report the file
        del e
        return None
    if h * w <= WHOLE_PIXELS:
        return None
    if expected_wh is not None and (w, h) != tuple(expected_wh):
        raise ImageError(f"image {path.name} is {w}×{h} but the annotation file says {expected_wh[0]}×{expected_wh[1]}")
    have_rasterio = _rasterio() is not None
    if have_rasterio and (geo or not tiled):
        return RasterioImage(path)
    if not tiled:
        raise ImageError(f"image {path.name} is an untiled {w}×{h} TIFF: it cannot be read in windows without "
                         f"rasterio and decoding it whole needs {h * w * 3 / 2 ** 30:.1f} GiB; {RASTERIO_HELP} to "
                         "read it strip by strip, or save it tiled (e.g. tifffile's tile=(256, 256) or "
                         "gdal_translate -co TILED=YES)")
    reader = TiledTiff(path)
    try:
        reader._tile(0)  # the first tile decodes: tifffile has the codec
    except ImageError:
        reader.close()
        raise
    except Exception as e:  # a codec tifffile lacks (e.g. JPEG tiles without imagecodecs)
        reader.close()
        if have_rasterio:
            return RasterioImage(path)
        raise ImageError(f"image {path.name}: tifffile cannot decode its tiles ({e}); {RASTERIO_HELP}, or "
                         "pip install imagecodecs") from None
    return reader


def _checked(reader: RasterioImage, path: Path, expected_wh: tuple[int, int] | None) -> RasterioImage:
    """``reader`` when its size is ``expected_wh`` ``(width, height)``.

    Raises:
        ImageError: the sizes differ (the reader is closed).
    """
    if expected_wh is not None and (reader.width, reader.height) != tuple(expected_wh):
        reader.close()
        raise ImageError(f"image {path.name} is {reader.width}×{reader.height} but the annotation file says "
                         f"{expected_wh[0]}×{expected_wh[1]}")
    return reader
