"""The serving engine (OpenVINO) without torch: engine choice, sha256 checks, agreement with the old service's
mask, MODEL_URI graphs, and the Lambda and Knative paths on it.

Every test here runs in the torch-free runtime venv too (``make test-runtime``): nothing imports torch, and
the model is the demo card's shipped graphs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from handler.runtime import build_runtime
from handler.settings import Settings
from handler.storage import Storage
from model.card import DEFAULT_CARD_PATH, load_card
from model.engines import loading
from model.engines.artefacts import graph_for, serving_graphs
from model.engines.loading import clear_engine_cache, load_inference_model, resolve_engine
from model.errors import CheckpointError, ConfigError
from model.options import PredictOptions
from model.predict import predict_file

REPO = Path(__file__).resolve().parents[1]
TEST_TIF = REPO / "data" / "test-1.tif"
OLD_SERVICE_MASK = Path(__file__).resolve().parent / "data" / "test-1.old-service-mask.npz"
# What the issue asks of the serving engine against the old procedure's mask.
AGREEMENT = {"fp32": 0.9999, "bf16": 0.995, "int8": 0.995}


def old_service_mask() -> np.ndarray:
    """The old service's mask of data/test-1.tif (made by torch; tests/test_export.py checks it still is)."""
    with np.load(OLD_SERVICE_MASK) as saved:
        shape = tuple(saved["shape"])
        return np.unpackbits(saved["bits"])[: shape[0] * shape[1]].reshape(shape).astype(np.float32)


def copy_demo_card(folder: Path, with_graphs: bool = True) -> Path:
    card = load_card(DEFAULT_CARD_PATH)
    names = [DEFAULT_CARD_PATH.name, card.weights_file]
    if with_graphs:
        names += [f.file for g in serving_graphs(card).values() for f in g.files.values()]
    for name in names:
        shutil.copyfile(DEFAULT_CARD_PATH.parent / name, folder / name)
    return folder / DEFAULT_CARD_PATH.name


@pytest.fixture(autouse=True)
def fresh_engine_cache():
    clear_engine_cache()
    yield
    clear_engine_cache()


# -- the shipped graphs --------------------------------------------------------------------------------------


def test_demo_card_ships_verified_fp32_and_int8_graphs():
    # GIVEN the demo card WHEN its serving section is read
    card = load_card(DEFAULT_CARD_PATH)
    graphs = serving_graphs(card)
    # THEN both graphs are there, on the serving engine, with the agreement the export measured above the bars
    assert set(graphs) == {"fp32", "int8"}
    assert graphs["fp32"].engine == "openvino"
    assert graphs["fp32"].agreement["mask_agreement"] >= 0.9999
    assert graphs["fp32"].agreement["max_abs_score_diff"] <= 1e-4
    assert graphs["int8"].agreement["mask_agreement"] >= 0.995
    assert graph_for(card, "bf16") == graphs["fp32"]
    # AND the files are small enough to ship in the package
    sizes = [(DEFAULT_CARD_PATH.parent / f.file).stat().st_size for g in graphs.values() for f in g.files.values()]
    assert sum(sizes) < 8 * 1024**2


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_serving_engine_agrees_with_the_old_services_mask(precision, tmp_path):
    # GIVEN the demo model on the serving engine
    model = load_inference_model(engine="openvino", precision=precision)
    assert model.engine == "openvino" and model.precision == precision
    # WHEN it segments the README's test scene
    result = predict_file(model, TEST_TIF, tmp_path / "out.npy", PredictOptions(precision=precision))
    mask = np.load(result.out_path)
    # THEN its mask agrees with the old service's as closely as the issue asks
    expected = old_service_mask()
    assert mask.shape == expected.shape == (512, 512) and mask.dtype == np.float32
    assert (mask == expected).mean() >= AGREEMENT[precision]
    assert 0.05 < expected.mean() < 0.95


def test_tiled_raster_on_the_serving_engine_matches_its_one_tile_pass(make_raster, tmp_path):
    # GIVEN a raster of several tiles (tile 128 here) WHEN predicted in tiles and in one pass
    model = load_inference_model(engine="openvino")
    path = make_raster(300, 260)
    predict_file(model, path, tmp_path / "tiled.npy", PredictOptions(tile_size=128, tile_overlap=16))
    predict_file(model, path, tmp_path / "whole.npy", PredictOptions(tile_size=512))
    tiled, whole = np.load(tmp_path / "tiled.npy"), np.load(tmp_path / "whole.npy")
    # THEN the seams change little (the torch engine's tiling bar) and every pixel was written
    assert tiled.shape == (300, 260)
    assert (tiled == whole).mean() >= 0.995


