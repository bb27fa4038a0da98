"""Shared pytest fixtures. Append new fixtures; do not rewrite others'."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

# --- Event factories (events helper): the smallest realistic envelopes, for tests/test_events.py and others.

EVENT_BUCKET = "rasterfn-demo"


@pytest.fixture
def make_s3_record() -> Callable[..., dict[str, Any]]:
    """``make_s3_record("a+b.tif", event_name="ObjectRemoved:Delete", size=None)``: one S3 record."""

    def make(
        key: str,
        event_name: str = "ObjectCreated:Put",
        bucket: str = EVENT_BUCKET,
        event_source: str = "aws:s3",
        size: int | None = 1024,
        **object_fields: Any,
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {"key": key, "sequencer": "0065F2A1B3C4D5E6F7", **object_fields}
        if size is not None:
            obj |= {"size": size, "eTag": "5b7a7a3b2c0d0e3f1a9d8c6b4e2f1a07"}
        return {
            "eventVersion": "2.1",
            "eventSource": event_source,
            "awsRegion": "us-east-1",
            "eventTime": "2024-06-12T09:41:27.512Z",
            "eventName": event_name,
            "s3": {
                "s3SchemaVersion": "1.0",
                "configurationId": "rasterfn",
                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": obj,
            },
        }

    return make


@pytest.fixture
def make_s3_event(make_s3_record) -> Callable[..., dict[str, Any]]:
    """``make_s3_event("a.tif", "b.tif")``: one S3 notification with a record per key."""

    def make(*keys: str, **record_fields: Any) -> dict[str, Any]:
        return {"Records": [make_s3_record(key, **record_fields) for key in keys]}

    return make


@pytest.fixture
def make_sqs_event() -> Callable[..., dict[str, Any]]:
    """``make_sqs_event(body1, body2)``: an SQS batch for Lambda; dict bodies are JSON-encoded."""

    def make(*bodies: str | dict[str, Any]) -> dict[str, Any]:
        records = []
        for index, body in enumerate(bodies):
            text = body if isinstance(body, str) else json.dumps(body)
            records.append(
                {
                    "messageId": f"00000000-0000-4000-8000-{index:012d}",
                    "receiptHandle": f"receipt-{index}",
                    "body": text,
                    "attributes": {"ApproximateReceiveCount": "1"},
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:rasterfn-uploads",
                    "awsRegion": "us-east-1",
                }
            )
        return {"Records": records}

    return make


@pytest.fixture
def make_eventbridge_event() -> Callable[..., dict[str, Any]]:
    """``make_eventbridge_event("a.tif", detail_type="Object Deleted", reason="DeleteObject")``."""

    def make(
        key: str,
        detail_type: str = "Object Created",
        reason: str | None = "PutObject",
        bucket: str = EVENT_BUCKET,
        source: str = "aws.s3",
        **object_fields: Any,
    ) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, **object_fields},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
        }
        if reason is not None:
            detail["reason"] = reason
        return {
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": detail_type,
            "source": source,
            "account": "123456789012",
            "time": "2024-06-12T09:41:27Z",
            "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": detail,
        }

    return make


# --- AWS sandbox (handler-runtime helper): fake credentials everywhere, S3/SQS from moto's real HTTP server.

# Nothing listens on the discard port: a test that forgets `moto_endpoint` fails fast instead of reaching AWS.
UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def fake_aws_credentials(monkeypatch, tmp_path_factory) -> None:
    """Fake credentials, us-east-1 and an unreachable endpoint for every test: none can touch a real cloud."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": UNREACHABLE_ENDPOINT,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_server() -> Any:
    """One moto server (S3, SQS, ...) on a free 127.0.0.1 port for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_endpoint(moto_server, monkeypatch) -> str:
    """Points boto3 (``AWS_ENDPOINT_URL``) at the moto server for this test; returns the URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture
def s3_client(moto_endpoint) -> Any:
    """A plain boto3 S3 client on moto: the "user" side of a test (uploads, checks)."""
    import boto3

    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def make_bucket(s3_client) -> Callable[..., str]:
    """``make_bucket(versioned=False)``: a new, uniquely named bucket on moto; returns its name."""
    import uuid

    def make(versioned: bool = False) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        s3_client.create_bucket(Bucket=name)
        if versioned:
            s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    return make


