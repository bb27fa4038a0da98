"""The COG of the mask: valid per rio-cogeo, georeferenced as the input, exact classes, nearest overviews,
colour map, 512 tiles, ZSTD; streamed from rows or assembled from parts; nothing left behind on error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Compression
from rio_cogeo.cogeo import cog_validate

from model.io.cog import (
    COG_BLOCK,
    MASK_NODATA,
    SCORE_NODATA,
    CogWriter,
    RowRasterWriter,
    assemble_cog,
    cog_values,
    part_transform,
    score_of,
)
from model.io.raster import open_raster, read_header

UTM = ("EPSG:32633", Affine(10.0, 0.0, 399_960.0, 0.0, -10.0, 5_300_040.0))
GEOGRAPHIC = ("EPSG:4326", Affine(0.0001, 0.0, 12.0, 0.0, -0.0001, 46.0))


def input_header(make_raster, height, width, crs, transform):
    """The header our reader gives for a generated input raster: the CRS and transform a COG must carry."""
    path = make_raster(height, width, bands=1, crs=crs, transform=transform)
    with open_raster(path) as src:
        return read_header(src, path)


def random_scores(shape, seed=0):
    """Scores whose mask is salt and pepper: any averaging overview would differ from a decimation."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def invalid_pixels(shape):
    valid = np.ones(shape, bool)
    valid[:37, :] = False  # a nodata stripe along the top
    valid[200:260, 100:180] = False  # and a hole
    return valid


def write_cog(path, scores, valid, header, kind="mask", rows_per_write=300, **kwargs):
    shape = scores.shape
    with CogWriter(path, shape, kind, header.crs, header.transform, 0.5, **kwargs) as out:
        for top in range(0, shape[0], rows_per_write):
            out.write_rows(
                scores[top : top + rows_per_write], None if valid is None else valid[top : top + rows_per_write]
            )


def assert_valid_cog(path):
    is_valid, errors, warnings = cog_validate(str(path), quiet=True)
    assert is_valid and errors == [] and warnings == []


def assert_mask_cog(path, expected, header):
    assert_valid_cog(path)
    with rasterio.open(path) as cog:
        assert cog.crs == rasterio.crs.CRS.from_user_input(header.crs)
        assert tuple(cog.transform)[:6] == pytest.approx(header.transform, abs=1e-12)
        assert cog.dtypes == ("uint8",) and cog.nodata == MASK_NODATA
        assert cog.block_shapes == [(COG_BLOCK, COG_BLOCK)]
        assert cog.compression == Compression.zstd
        colours = cog.colormap(1)
        assert colours[1][1] > 150 and colours[1][3] == 255  # green, opaque
        assert colours[MASK_NODATA][3] == 0  # transparent
        np.testing.assert_array_equal(cog.read(1), expected)
        if max(expected.shape) > COG_BLOCK:
            assert cog.overviews(1)
    if max(expected.shape) > COG_BLOCK:
        with rasterio.open(path, OVERVIEW_LEVEL=0) as overview:
            coarse = overview.read(1)
        assert set(np.unique(coarse)) <= {0, 1, MASK_NODATA}
        if expected.shape[0] % 2 == 0 and expected.shape[1] % 2 == 0:
            # Nearest-neighbour decimation, exactly: an averaged or moded overview of salt and pepper would differ.
            # (An odd size makes GDAL's sampling ratio slightly more than 2, so its picks drift.)
            np.testing.assert_array_equal(coarse, expected[::2, ::2])


def test_cog_values_mask_and_score():
    scores = np.array([[0.1, 0.5, 0.9], [0.7, 0.2, 0.6]], np.float32)
    valid = np.array([[True, True, True], [False, True, True]])
    assert cog_values(scores, valid, 0.5, "mask").tolist() == [[0, 0, 1], [MASK_NODATA, 0, 1]]
    assert cog_values(scores, None, 0.5, "mask").dtype == np.uint8
    score = cog_values(scores, valid, 0.5, "score")
    assert score.dtype == np.uint8 and score[1, 0] == SCORE_NODATA and score[0, 2] == round(0.9 * 254)
    assert scores[1, 0] == np.float32(0.7)  # pure: the caller's rows are untouched
    with pytest.raises(ValueError, match="kind"):
        cog_values(scores, valid, 0.5, "probability")


