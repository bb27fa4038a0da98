"""Opening and checking rasters: every bad input is one of our InputErrors with a one-line message."""

from __future__ import annotations

import re

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from model.errors import RasterBandsError, RasterReadError, RasterTooLargeError
from model.io.decode_limits import DecodeLimits
from model.io.raster import SAMPLE_TYPES, check_header, inspect, open_raster, read_header, read_window
from tests.fixtures.hostile_tiffs import (
    BITS_PER_SAMPLE,
    COMPLEX_FLOAT,
    COMPLEX_INT,
    PHOTOMETRIC,
    SAMPLE_FORMAT,
    SHORT,
    complex_file,
    write_tiff,
)

BANDS = tuple(range(1, 11))


def _huge_sparse_header(path, size=200_000):
    """A BigTIFF claiming size x size x 10 uint16 (~800 GB) whose file is a few kB: no block is written."""
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=10, dtype="uint16",
        tiled=True, blockxsize=4096, blockysize=4096, BIGTIFF="YES", SPARSE_OK="TRUE",
    ):  # fmt: skip
        pass
    return path


def _header(path):
    with open_raster(path) as src:
        return read_header(src, path)


def test_header_is_read_without_pixels(make_raster):
    path = make_raster(40, 30, bands=12, dtype="int16", nodata=-1)
    header = _header(path)
    assert (header.width, header.height, header.count) == (30, 40, 12)
    assert header.dtypes[0] == "int16" and header.nodata[0] == -1
    assert header.crs == "EPSG:32633" and header.transform == (10.0, 0.0, 399_960.0, 0.0, -10.0, 5_300_040.0)
    assert not header.all_valid
    assert _header(make_raster(8, 8, name="plain.tif")).all_valid


def test_too_few_bands(make_raster):
    header = _header(make_raster(16, 16, bands=3))
    with pytest.raises(RasterBandsError, match="has 3 band"):
        check_header(header, BANDS, max_pixels=10**6)


def test_too_many_pixels_from_a_huge_header_alone(tmp_path):
    # GIVEN a header claiming 200000 x 200000 pixels (the file is tiny and sparse)
    path = _huge_sparse_header(tmp_path / "huge.tif")
    assert path.stat().st_size < 1_000_000
    # THEN it is refused from the header
    with pytest.raises(RasterTooLargeError, match="200000 x 200000"):
        check_header(_header(path), BANDS, max_pixels=150_000_000)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "PNG"),
        (b"hello, this is text", "not a TIFF"),
        (b"II*\x00" + b"\xff" * 60, "TIFF directory .* is corrupt"),
    ],
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(RasterReadError, match=match) as info, open_raster(path):
        pass
    assert "\n" not in str(info.value)


def test_real_png_named_tif(tmp_path):
    png = tmp_path / "x.png"
    with rasterio.open(png, "w", driver="PNG", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), dtype="uint8"))
    path = tmp_path / "x.tif"
    path.write_bytes(png.read_bytes())
    with pytest.raises(RasterReadError, match="PNG"), open_raster(path):
        pass


def test_missing_file(tmp_path):
    with pytest.raises(RasterReadError, match="does not exist"), open_raster(tmp_path / "nope.tif"):
        pass


def test_truncated_pixel_data_fails_on_read(make_raster, tmp_path):
    # GIVEN a tiled, compressed raster cut in half (the header and block index survive)
    path = make_raster(600, 600, tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    # WHEN its pixels are read THEN a one-line RasterReadError names the file
    with (
        open_raster(cut) as src,
        pytest.raises(RasterReadError, match=r"cut\.tif: its pixel data is truncated") as info,
    ):
        read_window(src, BANDS, Window(0, 0, 600, 600), all_valid=True)
    assert "\n" not in str(info.value)


def test_read_window_masks_nodata_and_non_finite(make_raster):
    data = np.ones((2, 4, 4), dtype="float32")
    data[0, 0, 0] = -9999
    data[1, 1, 1] = np.nan
    path = make_raster(4, 4, bands=2, dtype="float32", data=data, nodata=-9999)
    with open_raster(path) as src:
        values, valid = read_window(src, (1, 2), Window(0, 0, 4, 4), all_valid=False)
    assert values.shape == (2, 4, 4)
    expected = np.ones((4, 4), dtype=bool)
    expected[0, 0] = expected[1, 1] = False
    np.testing.assert_array_equal(valid, expected)


def test_every_sample_type_gdal_reports_is_decided():
    # rasterio's names for GDAL's types (Byte ... CFloat64): none may fall through to numpy undecided.
    assert set(rasterio.dtypes.dtype_rev) - {None, "complex"} <= set(SAMPLE_TYPES)


@pytest.mark.parametrize("dtype", [t for t, problem in SAMPLE_TYPES.items() if problem is None])
def test_integer_and_real_samples_are_read(make_raster, dtype):
    check_header(_header(make_raster(8, 8, bands=10, dtype=dtype)), BANDS, max_pixels=10**6)


@pytest.mark.parametrize(
    ("sample_format", "bits", "dtype", "problem"),
    [
        (COMPLEX_INT, 32, "uint32", "complex-valued samples (CInt16"),
        (COMPLEX_INT, 64, "uint32", "complex-valued samples (CInt32 or CFloat32"),
        (COMPLEX_FLOAT, 64, "uint32", "complex-valued samples (CInt32 or CFloat32"),
        (COMPLEX_FLOAT, 128, "uint32", "complex-valued samples (CFloat64"),
        (1, 1, "uint8", "1-bit (bilevel) samples"),
    ],
)
def test_complex_and_bilevel_samples_are_refused_from_the_header(tmp_path, sample_format, bits, dtype, problem):
    tags = {BITS_PER_SAMPLE: (SHORT, [bits] * 10), SAMPLE_FORMAT: (SHORT, [sample_format] * 10)}
    path = write_tiff(tmp_path / "odd.tif", 16, 16, bands=10, dtype=dtype, tags=tags)
    with pytest.raises(RasterReadError, match=re.escape(f"odd.tif: its band 1 holds {problem}")):
        inspect(path, BANDS, max_pixels=10**6, limits=DecodeLimits())


def test_a_paletted_band_is_refused(tmp_path):
    colour_map = {PHOTOMETRIC: (SHORT, [3]), 320: (SHORT, [0] * 768)}
    path = write_tiff(tmp_path / "pal.tif", 16, 16, bands=1, dtype="uint8", tags=colour_map)
    with pytest.raises(RasterReadError, match=r"pal\.tif: its band 1 holds palette indices"):
        inspect(path, (1,), max_pixels=10**6, limits=DecodeLimits())


def test_header_properties_hold_for_every_sample_type(tmp_path):
    # numpy has no complex_int16: what the header says about a band must not ask numpy about its type.
    header = _header(complex_file(tmp_path / "slc.tif"))
    assert header.dtypes[0] == "complex_int16" and header.may_have_invalid is False
    assert header.layout.itemsize == 4
