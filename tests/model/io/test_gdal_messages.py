"""GDAL/libtiff/PROJ text reaches the debug log only; PROJ finds its data wherever rasterio is used."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from model.errors import RasterReadError
from model.io.gdal_messages import explain_open_error, explain_read_error, packaged_proj_data
from model.io.raster import open_raster, read_header
from tests.fixtures.hostile_tiffs import EXTRA_SAMPLES, SHORT, geo_tags, write_tiff
from tests.fixtures.paths import REPO_ROOT

BUILD_PATH = "/project/gdal-3.10.3/frmts/gtiff/gtiffdataset_read.cpp, 3339: cannot allocate 1x171793449000 bytes"


def clean_env() -> dict[str, str]:
    """The environment of a fresh CLI, Lambda INIT or Knative start: nobody set PROJ's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROJ_", "GDAL_"))}
    return env | {"PYTHONPATH": str(REPO_ROOT)}


def read_in_child(path) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        "from model.io.raster import open_raster, read_header\n"
        "with open_raster(sys.argv[1]) as src:\n"
        "    print(read_header(src, sys.argv[1]).crs)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(path)], env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True
    )


@pytest.mark.parametrize(("unit", "crs"), [(9999, "EPSG:4326"), (9105, 'UNIT["grad"')])
def test_an_angular_unit_geokey_reads_and_proj_says_nothing_on_stderr(tmp_path, unit, crs):
    # GIVEN a user-defined geographic CRS whose angular unit libgeotiff looks up in PROJ's database (9999 is
    # no unit at all: PROJ printed "Cannot find proj.db" before, then "unit of measure not found")
    path = write_tiff(tmp_path / "angular.tif", 32, 24, bands=10, tags=geo_tags(unit, geographic_type=32767))
    # WHEN its header is read in a process started without PROJ_DATA / PROJ_LIB
    result = read_in_child(path)
    # THEN the CRS reads and stderr is empty
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert crs in result.stdout


def test_proj_data_is_rasterios_packaged_copy_in_this_environment():
    folder = packaged_proj_data()
    assert folder is not None and (folder / "proj.db").is_file()
    assert os.environ["PROJ_DATA"] == str(folder) or "PROJ_LIB" in os.environ or "PROJ_DATA" in clean_env()


def test_libtiff_warnings_go_to_the_debug_log_not_stderr(tmp_path, caplog, capfd):
    # GIVEN a TIFF libtiff warns about (ExtraSamples do not add up), read with debug logging on
    path = write_tiff(tmp_path / "odd.tif", 16, 16, bands=10, tags={EXTRA_SAMPLES: (SHORT, [0, 0, 0])})
    with caplog.at_level(logging.DEBUG, logger="model.gdal"), open_raster(path) as src:
        assert read_header(src, path).count == 10
    # THEN the warning is a debug record of ours, and nothing was printed
    gdal = [r for r in caplog.records if r.name == "model.gdal"]
    assert any("ExtraSamples" in r.getMessage() and r.levelno == logging.DEBUG for r in gdal)
    assert capfd.readouterr().err == ""


def test_the_librarys_text_is_logged_at_debug_and_never_shown(tmp_path, caplog):
    path = write_tiff(tmp_path / "corrupt.tif", 16, 16, bands=10, tags={256: (4, [16, 16, 16])})
    with caplog.at_level(logging.DEBUG, logger="model.gdal"), pytest.raises(RasterReadError) as info, open_raster(path):
        pass
    message = str(info.value)
    assert message.startswith("corrupt.tif: its TIFF directory (the header) is corrupt; expected a TIFF")
    assert "TIFFFetchNormalTag" not in message and "ImageWidth" not in message
    assert any("TIFFFetchNormalTag" in r.getMessage() for r in caplog.records if r.name == "model.gdal")


@pytest.mark.parametrize(
    ("library", "fragment"),
    [
        (f"a.tif: {BUILD_PATH}", "declares sizes no real image has"),
        ('TIFFReadDirectory:Out of memory reading of "Compression"', "declares sizes no real image has"),
        ('a.tif: TIFFFetchNormalTag:Incorrect count for "ImageWidth"', "TIFF directory (the header) is corrupt"),
        ('_TIFFVSetField:/tmp/x/a.tif: Bad value 0 for "RowsPerStrip" tag', "declares sizes no real image has"),
        ("a.tif: Cannot open TIFF file due to missing codec JP2000.", "codec this function does not have (JP2000)"),
        ("a.tif: something new", "its TIFF header cannot be read"),
    ],
)
def test_open_errors_in_the_users_terms(library, fragment):
    message = str(explain_open_error("a.tif", RuntimeError(library)))
    assert message.startswith("a.tif: ") and message.count("a.tif") == 1 and fragment in message
    assert "/" not in message.split("`")[0] and ".cpp" not in message and "TIFF" in message
    assert "expected a TIFF or GeoTIFF raster" in message and "\n" not in message


def test_read_errors_name_the_rows_not_the_library():
    message = str(explain_read_error("a.tif", RuntimeError(BUILD_PATH), 0, 40))
    assert message.startswith("a.tif: its pixel data at rows 0-40 is corrupt") and ".cpp" not in message
    message = str(explain_read_error("a.tif", RuntimeError("ZIPDecode:Decoding error at scanline 4"), 512, 1024))
    assert "truncated or corrupt (rows 512-1024 cannot be decoded)" in message and "ZIPDecode" not in message