@pytest.mark.parametrize(
    ("height", "width", "georef", "with_invalid"),
    [
        pytest.param(1300, 1100, UTM, True, id="utm-with-invalid"),
        pytest.param(700, 600, GEOGRAPHIC, False, id="geographic"),
        pytest.param(1000, 777, UTM, True, id="odd-non-square"),
        pytest.param(300, 200, UTM, False, id="smaller-than-a-tile"),
    ],
)
def test_cog_of_a_scene(tmp_path, make_raster, height, width, georef, with_invalid):
    header = input_header(make_raster, height, width, *georef)
    scores = random_scores((height, width))
    valid = invalid_pixels((height, width)) if with_invalid else None
    dst = tmp_path / "out" / "mask.tif"
    dst.parent.mkdir()
    write_cog(dst, scores, valid, header)
    expected = (scores > 0.5).astype(np.uint8)
    if valid is not None:
        expected[~valid] = MASK_NODATA
    assert_mask_cog(dst, expected, header)
    assert [p.name for p in dst.parent.iterdir()] == ["mask.tif"]


def test_assembled_from_three_parts_equals_the_streamed_cog(tmp_path, make_raster):
    height, width = 1300, 1100
    header = input_header(make_raster, height, width, *UTM)
    scores, valid = random_scores((height, width), seed=1), invalid_pixels((height, width))
    values = cog_values(scores, valid, 0.5, "mask")
    parts = []
    for i, (top, bottom) in enumerate([(0, 448), (448, 896), (896, height)]):
        part = tmp_path / f"part-{i}.tif"
        with RowRasterWriter(
            part, (bottom - top, width), "mask", header.crs, part_transform(header.transform, top)
        ) as w:
            w.write_values(values[top:bottom])
        parts.append(part)
    dst = tmp_path / "assembled.tif"
    assemble_cog(parts, dst, (height, width), "mask", header.crs, header.transform)
    assert_mask_cog(dst, values, header)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "assembled.tif",
        "part-0.tif",
        "part-1.tif",
        "part-2.tif",
        "r.tif",
    ]


def test_score_cog_is_scaled_uint8_with_nodata_and_averaged_overviews(tmp_path, make_raster):
    header = input_header(make_raster, 1024, 1024, *UTM)
    scores, valid = random_scores((1024, 1024)), invalid_pixels((1024, 1024))
    dst = tmp_path / "scores.tif"
    write_cog(dst, scores, valid, header, kind="score")
    assert_valid_cog(dst)
    with rasterio.open(dst) as cog:
        assert cog.dtypes == ("uint8",) and cog.nodata == SCORE_NODATA
        assert cog.scales == (pytest.approx(1 / 254),) and cog.offsets == (0.0,)  # readers see probabilities
        assert cog.compression == Compression.zstd
        stored = cog.read(1)
        np.testing.assert_array_equal(stored == SCORE_NODATA, ~valid)
        np.testing.assert_allclose(score_of(stored)[valid], scores[valid], atol=0.5 / 254 + 1e-6)
    with rasterio.open(dst, OVERVIEW_LEVEL=0) as overview:
        # Averaged: a coarse pixel is the mean of its 2 x 2 block (nearest would give one of its values).
        coarse = overview.read(1).astype(float)
    blocks = stored[512:, 512:].reshape(256, 2, 256, 2).mean(axis=(1, 3))
    assert np.abs(coarse[256:, 256:] - blocks).max() <= 0.5 + 1e-9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tif", "scores.tif"]  # no sidecar, no temp file


def test_score_values_clip_round_and_mark_nodata():
    scores = np.array([[-0.2, 0.0, 0.5, 1.0, 1.7, np.nan]], np.float32)
    values = cog_values(scores, None, 0.5, "score")
    assert values.tolist() == [[0, 0, 127, 254, 254, SCORE_NODATA]]
    assert np.isnan(score_of(values)[0, 5]) and score_of(values)[0, 3] == 1.0


def test_staging_goes_to_tmp_dir_and_is_removed(tmp_path, make_raster):
    header = input_header(make_raster, 600, 600, *UTM)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    write_cog(tmp_path / "m.tif", random_scores((600, 600)), None, header, tmp_dir=scratch)
    assert list(scratch.iterdir()) == []
    assert_valid_cog(tmp_path / "m.tif")


def test_an_error_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    target = tmp_path / "m.tif"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), CogWriter(target, (600, 600), "mask", *UTM[0:1], UTM[1], 0.5) as out:
        out.write_rows(random_scores((300, 600)), None)
        raise RuntimeError("inference failed")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_too_few_rows_is_an_error_and_leaves_nothing(tmp_path):
    with (
        pytest.raises(ValueError, match="only 512 of 600"),
        CogWriter(tmp_path / "m.tif", (600, 600), "mask", *UTM, 0.5) as out,
    ):
        out.write_rows(random_scores((512, 600)), None)
    assert list(tmp_path.iterdir()) == []


