"""handler/isolation.py: a job in a worker process; a native crash or a hang there is the input's failure,
never the caller's. The crash is a real SIGABRT (``os.abort``) triggered by a marker in the file
(tests/fixtures/crash.py), the way ``std::bad_alloc`` escaping GDAL aborts the process."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import handler.isolation as isolation
from handler.errors import CancelledError, DeadlineError, WorkerCrashedError
from handler.isolation import PredictJob, Worker, make_interrupt
from handler.settings import Settings
from model.card import load_card
from model.network.checkpoint import build_model
from model.options import PredictOptions
from model.predictor.predict import predict_file
from tests.fixtures.crash import CRASH_MARKER, HANG_MARKER, SLOW_MARKER, crash_on_marker


@pytest.fixture
def worker(tiny_model_card, tmp_path):
    worker = Worker(Settings(model_card=tiny_model_card, tmp_dir=tmp_path), init=crash_on_marker)
    worker.wait_ready()
    yield worker
    worker.stop()


def job_for(src, tmp_path, **fields) -> PredictJob:
    return PredictJob(src=src, dst=tmp_path / "out.npy", output="mask", max_pixels=10**8, shown_name="x.tif", **fields)


def test_a_worker_predicts_like_predict_file(worker, tiny_model_card, make_raster, tmp_path):
    scene = make_raster(64, 80, seed=4)
    result = worker.run(job_for(scene, tmp_path))
    expected = tmp_path / "expected.npy"
    predict_file(build_model(load_card(tiny_model_card)), scene, expected, PredictOptions())
    assert result.shape == (64, 80)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.load(expected))
    assert worker.info["model"] == "tiny"


def test_an_input_error_in_the_worker_arrives_as_itself_with_the_clients_name(worker, tmp_path):
    bad = tmp_path / "upload-abc.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(Exception, match=r"x\.tif: it is not a TIFF") as info:
        worker.run(job_for(bad, tmp_path))
    assert type(info.value).__name__ == "RasterReadError"
    assert worker.alive()


def test_a_native_crash_kills_the_worker_not_the_caller(worker, tmp_path):
    # GIVEN a file that aborts the process reading it
    bomb = tmp_path / "bomb.tif"
    bomb.write_bytes(b"II*\x00" + CRASH_MARKER)
    # WHEN the worker runs it THEN the caller gets an input error naming the signal, and lives on
    with pytest.raises(WorkerCrashedError, match="SIGABRT"):
        worker.run(job_for(bomb, tmp_path))
    assert not worker.alive()
    assert not (tmp_path / "out.npy").exists()


def test_a_worker_stuck_past_its_deadline_is_killed(worker, tmp_path, monkeypatch):
    # GIVEN a file on which the worker never reaches a between-tiles check
    monkeypatch.setattr(isolation, "KILL_GRACE_S", 0.5)
    hang = tmp_path / "hang.tif"
    hang.write_bytes(b"II*\x00" + HANG_MARKER)
    started = time.monotonic()
    with pytest.raises(DeadlineError, match="INFERENCE_TIMEOUT_S"):
        worker.run(job_for(hang, tmp_path, deadline=time.time() + 0.5))
    assert not worker.alive()
    assert time.monotonic() - started < 30


def test_a_cancelled_job_stops_at_the_next_tile_and_the_worker_serves_on(worker, make_raster, tmp_path):
    slow = tmp_path / "slow.tif"
    slow.write_bytes(b"II*\x00" + SLOW_MARKER)
    started = time.monotonic()
    with pytest.raises(CancelledError, match="abandoned; inference stopped"):
        worker.run(job_for(slow, tmp_path), cancelled=lambda: time.monotonic() - started > 0.5)
    assert time.monotonic() - started < 10 and worker.alive()
    # AND the cancellation does not leak into the next job
    assert worker.run(job_for(make_raster(32, 32), tmp_path)).shape == (32, 32)


def test_a_cancelled_job_whose_worker_does_not_stop_is_killed(worker, tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "KILL_GRACE_S", 0.5)
    hang = tmp_path / "hang.tif"
    hang.write_bytes(b"II*\x00" + HANG_MARKER)
    with pytest.raises(CancelledError):
        worker.run(job_for(hang, tmp_path), cancelled=lambda: True)
    assert not worker.alive()


def test_the_interrupt_hook_raises_on_the_deadline_or_a_cancellation():
    make_interrupt(None, 5, lambda: False)()  # no deadline, not cancelled: returns
    make_interrupt(time.time() + 60, 60, lambda: False)()
    with pytest.raises(DeadlineError, match="within 5 s"):
        make_interrupt(time.time() - 1, 5, lambda: False)()
    with pytest.raises(CancelledError):
        make_interrupt(time.time() + 60, 60, lambda: True)()


def test_predict_file_stops_between_tiles_and_leaves_no_output(tiny_model_card, make_raster, tmp_path):
    # GIVEN a raster of several tiles and a hook that gives up on its third call
    model = build_model(load_card(tiny_model_card))
    scene = make_raster(200, 200, seed=2)
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise DeadlineError("time is up")

    with pytest.raises(DeadlineError):
        predict_file(model, scene, tmp_path / "out.npy", PredictOptions(), interrupt=interrupt)
    assert len(calls) == 3 and not (tmp_path / "out.npy").exists()


def test_a_worker_writes_the_cog_when_the_job_asks(worker, tiny_model_card, make_raster, tmp_path):
    # GIVEN a job that also asks for the COG (POST /inference with Accept: image/tiff)
    scene = make_raster(64, 80, seed=4)
    cog = tmp_path / "out.tif"
    # WHEN a worker process runs it
    worker.run(job_for(scene, tmp_path, cog=cog))
    # THEN the COG is valid, on the input's grid, and holds the .npy's classes
    valid, errors, _ = cog_validate(str(cog))
    assert valid and not errors, errors
    with rasterio.open(scene) as source, rasterio.open(cog) as out:
        assert (out.crs, out.transform, out.shape) == (source.crs, source.transform, source.shape)
        classes = out.read(1)
    np.testing.assert_array_equal(classes, np.load(tmp_path / "out.npy").astype(np.uint8))
