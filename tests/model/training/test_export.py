"""rasterfn export (needs torch + nncf): graphs verified against torch and recorded in the card; a graph that
misses its bar changes nothing; the torch engine stays the old service's, bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import model.training.export as export_module
from model.card import DEFAULT_CARD_PATH, load_card
from model.network.digests import sha256_file
from model.network.engines.loading import clear_engine_cache, load_inference_model
from model.options import PredictOptions
from model.predictor.predict import make_normaliser, predict_file
from model.predictor.tiling import pad_tile
from model.training.export import ExportError, calibration_tiles, export_card
from tests.fixtures.engines import old_service_mask
from tests.fixtures.old_service import TEST_SCENE, old_service_inference

VENV_BIN = Path(sys.executable).parent


def copy_card_and_checkpoint(folder: Path) -> Path:
    card = load_card(DEFAULT_CARD_PATH)
    shutil.copyfile(card.weights_path, folder / card.weights_file)
    raw = json.loads(DEFAULT_CARD_PATH.read_text())
    del raw["serving"]  # as a freshly trained card: no graphs yet
    (folder / DEFAULT_CARD_PATH.name).write_text(json.dumps(raw, indent=2))
    return folder / DEFAULT_CARD_PATH.name


def test_the_stored_old_service_mask_is_the_old_services():
    # The torch-free tests compare against this file: it must be exactly what the old procedure returns.
    expected = old_service_inference(TEST_SCENE, load_card(DEFAULT_CARD_PATH).weights_path)
    assert np.array_equal(old_service_mask(), expected)


@pytest.mark.slow
def test_export_writes_verified_graphs_and_records_them_in_the_card(tmp_path):
    # GIVEN a card with its checkpoint and no graphs
    card_path = copy_card_and_checkpoint(tmp_path)
    # WHEN exported
    report = export_card(card_path)
    # THEN the card names both graphs, each file with its sha256, and the agreement measured against torch
    card = load_card(card_path)
    serving = card.extra["serving"]
    assert serving["engine"] == "openvino" and set(serving["graphs"]) == {"fp32", "int8"}
    for entry in serving["graphs"].values():
        for f in entry["files"].values():
            assert sha256_file(tmp_path / f["file"]) == f["sha256"]
    fp32, int8 = serving["graphs"]["fp32"]["agreement"], serving["graphs"]["int8"]["agreement"]
    assert fp32["max_abs_score_diff"] <= 1e-4 and fp32["mask_agreement"] >= 0.9999
    assert int8["mask_agreement"] >= 0.995
    assert fp32["scenes"] == len(card.extra["quality"]["heldout_seeds"]) == 8
    assert serving["graphs"]["int8"]["calibration"] == {"source": "synthetic scenes, seeds [0, 16)", "tiles": 16}
    assert report.graphs == serving["graphs"]
    # AND the exported fp32 graph, loaded as serving loads it, segments the test scene like the old service
    clear_engine_cache()
    model = load_inference_model(card_path, engine="openvino")
    predict_file(model, TEST_SCENE, tmp_path / "out.npy")
    assert (np.load(tmp_path / "out.npy") == old_service_mask()).mean() >= 0.9999
    # AND no scratch files are left beside the card
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_graph_missing_its_bar_changes_nothing(tmp_path, monkeypatch):
    # GIVEN an impossible bar for int8
    monkeypatch.setitem(export_module.BARS, "int8", {"mask_agreement": 1.01})
    monkeypatch.setattr(export_module, "DEFAULT_HELDOUT_SEEDS", (100_000,))
    card_path = copy_card_and_checkpoint(tmp_path)
    raw = json.loads(card_path.read_text())
    del raw["quality"]  # one held-out scene (DEFAULT_HELDOUT_SEEDS above): quicker
    card_path.write_text(json.dumps(raw))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # WHEN exported THEN it fails, naming the graph and the numbers, and the folder is as it was
    with pytest.raises(ExportError, match=r"int8 graph of demo\.json disagrees with torch: mask agreement"):
        export_card(card_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_calibration_tiles_from_a_directory_are_normalised_like_inference(tmp_path, make_raster):
    # GIVEN a calibration folder with one 300 x 200 raster (and a file that is not a raster)
    folder = tmp_path / "calib"
    folder.mkdir()
    raster = make_raster(300, 200, name="a.tif")
    shutil.move(raster, folder / "a.tif")
    (folder / "notes.txt").write_text("not a raster")
    card = load_card(DEFAULT_CARD_PATH)
    # WHEN its tiles are taken
    tiles = calibration_tiles(card, folder)
    # THEN one tile of the card's size, normalised with the whole raster's p90s and padded as inference pads
    assert len(tiles) == 1 and tiles[0].shape == (10, 512, 512) and tiles[0].dtype == np.float32
    import rasterio

    with rasterio.open(folder / "a.tif") as src:
        data = src.read()
    p90s = [float(np.percentile(band.astype(np.float64), 90)) for band in data]
    expected = make_normaliser(data.dtype, p90s)(data)
    assert np.array_equal(tiles[0], pad_tile(expected, 512, 512))


def test_rasterfn_predict_engine_torch_is_the_old_service_bit_for_bit(tmp_path):
    # GIVEN the CLI with --engine torch on the README's 512 x 512 scene
    proc = subprocess.run(
        [str(VENV_BIN / "rasterfn"), "predict", str(TEST_SCENE), "-o", str(tmp_path / "t.npy"),
         "--engine", "torch", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "on torch fp32" in proc.stdout
    expected = old_service_inference(TEST_SCENE, load_card(DEFAULT_CARD_PATH).weights_path)
    assert np.array_equal(np.load(tmp_path / "t.npy"), expected)


def test_torch_engine_warm_up_and_tile_engine(tmp_path):
    model = load_inference_model(engine="torch")
    assert model.engine == "torch"
    model.warm_up(PredictOptions())
    [scores] = model.tile_engine(PredictOptions(), one_tile=False)([np.zeros((10, 64, 64), np.float32)])
    assert scores.shape == (64, 64) and scores.dtype == np.float32