def test_wrong_rows_are_refused_and_leave_nothing(tmp_path):
    with (
        pytest.raises(ValueError, match="do not fit"),
        CogWriter(tmp_path / "m.tif", (600, 600), "mask", *UTM, 0.5) as out,
    ):
        out.write_rows(random_scores((10, 601)), None)
    with (
        pytest.raises(ValueError, match="more than 600"),
        CogWriter(tmp_path / "m.tif", (600, 600), "mask", *UTM, 0.5) as out,
    ):
        out.write_rows(random_scores((601, 600)), None)
    assert list(tmp_path.iterdir()) == []


def test_a_part_that_does_not_fit_is_refused_and_leaves_nothing(tmp_path):
    crs, transform = UTM
    part = tmp_path / "parts" / "p.tif"
    part.parent.mkdir()
    with RowRasterWriter(part, (600, 600), "mask", crs, tuple(transform)) as w:
        w.write_values(np.zeros((600, 600), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"part p\.tif does not fit"):
        assemble_cog([part], out / "m.tif", (600, 500), "mask", crs, tuple(transform))
    with pytest.raises(ValueError, match="only 600 of 1200"):
        assemble_cog([part], out / "m.tif", (1200, 600), "mask", crs, tuple(transform))
    with pytest.raises(ValueError, match="transform"):
        assemble_cog([part, part], out / "m.tif", (1200, 600), "mask", crs, tuple(transform))
    assert list(out.iterdir()) == []


def test_no_crs_gives_a_cog_without_one(tmp_path):
    dst = tmp_path / "m.tif"
    write_cog(dst, random_scores((600, 600)), None, type("H", (), {"crs": None, "transform": (1, 0, 0, 0, -1, 600)}))
    assert_valid_cog(dst)
    with rasterio.open(dst) as cog:
        assert cog.crs is None


def test_a_failed_cog_build_leaves_nothing(tmp_path, monkeypatch):
    # GIVEN the COG driver fails half-way, after writing part of its output and a temporary overview file
    def failing_copy(src, dst, **options):
        Path(dst).write_bytes(b"half a COG")
        Path(f"{dst}.ovr.tmp").write_bytes(b"overviews")
        raise rasterio.errors.RasterioIOError("disk full")

    monkeypatch.setattr("model.io.cog.rasterio.shutil.copy", failing_copy)
    target = tmp_path / "m.tif"
    target.write_bytes(b"previous")
    # WHEN the writer closes, THEN the error reaches the caller and nothing is left but the previous file
    with pytest.raises(rasterio.errors.RasterioIOError), CogWriter(target, (600, 600), "mask", *UTM, 0.5) as out:
        out.write_rows(random_scores((600, 600)), None)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]


def test_assemble_stages_in_tmp_dir_and_leaves_nothing_there(tmp_path):
    crs, transform = UTM
    values = cog_values(random_scores((700, 600)), None, 0.5, "mask")
    parts = []
    for top, bottom in [(0, 300), (300, 700)]:
        part = tmp_path / f"p{top}.tif"
        with RowRasterWriter(part, (bottom - top, 600), "mask", crs, part_transform(transform, top)) as w:
            w.write_values(values[top:bottom])
        parts.append(part)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assemble_cog(parts, tmp_path / "m.tif", (700, 600), "mask", crs, transform, tmp_dir=scratch)
    assert list(scratch.iterdir()) == []
    assert_valid_cog(tmp_path / "m.tif")
    with rasterio.open(tmp_path / "m.tif") as cog:
        np.testing.assert_array_equal(cog.read(1), values)


def test_a_part_is_a_georeferenced_geotiff_of_its_rows(tmp_path):
    crs, transform = UTM
    with RowRasterWriter(tmp_path / "p.tif", (100, 600), "mask", crs, part_transform(transform, 512)) as w:
        w.write_values(np.ones((100, 600), np.uint8))
    with rasterio.open(tmp_path / "p.tif") as part:
        assert part.crs == rasterio.crs.CRS.from_user_input(crs) and part.nodata == MASK_NODATA
        assert part.transform.f == transform.f - 512 * 10.0 and part.block_shapes == [(COG_BLOCK, COG_BLOCK)]
        assert part.colormap(1)[1][1] > 150