def test_a_graph_file_with_the_wrong_sha256_is_refused(tmp_path):
    # GIVEN a copy of the demo card whose int8 weights lost one byte's worth of integrity
    card_path = copy_demo_card(tmp_path)
    weights = tmp_path / graph_for(load_card(card_path), "int8").files["bin"].file
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    # WHEN loaded THEN the sha256 check refuses it, naming the file; fp32 still loads
    with pytest.raises(CheckpointError, match=r"demo\.int8\.bin has sha256"):
        load_inference_model(card_path, engine="openvino", precision="int8")
    assert load_inference_model(card_path, engine="openvino", precision="fp32").engine == "openvino"


def test_a_missing_graph_file_is_a_clear_error(tmp_path):
    card_path = copy_demo_card(tmp_path)
    (tmp_path / graph_for(load_card(card_path), "fp32").files["xml"].file).unlink()
    with pytest.raises(CheckpointError, match="graph file not found"):
        load_inference_model(card_path, engine="openvino")


# -- choosing the engine -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "precision", "device", "torch_installed", "graphs", "expected"),
    [
        ("auto", "fp32", "cpu", True, True, "openvino"),
        ("auto", "int8", "cpu", False, True, "openvino"),
        ("auto", "fp32", "auto", False, True, "openvino"),
        ("auto", "fp32", "cuda", True, True, "torch"),
        ("auto", "fp32", "cpu", True, False, "torch"),
        ("torch", "bf16", "cpu", True, True, "torch"),
        ("openvino", "bf16", "cpu", False, True, "openvino"),
    ],
)
def test_engine_choice(monkeypatch, tmp_path, engine, precision, device, torch_installed, graphs, expected):
    monkeypatch.setattr(loading, "installed", lambda pkg: pkg == "openvino" or (pkg == "torch" and torch_installed))
    card = load_card(copy_demo_card(tmp_path, with_graphs=graphs))
    if not graphs:
        raw = json.loads(card.path.read_text())
        del raw["serving"]
        card.path.write_text(json.dumps(raw))
        card = load_card(card.path)
    assert resolve_engine(engine, card, precision, device) == expected


@pytest.mark.parametrize(
    ("engine", "precision", "device", "torch_installed", "graphs", "message"),
    [
        ("torch", "int8", "cpu", True, True, "PRECISION=int8 needs ENGINE=openvino"),
        ("torch", "fp32", "cpu", False, True, "ENGINE=torch but torch is not installed"),
        ("openvino", "fp32", "cuda", True, True, "DEVICE=cuda needs ENGINE=torch"),
        ("openvino", "fp32", "cpu", True, False, "run `rasterfn export`"),
        ("auto", "fp32", "cpu", False, False, "no engine can run card"),
        ("auto", "int8", "cpu", True, False, "PRECISION=int8 needs ENGINE=openvino"),
        ("onnx", "fp32", "cpu", True, True, "engine must be one of"),
    ],
)
def test_impossible_engine_choices_fail_clearly(
    monkeypatch, tmp_path, engine, precision, device, torch_installed, graphs, message
):
    monkeypatch.setattr(loading, "installed", lambda pkg: pkg == "openvino" or (pkg == "torch" and torch_installed))
    card_path = copy_demo_card(tmp_path, with_graphs=graphs)
    if not graphs:
        raw = json.loads(card_path.read_text())
        del raw["serving"]
        card_path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=message):
        resolve_engine(engine, load_card(card_path), precision, device)


def test_a_model_loaded_for_one_precision_refuses_another():
    model = load_inference_model(engine="openvino", precision="int8")
    with pytest.raises(ConfigError, match="loaded for PRECISION=int8"):
        model.tile_engine(PredictOptions(precision="fp32"), one_tile=True)


# -- MODEL_URI -----------------------------------------------------------------------------------------------


def test_model_uri_fetches_the_graph_files_beside_the_checkpoint(tmp_path, moto_endpoint, s3_client, make_bucket):
    # GIVEN the export's folder uploaded under models/, and an image card whose graph files are not beside it
    from handler.model_source import load_runtime_model

    bucket = make_bucket()
    card = load_card(DEFAULT_CARD_PATH)
    for name in [card.weights_file] + [f.file for f in graph_for(card, "int8").files.values()]:
        s3_client.put_object(Bucket=bucket, Key=f"models/{name}", Body=(DEFAULT_CARD_PATH.parent / name).read_bytes())
    image = tmp_path / "image"
    image.mkdir()
    card_path = copy_demo_card(image, with_graphs=False)
    settings = Settings(
        model_card=card_path,
        model_uri=f"s3://{bucket}/models/{card.weights_file}",
        model_cache_dir=tmp_path / "cache",
        precision="int8",
        engine="openvino",
    )
    # WHEN the runtime model loads
    model = load_runtime_model(settings, Storage.from_defaults(max_attempts=1))
    # THEN the int8 graph came from S3 into the cache, named by checksum, and verified
    assert model.engine == "openvino" and model.sha256 == graph_for(card, "int8").files["bin"].sha256
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"{f.sha256}{Path(f.file).suffix}" for f in graph_for(card, "int8").files.values()
    )


