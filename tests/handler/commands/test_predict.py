"""``rasterfn predict``: prints a summary, exit 2 with one line and no output for a bad raster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from handler.cli import main
from handler.products import file_sha256
from handler.settings import get_settings
from model.io.cog import MASK_NODATA, SCORE_STEPS, score_of
from tests.fixtures.hostile_tiffs import complex_file
from tests.fixtures.stac_schemas import validate_item


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    for name in ("MODEL_CARD", "OUTPUT_MODE", "OUTPUTS", "PRECISION", "DEVICE", "MAX_PIXELS"):
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


# --outputs: the files beside OUT.npy, named as the function names them beside an upload.


def _files(directory):
    """The names in ``directory``, less the model card the ``card`` fixture puts there."""
    return sorted(p.name for p in directory.iterdir() if p.stem != "random")


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_outputs_write_every_file_beside_out(card, make_raster, tmp_path, capsys):
    # GIVEN a scene with invalid pixels, and the same scene predicted without --outputs
    src = make_raster(40, 24, name="scene.tif", nodata=0)
    with rasterio.open(src, "r+") as ds:
        data = ds.read()
        data[:, :5, :7] = 0
        ds.write(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    plain = tmp_path / "plain.npy"
    assert main(["predict", str(src), "-o", str(plain), "--model", str(card), "--no-progress"]) == 0
    capsys.readouterr()
    # WHEN every output is asked for
    dst = out_dir / "OUT.npy"
    code, out, _ = _run(
        ["predict", str(src), "-o", str(dst), "--outputs", "npy,cog,stac", "--model", str(card), "--no-progress"],
        capsys,
    )
    # THEN exactly four files, named beside OUT, and each is printed
    assert code == 0
    names = ["OUT.npy", "OUT.mask.TIF", "OUT.thumb.png", "OUT.stac.json"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names)
    printed = out.splitlines()
    assert len(printed) == 4
    for line, name in zip(printed, names, strict=True):
        assert line.split()[0] == str(out_dir / name)
    # AND the .npy is exactly -o's path and byte-identical to the run without --outputs
    assert dst.read_bytes() == plain.read_bytes()
    npy = np.load(dst)
    # AND the COG is valid, on the input's grid, the .npy's classes with nodata where invalid
    valid, errors, _ = cog_validate(str(out_dir / "OUT.mask.TIF"))
    assert valid and not errors, errors
    with rasterio.open(src) as source, rasterio.open(out_dir / "OUT.mask.TIF") as cog:
        assert (cog.crs, cog.transform, cog.shape) == (source.crs, source.transform, source.shape)
        classes = cog.read(1)
        invalid = (source.read_masks() == 0).any(axis=0)
    assert invalid.any()
    assert np.array_equal(classes == MASK_NODATA, invalid)
    assert np.array_equal(classes[~invalid], npy[~invalid].astype(np.uint8))
    assert (out_dir / "OUT.thumb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # AND the Item is valid, names the files relative to itself and the input relative to OUT's directory
    item = json.loads((out_dir / "OUT.stac.json").read_text())
    validate_item(item)
    assert item["id"] == "OUT"
    assets = {name: a["href"] for name, a in item["assets"].items() if name != "model"}
    assert assets == {"npy": "./OUT.npy", "mask": "./OUT.mask.TIF", "thumbnail": "./OUT.thumb.png"}
    assert item["assets"]["npy"]["file:checksum"] == "1220" + file_sha256(dst)
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == ["../scene.tif"]


def test_outputs_cog_alone_writes_no_npy(card, make_raster, tmp_path, capsys):
    src = make_raster(16, 16, name="scene.tif")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, _ = _run(
        ["predict", str(src), "-o", str(out_dir / "x.npy"), "--outputs", "cog", "--model", str(card)], capsys
    )
    assert code == 0
    assert [p.name for p in out_dir.iterdir()] == ["x.mask.TIF"]
    assert out.split()[0] == str(out_dir / "x.mask.TIF")
    assert cog_validate(str(out_dir / "x.mask.TIF"))[0]


def test_outputs_from_the_environment(card, make_raster, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OUTPUTS", "npy,cog")
    src = make_raster(16, 16, name="scene.tif")
    code, _, _ = _run(["predict", str(src), "--model", str(card), "--no-progress"], capsys)
    assert code == 0
    assert (tmp_path / "scene.npy").is_file() and (tmp_path / "scene.mask.TIF").is_file()


def test_score_outputs_name_the_score_cog(card, make_raster, tmp_path, capsys):
    src = make_raster(16, 16, name="scene.tif")
    code, _, _ = _run(["predict", str(src), "--output", "score", "--outputs", "npy,cog", "--model", str(card)], capsys)
    assert code == 0
    with rasterio.open(tmp_path / "scene.score.TIF") as cog:
        scores = score_of(cog.read(1))  # scaled to 254 steps of [0, 1]
    expected = np.clip(np.load(tmp_path / "scene.npy"), 0, 1)
    assert np.abs(scores - expected).max() <= 0.5 / SCORE_STEPS + 1e-6
    assert not (tmp_path / "scene.mask.TIF").exists()


@pytest.mark.parametrize(("outputs", "message"), [("bogus", "bogus"), ("stac", "OUTPUTS=stac")])
def test_unknown_outputs_exit_2_with_one_line(card, make_raster, tmp_path, capsys, outputs, message):
    src = make_raster(16, 16, name="scene.tif")
    code, _, err = _run(["predict", str(src), "--outputs", outputs, "--model", str(card)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert _files(tmp_path) == ["scene.tif"]


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(64), b"II*\x00garbage"])
def test_bad_raster_with_outputs_leaves_no_file_at_all(card, tmp_path, capsys, content):
    src = tmp_path / "bad.tif"
    src.write_bytes(content)
    code, _, err = _run(
        ["predict", str(src), "--outputs", "npy,cog,stac", "--model", str(card), "--no-progress"], capsys
    )
    assert code == 2
    assert err.count("\n") == 1 and "bad.tif" in err
    assert _files(tmp_path) == ["bad.tif"]  # no partial COG, no temp directory


def test_a_raster_that_fails_midway_leaves_no_file_at_all(card, make_raster, tmp_path, capsys, monkeypatch):
    # GIVEN a raster over MAX_PIXELS: refused after the output directory is checked
    monkeypatch.setenv("MAX_PIXELS", "100")
    src = make_raster(16, 16, name="big.tif")
    code, _, err = _run(["predict", str(src), "--outputs", "npy,cog,stac", "--model", str(card)], capsys)
    assert code == 2 and "MAX_PIXELS" in err
    assert _files(tmp_path) == ["big.tif"]


@pytest.mark.parametrize("out", ["scene.tif", "scene.mask.TIF"])
def test_output_onto_the_input_is_refused(card, make_raster, tmp_path, capsys, out):
    # GIVEN an input whose name is -o's, or one of the names --outputs puts beside -o
    src = make_raster(16, 16, name=out)
    before = src.read_bytes()
    # WHEN -o points at it
    dst = tmp_path / ("scene.npy" if out == "scene.mask.TIF" else out)
    code, _, err = _run(["predict", str(src), "-o", str(dst), "--outputs", "npy,cog", "--model", str(card)], capsys)
    # THEN exit 2 naming the input, and it is untouched
    assert code == 2 and "input" in err and err.count("\n") == 1
    assert src.read_bytes() == before
    assert _files(tmp_path) == [out]
