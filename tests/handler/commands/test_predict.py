"""``rasterfn predict``: prints a summary, exit 2 with one line and no output for a bad raster."""

from __future__ import annotations

import numpy as np
import pytest

from handler.cli import main
from handler.settings import get_settings
from tests.fixtures.hostile_tiffs import complex_file


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    for name in ("MODEL_CARD", "OUTPUT_MODE", "PRECISION", "DEVICE", "MAX_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def card(random_model_card):
    return random_model_card(depth=2, start_filts=2)


def test_predict_writes_the_npy_and_prints_a_summary(card, make_raster, tmp_path, capsys):
    src = make_raster(40, 24, name="scene.tif")
    code = main(["predict", str(src), "--model", str(card), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert np.load(tmp_path / "scene.npy").shape == (40, 24)
    assert "scene.npy" in out and "40 x 24" in out and "valid pixels" in out


def test_flags_win_over_the_environment(card, make_raster, tmp_path, monkeypatch):
    monkeypatch.setenv("OUTPUT_MODE", "score")
    src = make_raster(16, 16)
    main(["predict", str(src), "-o", str(tmp_path / "env.npy"), "--model", str(card), "--no-progress"])
    assert np.load(tmp_path / "env.npy").dtype == np.float32
    get_settings.cache_clear()
    main(["predict", str(src), "-o", str(tmp_path / "u8.npy"), "--output", "mask-uint8", "--model", str(card)])
    assert np.load(tmp_path / "u8.npy").dtype == np.uint8


def test_max_pixels_from_the_environment(card, make_raster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAX_PIXELS", "100")
    src = make_raster(16, 16, name="big.tif")
    assert main(["predict", str(src), "--model", str(card)]) == 2
    assert "MAX_PIXELS" in capsys.readouterr().err
    assert not (tmp_path / "big.npy").exists()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(64), b"II*\x00garbage"])
def test_bad_raster_exits_2_with_one_line_and_no_output(card, tmp_path, capsys, content):
    src = tmp_path / "bad.tif"
    src.write_bytes(content)
    code = main(["predict", str(src), "--model", str(card), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "bad.tif" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".npy", ".tmp")) == []


def test_a_complex_raster_exits_2_with_one_line_and_no_traceback(card, tmp_path, capsys):
    # GIVEN a CInt16 raster (a SAR SLC product's sample type: numpy has no such dtype)
    src = complex_file(tmp_path / "slc.tif")
    # WHEN it is predicted
    code = main(["predict", str(src), "--model", str(card), "--no-progress"])
    # THEN exit 2, one line naming the file and the sample type, no output
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "slc.tif" in err and "complex-valued samples (CInt16" in err
    assert "Traceback" not in err and not (tmp_path / "slc.npy").exists()


def test_missing_model_card_is_a_clear_error(make_raster, tmp_path, capsys):
    code = main(["predict", str(make_raster(16, 16)), "--model", str(tmp_path / "none.json")])
    assert code == 2
    assert "model card not found" in capsys.readouterr().err
