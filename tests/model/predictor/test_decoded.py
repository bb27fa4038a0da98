"""The decoded copy: pass 1's samples read back exactly, in memory or on disk where it pays, never left behind."""

from __future__ import annotations

import dataclasses
import tempfile
import threading

import numpy as np
import pytest
from rasterio.windows import Window

import model.predictor.predict as predict_module
from model.card import load_card
from model.io.decode_limits import CACHE_CEILING_BYTES, CACHE_FLOOR_BYTES
from model.io.raster import open_raster, read_header, read_window
from model.network.checkpoint import build_model
from model.predictor.decoded import (
    COPY_COST_IN_DECODES,
    DISK_MARGIN_BYTES,
    MEMORY_BUDGET_MAX_BYTES,
    Arena,
    DecodedInMemory,
    DecodedRaster,
    decoded_bytes,
    memory_budget,
    plan_copy,
    redecode_factor,
)
from model.predictor.predict import PredictOptions, compute_percentiles, predict_file

BANDS = tuple(range(1, 11))
COMPRESSED = {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """TMPDIR for this test alone, to see what is left in it."""
    directory = tmp_path / "tmpdir"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_a_copy_is_kept_in_memory_where_it_fits_the_budget():
    def where(needed, redecode=1.0, compression="DEFLATE", free=10**10, memory=10**6, force=None):
        return plan_copy(needed, redecode, compression, free, memory, force)[0]

    assert where(10**6) == "memory"  # even when pass 2 would decode it only once more: a copy costs less
    assert where(10**6, force=True) == "memory"
    assert where(10**6, compression="NONE") == "none"  # reading the file back costs what the copy would
    assert where(10**6, force=False) == "none"
    # over the budget: on disk only where decoding again costs more than writing and reading the file
    assert where(10**6 + 1, redecode=COPY_COST_IN_DECODES) == "disk"
    assert where(10**6 + 1, redecode=COPY_COST_IN_DECODES - 0.01) == "none"
    assert where(10**6 + 1, redecode=1.0, force=True) == "disk"
    assert where(10**6 + 1, redecode=3.0, free=10**6 + 1 + DISK_MARGIN_BYTES - 1) == "none"  # would not fit TMPDIR
    assert where(10**6 + 1, redecode=3.0, free=10**6 + 1 + DISK_MARGIN_BYTES) == "disk"
    assert where(10**6 + 1, redecode=1.0, free=10**6, force=True) == "none"


def test_the_memory_budget_is_a_quarter_of_the_limit_at_most_the_ceiling_less_the_cache():
    assert memory_budget(limit_bytes=1024**3) == 256 * 1024**2  # a 1 GB Lambda keeps at most 256 MB
    assert memory_budget(limit_bytes=10 * 1024**3) == MEMORY_BUDGET_MAX_BYTES
    # Knative's 4 worker processes in a 3 GiB pod: each may keep 192 MiB
    assert memory_budget(limit_bytes=3 * 1024**3, at_once=4) == 192 * 1024**2
    # GDAL's block cache and the copy share the ceiling; the largest cache leaves 128 MiB
    assert memory_budget(CACHE_CEILING_BYTES, limit_bytes=10 * 1024**3) == 128 * 1024**2
    assert memory_budget(MEMORY_BUDGET_MAX_BYTES + 1, limit_bytes=10 * 1024**3) == 0
    # 4096 x 4096 x 10 uint16 in 512-row blocks fits beside its cache; 8192 x 8192 (1.34 GB) never does
    budget = memory_budget(CACHE_FLOOR_BYTES, limit_bytes=10 * 1024**3)
    assert 8192 * 8192 * 10 * 2 > budget >= 4096 * 4096 * (10 * 2 + 1)


@pytest.mark.parametrize(
    ("strips", "block_height", "expected"),
    [
        # each tile row re-decodes the block row before the cached one: 3 + 3 + 3 + 2 of 8
        ([(0, 1072), (1008, 2080), (2016, 3088), (3024, 4096)], 512, 11 / 8),
        ([(0, 1072), (1008, 2080), (2016, 3088), (3024, 4096)], 4096, 1.0),  # one block row, always cached
        ([(0, 512), (448, 960), (896, 1024)], 16, 70 / 64),  # 32 + (32 - 1) + (8 - 1) of 64
        ([(0, 512), (448, 960), (896, 1024)], 512, 2 / 2),  # the card's grid on 512 blocks: the shared row cached
        ([(0, 100)], 7, 1.0),
    ],
)
def test_redecode_factor(strips, block_height, expected):
    assert redecode_factor(strips, block_height, strips[-1][1]) == pytest.approx(expected)


@pytest.mark.parametrize("kept", [DecodedInMemory, DecodedRaster])
@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", None), ("int16", -5), ("float32", None)])
def test_the_copy_reads_back_what_the_raster_holds(make_raster, private_tmp, monkeypatch, dtype, nodata, kept):
    # GIVEN a raster with invalid pixels where its type allows, copied window by window by pass 1
    data = np.random.default_rng(1).integers(0, 3000, (10, 150, 130)).astype(dtype)
    data[:, :5, :7] = -5 if nodata is not None else data[:, :5, :7]
    if dtype == "float32":
        data[3, 10:12, 20:25] = np.nan
    path = make_raster(150, 130, dtype=dtype, data=data, nodata=nodata, **COMPRESSED)
    monkeypatch.setattr(predict_module, "STATS_STRIP_PIXELS", 64 * 130)  # several pass-1 windows
    with open_raster(path) as ds:
        header = read_header(ds, path)
        with kept(header, BANDS) as copy:
            compute_percentiles(ds, header, BANDS, keep=copy.write)
            assert copy.bytes == decoded_bytes(header, BANDS)
            # WHEN any window is read back, THEN samples and validity are the raster's
            for window in (Window(0, 0, 130, 150), Window(17, 33, 64, 70), Window(129, 149, 1, 1)):
                expected, expected_valid = read_window(ds, BANDS, window, header.all_valid)
                got, got_valid = copy.read_window(BANDS, window)
                assert np.array_equal(got, expected, equal_nan=dtype == "float32")
                want = np.ones(got.shape[1:], bool) if expected_valid is None else expected_valid
                assert (got_valid is None) == (not header.may_have_invalid)
                assert got_valid is None or np.array_equal(got_valid, want)
    assert list(private_tmp.iterdir()) == []  # unnamed: nothing in TMPDIR, ever


@pytest.mark.parametrize("memory", [None, 0])  # in memory; on disk
@pytest.mark.parametrize("nodata", [None, 0])
def test_decoding_once_changes_no_byte(random_model_card, make_raster, tmp_path, private_tmp, nodata, memory):
    # GIVEN a compressed raster of several tile rows (the copy is used) and a small random U-Net
    model = build_model(load_card(random_model_card(depth=3, start_filts=4, tile_size=64, tile_overlap=8)))
    path = make_raster(300, 200, nodata=nodata, seed=7, **COMPRESSED)
    # WHEN predicted with the copy and without it
    once = PredictOptions(output="score", decode_once=True, copy_memory_bytes=memory)
    predict_file(model, path, tmp_path / "once.npy", once)
    predict_file(model, path, tmp_path / "twice.npy", PredictOptions(output="score", decode_once=False))
    # THEN the outputs are the same bytes, and TMPDIR is empty
    assert (tmp_path / "once.npy").read_bytes() == (tmp_path / "twice.npy").read_bytes()
    assert list(private_tmp.iterdir()) == []


def test_reading_ahead_changes_no_byte(random_model_card, make_raster, tmp_path, private_tmp):
    model = build_model(load_card(random_model_card(depth=3, start_filts=4, tile_size=64, tile_overlap=8)))
    path = make_raster(400, 300, nodata=0, seed=8, **COMPRESSED)
    on_disk = PredictOptions(output="score", decode_once=True, copy_memory_bytes=0)
    predict_file(model, path, tmp_path / "ahead.npy", dataclasses.replace(on_disk, read_ahead=True))
    predict_file(model, path, tmp_path / "plain.npy", dataclasses.replace(on_disk, read_ahead=False))
    assert (tmp_path / "ahead.npy").read_bytes() == (tmp_path / "plain.npy").read_bytes()
    assert not any(t.name.startswith("rasterfn-read-ahead") for t in threading.enumerate())


def test_an_interrupt_while_reading_ahead_stops_the_reader(random_model_card, make_raster, tmp_path, private_tmp):
    model = build_model(load_card(random_model_card(depth=2, start_filts=2, tile_size=64, tile_overlap=8)))
    path = make_raster(400, 300, **COMPRESSED)
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 3:
            raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        options = PredictOptions(decode_once=True, read_ahead=True, copy_memory_bytes=0)
        predict_file(model, path, tmp_path / "o.npy", options, interrupt=interrupt)
    assert not any(t.name.startswith("rasterfn-read-ahead") for t in threading.enumerate())
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize(("kept", "memory"), [(DecodedInMemory, None), (DecodedRaster, 0)])
def test_the_copy_is_used_and_closed_on_an_interrupt(
    random_model_card, make_raster, tmp_path, monkeypatch, kept, memory
):
    model = build_model(load_card(random_model_card(depth=2, start_filts=2, tile_size=64, tile_overlap=8)))
    path = make_raster(300, 200, **COMPRESSED)
    made: list[DecodedRaster | DecodedInMemory] = []
    real_close = kept.close

    def recording_close(self):
        made.append(self)
        real_close(self)

    monkeypatch.setattr(kept, "close", recording_close)
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) > 3:  # in pass 2, after the copy was written
            raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        options = PredictOptions(decode_once=True, copy_memory_bytes=memory)
        predict_file(model, path, tmp_path / "o.npy", options, interrupt=interrupt)
    assert len(made) == 1
    assert made[0].file.closed if kept is DecodedRaster else made[0].data is None
    assert not (tmp_path / "o.npy").exists()


