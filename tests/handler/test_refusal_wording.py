"""One refusal, one wording: the CLI's line, the HTTP 422 body and ``.error.json`` say the same thing.

Each case is a file a user could upload; each message is one line naming the file once (by the name the user
knows it by), holding no library text and no path of ours, and naming the input that was expected.
"""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from handler.http.app import create_app
from handler.http.metrics import create_metrics
from handler.knative import RuntimeLoader
from handler.objects import ObjectRef
from handler.process import process_object
from tests.fixtures.child import run_rasterfn
from tests.fixtures.hostile_tiffs import IMAGE_WIDTH, LONG, LZMA, codec_file, huge_tile_file, write_tiff

LIBRARY_TRACES = (".cpp", "/project/", "TIFFFetch", "TIFFReadDirectory", "ZIPDecode", "GDAL", "rasterio", "/tmp")


def too_few_bands(path, make_raster):
    return write_tiff(path, 32, 32, bands=3, tile=(16, 16))


def corrupt_directory(path, make_raster):
    return write_tiff(path, 32, 32, bands=10, tags={IMAGE_WIDTH: (LONG, [32, 32, 32])})


def impossible_header(path, make_raster):
    return huge_tile_file(path)


def truncated_data(path, make_raster):
    whole = make_raster(600, 600, tiled=True, blockxsize=256, blockysize=256, compress="deflate", name="whole.tif")
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def unsupported_codec(path, make_raster):
    return codec_file(path, LZMA)


def not_a_tiff(path, make_raster):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return path


CASES = {
    too_few_bands: ("RasterBandsError", "expected a multispectral stack of at least 10 bands, in the model card's"),
    corrupt_directory: ("RasterReadError", "its TIFF directory (the header) is corrupt"),
    impossible_header: ("RasterReadError", "tiles 2,147,483,632 columns wide, larger than the image"),
    truncated_data: ("RasterReadError", "its pixel data is truncated or corrupt"),
    unsupported_codec: ("RasterReadError", "compressed with LZMA, which this function does not decode"),
    not_a_tiff: ("RasterReadError", "it is a PNG image, not a TIFF"),
}


@pytest.mark.slow
@pytest.mark.parametrize("build", list(CASES), ids=[f.__name__ for f in CASES])
def test_every_path_refuses_with_the_same_one_line(
    build, tmp_path, make_raster, make_runtime, make_bucket, s3_client, tiny_model_card
):
    error_type, fragment = CASES[build]
    name = f"{build.__name__}.tif"
    path = build(tmp_path / name, make_raster)
    runtime = make_runtime(allow_unauthenticated_events=True)  # POST / is not used here

    # CLI, in a child process (a native abort fails the test, not pytest)
    cli = run_rasterfn(["predict", str(path), "--model", str(tiny_model_card), "--no-progress"], timeout=120)
    assert cli.returncode == 2, cli.stderr
    lines = cli.stderr.splitlines()
    assert len(lines) == 1, cli.stderr
    assert lines[0].startswith("rasterfn predict: ")
    cli_message = lines[0].removeprefix("rasterfn predict: ")

    # POST /inference
    loader = RuntimeLoader(lambda: runtime)
    loader.start()
    with TestClient(create_app(runtime.settings, loader, metrics=create_metrics())) as client:
        response = client.post("/inference", files={"file": (name, path.read_bytes())})
    assert response.status_code == 422, response.text
    http_message = response.json()["detail"]

    # .error.json beside an upload of the same bytes
    bucket, key = make_bucket(), f"scenes/{name}"
    s3_client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    outcome = process_object(ObjectRef(bucket, key, event_name="ObjectCreated:Put", source="s3"), runtime)
    assert (outcome.status, outcome.error_type) == ("rejected", error_type)
    marker = f"scenes/{build.__name__}.error.json"
    document = json.loads(s3_client.get_object(Bucket=bucket, Key=marker)["Body"].read())
    marker_message = document["message"]

    # THEN one wording, naming the file as the user knows it, once
    assert cli_message == http_message == marker_message.replace(key, name)
    assert marker_message.startswith(f"{key}: ") and marker_message.count(key) == 1
    assert cli_message.startswith(f"{name}: ") and cli_message.count(name) == 1
    assert fragment in cli_message and "; expected " in cli_message
    assert not any(trace in cli_message for trace in LIBRARY_TRACES), cli_message
    assert "GeoTIFF" not in cli_message.split("; expected ")[0]  # the problem says TIFF: it may not be geo