class _FaultBody:
    """The ``raw`` of a canned botocore response: all it needs is ``stream()``."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


@pytest.fixture
def inject_s3_fault() -> Callable[..., dict[str, int]]:
    """``inject_s3_fault(client, "PutObject", times=1, status=503, code="SlowDown")``.

    The next ``times`` calls of that operation on that boto3 client get the error instead of reaching the
    server (botocore's ``before-send`` hook), so botocore's retries and our error translation run for real.
    Returns a live counter ``{"left": ..., "failed": ...}``; matches only keys containing ``key_contains``.
    """
    from botocore.awsrequest import AWSResponse

    def inject(
        client: Any,
        operation: str,
        *,
        times: int = 1,
        status: int = 503,
        code: str = "SlowDown",
        key_contains: str = "",
    ) -> dict[str, int]:
        state = {"left": times, "failed": 0}
        body = f"<Error><Code>{code}</Code><Message>injected by the test</Message></Error>".encode()

        def fail(request: Any, **_: Any) -> Any:
            if state["left"] <= 0 or key_contains not in request.url:
                return None
            state["left"] -= 1
            state["failed"] += 1
            return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _FaultBody(body))

        client.meta.events.register(f"before-send.s3.{operation}", fail)
        return state

    return inject


# --- Model cards (demo-model helper): a valid card for any weights file, for the card and checkpoint tests.


@pytest.fixture
def make_card() -> Callable[..., Any]:
    """``make_card(weights_path, threshold=0.4, tile_size=None)``: write a valid card beside the weights.

    The card names the weights by relative path with their real sha256 unless ``sha256=`` is given; keyword
    arguments replace top-level card keys (``None`` deletes one). Returns the card's path.
    """
    from pathlib import Path

    from model.checkpoint import sha256_file

    def make(weights_path: Any, *, sha256: str | None = None, name: str = "card.json", **fields: Any) -> Path:
        weights_path = Path(weights_path)
        card: dict[str, Any] = {
            "name": "test-model",
            "architecture": {"num_classes": 1, "in_channels": 10, "depth": 5, "start_filts": 16},
            "bands": list(range(1, 11)),
            "normalisation": "p90",
            "threshold": 0.5,
            "tile_size": 512,
            "tile_overlap": 64,
            "weights": {"file": weights_path.name, "sha256": sha256 or sha256_file(weights_path)},
        }
        for key, value in fields.items():
            if value is None:
                card.pop(key, None)
            else:
                card[key] = value
        path = weights_path.parent / name
        path.write_text(json.dumps(card))
        return path

    return make


# --- Rasters and models (predictor helper): GeoTIFFs of any layout, and a small seeded U-Net with its card.


def smooth_bands(seed: int, bands: int, height: int, width: int, dtype: str = "uint16") -> Any:
    """Deterministic, spatially smooth multi-band data (blobs at a few scales), scaled to ``dtype``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.zeros((bands, height, width), dtype=np.float64)
    yy = np.linspace(0, 1, height)[:, None]
    xx = np.linspace(0, 1, width)[None, :]
    for b in range(bands):
        for scale in (1.5, 4.0, 11.0):
            fy, fx, py, px = rng.uniform(0.5, 1.5, 2).tolist() + rng.uniform(0, 6.3, 2).tolist()
            out[b] += np.sin(scale * fy * 6.3 * yy + py) * np.cos(scale * fx * 6.3 * xx + px) / scale
        out[b] += rng.normal(0, 0.05, (height, width))
    out = (out - out.min()) / (np.ptp(out) or 1.0)
    kind = np.dtype(dtype).kind
    if kind == "f":
        return (out * 0.6 - 0.05).astype(dtype)  # reflectance-like, a few negatives
    info = np.iinfo(dtype)
    low, high = max(info.min, -2000), min(info.max, 9000)
    return (low + out * (high - low)).round().astype(dtype)


@pytest.fixture
def make_raster(tmp_path) -> Callable[..., Any]:
    """``make_raster(height, width, bands=10, dtype="uint16", data=None, nodata=None, **creation)`` -> Path.

    Writes a georeferenced GeoTIFF under ``tmp_path`` and returns its Path. ``creation`` takes rasterio/GDAL
    creation options: ``tiled=True, blockxsize=256, compress="zstd", interleave="band", BIGTIFF="YES"``.
    ``data`` defaults to :func:`smooth_bands` with ``seed``.
    """
    import rasterio
    from rasterio.transform import from_origin

    def make(
        height: int,
        width: int,
        bands: int = 10,
        dtype: str = "uint16",
        data: Any = None,
        nodata: float | None = None,
        name: str = "r.tif",
        seed: int = 0,
        **creation: Any,
    ) -> Any:
        if data is None:
            data = smooth_bands(seed, bands, height, width, dtype)
        path = tmp_path / name
        profile = {
            "driver": "GTiff",
            "height": height,
            "width": width,
            "count": bands,
            "dtype": dtype,
            "crs": "EPSG:32633",
            "transform": from_origin(399_960.0, 5_300_040.0, 10.0, 10.0),
            "nodata": nodata,
            **creation,
        }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

    return make


def build_random_unet(seed: int = 0, **architecture: Any) -> Any:
    """A seeded random U-Net whose scores straddle 0.5 on smooth inputs (so masks are not all 0 or all 1)."""
    import torch

    from model.unet import UNet

    torch.manual_seed(seed)
    net = UNet(**architecture).eval()
    probe = torch.from_numpy(smooth_bands(seed + 1, net.in_channels, 128, 128, "float32")[None] / 0.6)
    with torch.inference_mode():
        captured = {}
        handle = net.conv_final.register_forward_hook(lambda _m, _i, out: captured.setdefault("pre", out))
        net(probe)
        handle.remove()
        pre = captured["pre"]
        # Shift and scale the last layer so its pre-activation is centred on 0.5 with a spread of ~0.5.
        scale = 0.5 / float(pre.std().clamp_min(1e-6))
        net.conv_final.weight.mul_(scale)
        net.conv_final.bias.mul_(scale).add_(0.5 - float(pre.median()) * scale)
    return net


def write_random_card(
    folder: Any,
    seed: int = 0,
    bands: Any = None,
    tile_size: int = 512,
    tile_overlap: int = 64,
    threshold: float = 0.5,
    name: str = "random",
    **architecture: Any,
) -> Any:
    """Save a seeded random U-Net (see :func:`build_random_unet`) and its model card into ``folder``.

    Returns the card's path; load it with ``model.checkpoint.load_model(path)`` or ``build_model(load_card(path))``.
    """
    from model.checkpoint import save_checkpoint

    architecture = {"num_classes": 1, "in_channels": 10, "depth": 5, "start_filts": 16, **architecture}
    weights = folder / f"{name}.pt"
    digest = save_checkpoint(build_random_unet(seed, **architecture), weights, fp16=False)
    card = {
        "name": name,
        "weights": {"file": weights.name, "sha256": digest},
        "architecture": architecture,
        "bands": list(bands) if bands is not None else list(range(1, architecture["in_channels"] + 1)),
        "normalisation": "p90",
        "threshold": threshold,
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card, indent=2))
    return path


