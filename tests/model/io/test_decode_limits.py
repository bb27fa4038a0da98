"""Decode cost bounded from the header: each attack of issue 9 is refused in one line, or read within bounds.

Hostile files are built byte by byte (tests/fixtures/hostile_tiffs.py, a few kB each); every read of one runs
in a child process (tests/fixtures/child.py), so a native abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from model.errors import RasterReadError, RasterTooLargeError
from model.io.decode_limits import (
    MIN_BLOCK_SIDE,
    SPARSE_PIXEL_ALLOWANCE,
    BlockLayout,
    DecodeLimits,
    cache_bytes,
    check_layout,
    stat_windows,
)
from tests.fixtures.child import run_rasterfn
from tests.fixtures.hostile_tiffs import (
    DEFLATE,
    JPEG,
    LERC,
    LZMA,
    WEBP,
    codec_file,
    giant_strip_file,
    huge_tile_file,
    many_bands_file,
    sparse_file,
    write_tiff,
)

RSS_LIMIT_MB = 1200  # issue 9: peak RSS of `rasterfn predict` for every accepted file
SIGABRT_EXIT = -6


def layout(**fields) -> BlockLayout:
    """A plain 1024 x 1024 x 10 uint16 DEFLATE file in 256-pixel tiles, band-interleaved, 10 MB stored."""
    values = dict(
        width=1024, height=1024, count=10, itemsize=2, block_height=256, block_width=256,
        pixel_interleaved=False, compression="DEFLATE", file_bytes=10_000_000,
    )  # fmt: skip
    return BlockLayout(**(values | fields))


# -- the checks, on layouts -----------------------------------------------------------------------------------


def test_an_ordinary_layout_passes():
    check_layout(layout(), DecodeLimits(), "a.tif")
    check_layout(layout(width=100, height=100, block_width=512, block_height=512), DecodeLimits(), "small.tif")


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"count": 513}, RasterTooLargeError, r"513 bands, more than the limit of 512 \(MAX_BANDS\)"),
        ({"compression": "LERC"}, RasterReadError, r"compressed with LERC.*ALLOWED_COMPRESSIONS"),
        ({"block_width": 2**31 - 16}, RasterReadError, "tiles 2,147,483,632 columns wide, larger than the image"),
        ({"block_height": 4096, "block_width": 1024}, RasterReadError, "4,096 rows high, larger than the image"),
        ({"block_width": 1024, "block_height": 1024, "pixel_interleaved": True}, RasterTooLargeError, "20 MiB"),
        ({"width": 5000, "height": 5000, "file_bytes": 400_000}, RasterTooLargeError, "MAX_COMPRESSION_RATIO"),
    ],
)
def test_each_limit_refuses_with_its_variable(fields, error, match):
    limits = DecodeLimits(max_block_bytes=16 * 1024**2)
    with pytest.raises(error, match=match) as info:
        check_layout(layout(**fields), limits, "a.tif")
    assert str(info.value).startswith("a.tif: ") and str(info.value).count("a.tif") == 1
    assert "expected " in str(info.value) and "\n" not in str(info.value)


def test_pixel_interleaved_blocks_count_every_band():
    # 512 x 512 x 10 uint16: 5 MiB per band-interleaved block, 50 MiB when every band shares the block
    assert layout(block_width=512, block_height=512).block_bytes == 512 * 512 * 2
    assert layout(block_width=512, block_height=512, pixel_interleaved=True).block_bytes == 512 * 512 * 2 * 10


def test_small_sparse_files_are_still_processed():
    # Empty or constant blocks compress past any ratio; below the allowance they cost seconds, so they pass.
    side = int(SPARSE_PIXEL_ALLOWANCE**0.5)
    check_layout(layout(width=side, height=side, file_bytes=1000), DecodeLimits(), "a.tif")
    with pytest.raises(RasterTooLargeError):
        check_layout(layout(width=side + 16, height=side + 16, file_bytes=1000), DecodeLimits(), "a.tif")


def test_configured_codecs_are_allowed():
    check_layout(layout(compression="LERC"), DecodeLimits(compressions=("LERC",)), "a.tif")


def test_blocks_up_to_the_minimum_side_are_normal_for_small_images():
    check_layout(
        layout(width=40, height=40, block_width=MIN_BLOCK_SIDE, block_height=MIN_BLOCK_SIDE), DecodeLimits(), "a"
    )


def test_cache_holds_one_row_of_blocks_within_floor_and_ceiling():
    # A 4096-wide file in 4096-row strips, 10 bands read: 10 strips of 32 MiB must stay cached
    tall = layout(width=4096, height=8192, block_width=4096, block_height=4096)
    assert cache_bytes(tall, 10) == 10 * 4096 * 4096 * 2
    assert cache_bytes(layout(), 10) == 128 * 1024**2  # the floor: small tiles change nothing
    assert cache_bytes(layout(width=200_000, height=512, block_width=512, block_height=512), 10) == 384 * 1024**2


@pytest.mark.parametrize(
    ("height", "width", "block"),
    [(1000, 100, (256, 100)), (100, 100_000, (256, 256)), (5000, 4096, (4096, 4096)), (7, 5, (1, 5))],
)
def test_stat_windows_cover_the_image_once_within_the_budget(height, width, block):
    budget = 30_000
    covered = np.zeros((height, width), dtype=np.int8)
    for left, top, w, h in stat_windows(height, width, block, budget):
        covered[top : top + h, left : left + w] += 1
        assert w * h <= max(budget, block[0] * min(block[1], width))
    assert (covered == 1).all()


# -- the attacks, end to end in a child process -----------------------------------------------------------


def predict_child(path, card, *extra, env=None, timeout=300):
    return run_rasterfn(["predict", str(path), "--model", str(card), "--no-progress", *extra], timeout, env)


def assert_one_line_refusal(result, name: str, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rasterfn predict: {name}: ") and lines[0].count(name) == 1
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_a_2_31_pixel_tile_is_refused_before_any_read(tmp_path, tiny_model_card):
    # GIVEN a 3.5 kB file whose tiles are declared 2**31 - 16 pixels wide (GDAL's threaded reader aborted)
    path = huge_tile_file(tmp_path / "huge-tile.tif")
    assert path.stat().st_size < 10_000
    # WHEN predicted THEN one line, exit 2, no abort, no output
    result = predict_child(path, tiny_model_card)
    assert result.returncode != SIGABRT_EXIT
    assert_one_line_refusal(result, "huge-tile.tif", "larger than the image", "gdal_translate -co TILED=YES")
    assert not (tmp_path / "huge-tile.npy").exists()


@pytest.mark.slow
def test_one_6000_row_strip_of_10_bands_is_refused_from_the_header(tmp_path, tiny_model_card):
    # GIVEN 0.7 MB holding one DEFLATE strip that decodes to 720 MB (2 GB RSS and 80 s before)
    path = giant_strip_file(tmp_path / "strip.tif")
    assert path.stat().st_size < 1_000_000
    result = predict_child(path, tiny_model_card)
    assert_one_line_refusal(result, "strip.tif", "687 MiB", "MAX_BLOCK_BYTES", "TILED=YES")
    assert 0 < result.max_rss_mb < 600 and result.cpu_seconds < 60  # nothing was decoded


@pytest.mark.slow
def test_a_sparse_12240_square_file_is_refused_from_the_header(tmp_path, tiny_model_card):
    # GIVEN 5 kB declaring 12240 x 12240 x 10 bands with no block stored (14 min of CPU before)
    path = sparse_file(tmp_path / "sparse.tif")
    assert path.stat().st_size < 10_000
    result = predict_child(path, tiny_model_card)
    assert_one_line_refusal(result, "sparse.tif", "MAX_COMPRESSION_RATIO", "absent or constant")
    assert result.cpu_seconds < 60


@pytest.mark.slow
@pytest.mark.parametrize(("bands", "fragment"), [(2000, "MAX_BANDS"), (400, "MAX_BLOCK_BYTES")])
def test_thousands_of_pixel_interleaved_bands_are_refused(tmp_path, tiny_model_card, bands, fragment):
    path = many_bands_file(tmp_path / "bands.tif", bands, tile=512 if bands < 512 else 256)
    assert_one_line_refusal(predict_child(path, tiny_model_card), "bands.tif", fragment)


@pytest.mark.slow
@pytest.mark.parametrize(("code", "name"), [(JPEG, "JPEG"), (WEBP, "WEBP"), (LERC, "LERC"), (LZMA, "LZMA")])
def test_codecs_outside_the_allow_list_are_refused(tmp_path, tiny_model_card, code, name):
    path = codec_file(tmp_path / "codec.tif", code)
    result = predict_child(path, tiny_model_card)
    assert_one_line_refusal(result, "codec.tif", f"compressed with {name}", "ALLOWED_COMPRESSIONS")


def test_an_allowed_exotic_codec_is_read(make_raster, tiny_model_card, tmp_path):
    # GIVEN a real LERC file (GDAL writes it) and LERC allowed
    from model.network.checkpoint import load_model
    from model.options import PredictOptions
    from model.predictor.predict import predict_file

    path = make_raster(48, 40, compress="lerc", tiled=True, blockxsize=16, blockysize=16, name="lerc.tif")
    model = load_model(tiny_model_card)
    with pytest.raises(RasterReadError, match="compressed with LERC"):
        predict_file(model, path, tmp_path / "refused.npy")
    options = PredictOptions(limits=DecodeLimits(compressions=("DEFLATE", "LERC")))
    assert predict_file(model, path, tmp_path / "lerc.npy", options).shape == (48, 40)


# -- strip files within the limits: read with bounded memory, the same result as tiles -----------------------


def strip_data(bands: int, height: int, width: int) -> np.ndarray:
    """Deterministic uint16 texture that compresses about 4:1, like imagery, without holding float copies."""
    y = np.arange(height, dtype=np.uint32)[:, None]
    x = np.arange(width, dtype=np.uint32)[None, :]
    out = np.empty((bands, height, width), dtype=np.uint16)
    for b in range(bands):
        out[b] = ((x * (b + 3) + y * (7 - b % 5)) % 4099 + ((x * y) >> (b % 7 + 5)) % 257).astype(np.uint16)
    return out


def write_strips(path, data: np.ndarray, rows_per_strip: int, planar: bool):
    import zlib

    bands, height, width = data.shape
    if planar:
        blocks = [
            zlib.compress(data[b, top : top + rows_per_strip].tobytes(), 1)
            for b in range(bands)
            for top in range(0, height, rows_per_strip)
        ]
    else:
        pixels = np.ascontiguousarray(data.transpose(1, 2, 0))
        blocks = [
            zlib.compress(pixels[top : top + rows_per_strip].tobytes(), 1) for top in range(0, height, rows_per_strip)
        ]
    return write_tiff(path, width, height, bands=bands, rows_per_strip=rows_per_strip, planar=planar,
                      compression=DEFLATE, blocks=blocks)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("planar", "rows_per_strip", "width", "height"),
    [
        (False, 800, 2048, 2400),  # pixel-interleaved: 800 x 2048 x 10 bands = 31 MiB per strip, the limit
        (True, 4096, 4096, 4096),  # band-interleaved: one 32 MiB strip per band, 10 held in the block cache
    ],
)
def test_strip_files_within_the_limits_are_read_with_bounded_memory(
    tmp_path, random_model_card, planar, rows_per_strip, width, height
):
    # GIVEN the tallest strips the default limits accept, and the same pixels in 256-pixel tiles
    card = random_model_card(depth=3, start_filts=4)
    data = strip_data(10, height, width)
    strips = write_strips(tmp_path / "strips.tif", data, rows_per_strip, planar)
    tiled = tmp_path / "tiled.tif"
    profile = dict(driver="GTiff", width=width, height=height, count=10, dtype="uint16", tiled=True, compress="deflate")
    with rasterio.open(tiled, "w", **profile) as dst:
        dst.write(data)
    del data
    # WHEN both are predicted in child processes
    by_strips = predict_child(strips, card, "-o", str(tmp_path / "strips.npy"), timeout=900)
    by_tiles = predict_child(tiled, card, "-o", str(tmp_path / "tiled.npy"), timeout=900)
    # THEN the strips give the tiles' mask, within the memory target
    assert by_strips.returncode == 0, by_strips.stderr[-2000:]
    assert by_tiles.returncode == 0, by_tiles.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "strips.npy"), np.load(tmp_path / "tiled.npy"))
    assert 0 < by_strips.max_rss_mb < RSS_LIMIT_MB, by_strips.max_rss_mb
    # and each strip is decoded about once: no more CPU than twice the tiled file's (not 10x)
    assert by_strips.cpu_seconds < 2 * by_tiles.cpu_seconds + 10, (by_strips.cpu_seconds, by_tiles.cpu_seconds)
