"""GeoTIFFs and other GDAL rasters read window by window through rasterio (the `geo` extra), and
one sentence of install help without it."""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.core import tiled
from pseudolabel.core.errors import ImageError
from pseudolabel.core.windows import Window

WINDOWS = (Window(0, 0, 500, 300), Window(100, 120, 390, 300), Window(127, 127, 129, 129))


def _write(path, img, **kw):
    import rasterio
    from rasterio.transform import Affine

    h, w, bands = img.shape
    with rasterio.open(path, "w", width=w, height=h, count=bands, dtype=img.dtype, crs="EPSG:32633",
                       transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000), **kw) as ds:
        ds.write(img.transpose(2, 0, 1))


@pytest.fixture
def img():
    return np.random.default_rng(4).integers(0, 255, (300, 500, 3), dtype=np.uint8)


def test_a_large_geotiff_tiled_or_in_strips_is_read_by_window_through_rasterio(tmp_path, monkeypatch, img):
    _write(tmp_path / "tiled.tif", img, driver="GTiff", tiled=True, blockxsize=128, blockysize=128,
           compress="deflate")
    _write(tmp_path / "strips.tif", img, driver="GTiff")
    assert tiled.open_large_image(tmp_path / "tiled.tif") is None  # small: decoded whole as before
    monkeypatch.setattr(tiled, "WHOLE_PIXELS", 1000)
    for name in ("tiled.tif", "strips.tif"):
        reader = tiled.open_large_image(tmp_path / name, (500, 300))
        assert isinstance(reader, tiled.RasterioImage)
        for win in WINDOWS:
            assert np.array_equal(reader.read(win), img[win.y0:win.y1, win.x0:win.x1])
        reader.close()
    grey = (img[..., :1].astype(np.uint16) * 257)  # one 16-bit band: grey, scaled to 8 bits
    _write(tmp_path / "grey.tif", grey, driver="GTiff")
    reader = tiled.open_large_image(tmp_path / "grey.tif")
    assert np.array_equal(reader.read(WINDOWS[1]), np.repeat(img[120:300, 100:390, :1], 3, axis=2))
    reader.close()
    with pytest.raises(ImageError, match="annotation file says 300×500"):
        tiled.open_large_image(tmp_path / "strips.tif", (300, 500))


def test_a_raster_only_gdal_reads_goes_through_rasterio_at_any_size(tmp_path, img):
    _write(tmp_path / "scene.img", img, driver="HFA")  # ERDAS IMAGINE: PIL cannot read it
    reader = tiled.open_large_image(tmp_path / "scene.img", (500, 300))
    assert np.array_equal(reader.read(WINDOWS[1]), img[120:300, 100:390])
    reader.close()


def test_without_rasterio_one_sentence_says_how_to_install_it(tmp_path, monkeypatch, img):
    _write(tmp_path / "strips.tif", img, driver="GTiff")
    _write(tmp_path / "scene.img", img, driver="HFA")
    monkeypatch.setattr(tiled, "_rasterio", lambda: None)
    with pytest.raises(ImageError, match=r"scene.img window by window needs rasterio: pip install rasterio"):
        tiled.open_large_image(tmp_path / "scene.img")
    monkeypatch.setattr(tiled, "WHOLE_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"untiled 500×300 TIFF.*needs 0.0 GiB; pip install rasterio"):
        tiled.open_large_image(tmp_path / "strips.tif")