# A 2-level, 4-filter U-Net with 64-pixel tiles: milliseconds per 64 x 64 raster, for tests of the plumbing.
TINY_MODEL = {"depth": 2, "start_filts": 4, "tile_size": 64, "tile_overlap": 8, "name": "tiny"}


@pytest.fixture
def random_model_card(tmp_path) -> Callable[..., Any]:
    """``random_model_card(seed=0, bands=None, tile_size=512, tile_overlap=64, **architecture)`` -> card Path
    in ``tmp_path`` (see :func:`write_random_card`)."""

    def make(**kwargs: Any) -> Any:
        return write_random_card(tmp_path, **kwargs)

    return make


# --- Runtimes (handler-runtime helper): a warm container's state over moto, with a tiny model.


@pytest.fixture(scope="session")
def tiny_model_card(tmp_path_factory) -> Any:
    """The :data:`TINY_MODEL` card, made once per session so the model cache loads it once for all tests."""
    return write_random_card(tmp_path_factory.mktemp("tiny-model"), **TINY_MODEL)


@pytest.fixture
def make_runtime(moto_endpoint, tiny_model_card, tmp_path) -> Callable[..., Any]:
    """``make_runtime(max_attempts=1, model_card=None, **settings)`` -> ``handler.runtime.Runtime`` on moto.

    One S3 attempt by default, so injected faults surface at once; ``settings`` are ``Settings`` fields
    (``output_bucket="out", output_prefix="masks/", max_input_bytes=...``). The temp dir is
    ``tmp_path / "work"``, which tests can check is left empty.
    """
    from handler.runtime import build_runtime
    from handler.settings import Settings
    from handler.storage import Storage

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)

    def make(max_attempts: int = 1, model_card: Any = None, **settings: Any) -> Any:
        config = Settings(
            model_card=model_card or tiny_model_card,
            tmp_dir=work,
            model_cache_dir=tmp_path / "model-cache",
            **settings,
        )
        return build_runtime(config, Storage.from_defaults(max_attempts=max_attempts))

    return make


@pytest.fixture
def upload_raster(s3_client, make_raster) -> Callable[..., dict[str, Any]]:
    """``upload_raster(bucket, key, height=64, width=64, body=None, **make_raster_args)`` -> PutObject reply.

    Uploads a generated GeoTIFF (or ``body`` bytes as given) under ``key``; the reply has ``ETag`` (quoted)
    and, in versioned buckets, ``VersionId``.
    """
    import uuid

    def upload(
        bucket: str, key: str, height: int = 64, width: int = 64, body: bytes | None = None, **kw: Any
    ) -> dict[str, Any]:
        if body is None:
            body = make_raster(height, width, name=f"{uuid.uuid4().hex}.tif", **kw).read_bytes()
        return s3_client.put_object(Bucket=bucket, Key=key, Body=body)

    return upload