# -- the Lambda and Knative paths on the serving engine ------------------------------------------------------


def _child(code: str, **env: str) -> dict:
    environ = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "ENGINE": "auto", **env}
    environ.pop("MODEL_CARD", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lambda_init_loads_the_serving_engine_without_importing_torch():
    # WHEN Lambda's INIT imports the handler with the image's defaults (ENGINE=auto, the demo card)
    state = _child(
        "import json, sys; import handler.lambda_function as fn; "
        "print(json.dumps({'engine': fn.RUNTIME.model.engine, 'torch': 'torch' in sys.modules}))"
    )
    # THEN the model is ready on the serving engine and torch was never imported
    assert state == {"engine": "openvino", "torch": False}


def test_knative_readiness_loads_the_serving_engine_without_importing_torch():
    state = _child(
        "import json, sys\n"
        "from handler.knative import new\n"
        "f = new(); f.start({}); f.loader.wait()\n"
        "print(json.dumps({'ready': f.ready()[0], 'engine': f.loader.wait().model.engine,"
        " 'torch': 'torch' in sys.modules}))"
    )
    assert state == {"ready": True, "engine": "openvino", "torch": False}


@pytest.fixture
def serving_runtime(moto_endpoint, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    settings = Settings(tmp_dir=work, engine="openvino", precision="int8")
    return build_runtime(settings, Storage.from_defaults(max_attempts=1))


def test_lambda_sqs_batch_on_the_serving_engine(
    serving_runtime, monkeypatch, make_bucket, upload_raster, s3_client, make_sqs_event, make_s3_event
):
    # GIVEN the Lambda handler answering with an int8 serving runtime, and an upload
    import handler.lambda_function as lambda_function
    from handler.lambda_context import make_context

    monkeypatch.setattr(lambda_function, "get_runtime", lambda: serving_runtime)
    bucket = make_bucket()
    put = upload_raster(bucket, "in/scene.tif", height=96, width=80)
    # WHEN its S3 notification arrives through SQS
    notification = make_s3_event("in/scene.tif", bucket=bucket, size=None, eTag=put["ETag"].strip('"'))
    reply = lambda_function.lambda_handler(make_sqs_event(notification), make_context())
    # THEN no record failed and the mask is beside the input
    assert reply == {"batchItemFailures": []}
    body = s3_client.get_object(Bucket=bucket, Key="in/scene.npy")["Body"].read()
    mask = np.load(io.BytesIO(body))
    assert mask.shape == (96, 80) and set(np.unique(mask)) <= {0.0, 1.0}


def test_knative_inference_on_the_serving_engine(serving_runtime):
    # GIVEN the Knative function with the serving runtime WHEN the old README's upload arrives
    from func_python.http import ASGIApplication

    from handler.knative import Function

    function = Function(load=lambda: serving_runtime, settings=serving_runtime.settings)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGIApplication(function))
        async with httpx.AsyncClient(transport=transport, base_url="http://fn") as client:
            function.start({})
            return await client.post("/inference", files={"file": ("test-1.tif", TEST_TIF.read_bytes())})

    response = anyio.run(main)
    # THEN the answer is the 512 x 512 mask, within the int8 bar of the old service's
    assert response.status_code == 200, response.text
    mask = np.load(io.BytesIO(response.content))
    assert (mask == old_service_mask()).mean() >= AGREEMENT["int8"]


def test_rasterfn_predict_takes_engine_and_precision_flags(tmp_path, capsys):
    from handler.cli import main
    from handler.settings import get_settings

    get_settings.cache_clear()
    code = main(["predict", str(TEST_TIF), "-o", str(tmp_path / "o.npy"), "--engine", "openvino",
                 "--precision", "int8", "--no-progress"])  # fmt: skip
    assert code == 0
    assert "on openvino int8" in capsys.readouterr().out
    assert (np.load(tmp_path / "o.npy") == old_service_mask()).mean() >= AGREEMENT["int8"]