def test_a_copy_in_memory_is_read_only_and_its_reads_copy_nothing(make_raster):
    data = np.random.default_rng(2).integers(0, 3000, (10, 40, 30)).astype("uint16")
    path = make_raster(40, 30, data=data, nodata=0, **COMPRESSED)
    with open_raster(path) as ds:
        header = read_header(ds, path)
        with DecodedInMemory(header, BANDS) as copy:
            compute_percentiles(ds, header, BANDS, keep=copy.write)
            got, valid = copy.read_window(BANDS, Window(3, 4, 10, 20))
            assert np.shares_memory(got, copy.data) and np.shares_memory(valid, copy.valid)
            with pytest.raises(ValueError, match="read-only"):
                got[0, 0, 0] = 1
            assert np.array_equal(got, data[:, 4:24, 3:13])
            assert np.array_equal(valid, data[0, 4:24, 3:13] != 0)


def test_copies_in_memory_reuse_one_arena_one_at_a_time(make_raster):
    path = make_raster(40, 30, nodata=0, **COMPRESSED)
    arena = Arena()
    with open_raster(path) as ds:
        header = read_header(ds, path)
    # GIVEN a copy made in the arena, WHEN another is made while it is held, THEN that one gets memory of its own
    with DecodedInMemory(header, BANDS, arena) as first, DecodedInMemory(header, BANDS, arena) as second:
        assert np.shares_memory(first.data, arena._block) and np.shares_memory(first.valid, arena._block)
        assert not np.shares_memory(second.data, arena._block)
    assert arena.held_bytes == decoded_bytes(header, BANDS)
    # and once given back, the next copy reuses the same pages
    block = arena._block
    with DecodedInMemory(header, BANDS, arena) as again:
        assert np.shares_memory(again.data, block)
        arena.trim(0)  # never freed while lent
        assert arena._block is block
    arena.trim(arena.held_bytes)
    assert arena._block is block
    arena.trim(arena.held_bytes - 1)  # a raster with a smaller budget: freed
    assert arena.held_bytes == 0


def test_a_prediction_frees_an_arena_larger_than_its_budget(random_model_card, make_raster, tmp_path, monkeypatch):
    model = build_model(load_card(random_model_card(depth=2, start_filts=2, tile_size=64, tile_overlap=8)))
    path = make_raster(300, 200, **COMPRESSED)
    arena = Arena()
    monkeypatch.setattr(predict_module, "ARENA", arena)
    predict_file(model, path, tmp_path / "a.npy", PredictOptions(decode_once=True))
    held = arena.held_bytes
    assert held == decoded_bytes(read_header_of(path), BANDS)
    predict_file(model, path, tmp_path / "b.npy", PredictOptions(decode_once=True, copy_memory_bytes=held - 1))
    assert arena.held_bytes == 0  # over this raster's budget: freed before the (disk) copy
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def read_header_of(path):
    with open_raster(path) as ds:
        return read_header(ds, path)
