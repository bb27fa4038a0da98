"""Fan-out on Knative: shard messages as CloudEvents through the Broker, the Triggers of infra/knative and the relay.

The Broker is a stand-in (httpx.MockTransport) that keeps what it is sent and hands each event to the Trigger
whose filter matches, read from the manifests; the relay and the function are the real apps, the function over
moto's S3 server, reached in process through httpx's ASGI transport. An upload walks the whole way: MinIO's
webhook, the coordinator, every shard, and the assembled .npy must be ``predict_file``'s, byte for byte.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

import handler.fanout.coordinator as coordinator
import handler.isolation as isolation
from handler.errors import DeadlineError, WorkerCrashedError
from handler.event_types import SHARD_EVENT_TYPE
from handler.fanout import ShardMessage
from handler.fanout.jobs import JobStore
from handler.fanout.sender import cloudevent_sender
from handler.http.app import create_app
from handler.http.metrics import create_metrics
from handler.http.relay import create_relay_app
from handler.http.workers import InProcessBackend, WorkerPool
from handler.knative import RuntimeLoader
from handler.settings import RelaySettings
from handler.storage import Storage
from model.options import PredictOptions
from model.predictor.predict import predict_file
from tests.fixtures.oidc import Issuer, StaticJwks, relay_settings, trigger_subject
from tests.fixtures.paths import REPO_ROOT

SINK = "http://broker-ingress.knative-eventing.svc.cluster.local/default/default"
FUNCTION = "http://rasterfn.default.svc.cluster.local/"
RELAY = "http://rasterfn-relay.default.svc.cluster.local"
TOKEN = "fanout-test-token"
KEY = "scenes/big.tif"


def triggers() -> dict[str, tuple[str, dict[str, str]]]:
    """The Triggers of infra/knative: the event type each filters on -> its subscriber's path on the relay and
    the sender identity its deliveries carry (a token of the Trigger's service account, for its audience)."""
    routes = {}
    for path in sorted((REPO_ROOT / "infra" / "knative").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Trigger":
                subscriber = doc["spec"]["subscriber"]
                assert subscriber["ref"]["name"] == "rasterfn-relay"
                sub = trigger_subject(doc["metadata"]["name"], doc["metadata"]["namespace"])
                identity = ISSUER.bearer(sub=sub, aud=subscriber["audience"])
                routes[doc["spec"]["filter"]["attributes"]["type"]] = (subscriber["uri"], identity)
    return routes


class Broker:
    """The Broker's ingress (keeps each event, answers 202) and its dispatcher (delivers them to the relay)."""

    def __init__(self) -> None:
        self.events: deque[tuple[dict[str, str], bytes]] = deque()
        self.routes = triggers()
        self.answers: list[dict[str, Any]] = []

    def ingress(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == SINK
        headers = {k: v for k, v in request.headers.items() if k.startswith("ce-") or k == "content-type"}
        self.events.append((headers, request.content))
        return httpx.Response(202)

    def dispatch(self, relay: TestClient, *, twice: bool = False) -> None:
        """Deliver every event (and those the deliveries publish) through its Trigger until none is left."""
        while self.events:
            headers, body = self.events.popleft()
            route = self.routes.get(headers["ce-type"])
            if route is None:
                continue  # no Trigger matches (the function's replies): the Broker drops it
            path, identity = route
            for _ in range(2 if twice else 1):
                answer = relay.post(path, content=body, headers={**headers, **identity})
                assert answer.status_code == 200, answer.text
                self.answers.append({"type": headers["ce-type"], **answer.json()})


ISSUER = Issuer()


def relay_oidc_from_manifests() -> dict[str, Any]:
    """The relay Deployment's audience and subjects (infra/knative/eventing.yaml), as RelaySettings fields."""
    for doc in yaml.safe_load_all((REPO_ROOT / "infra" / "knative" / "eventing.yaml").read_text()):
        if doc and doc["kind"] == "Deployment" and doc["metadata"]["name"] == "rasterfn-relay":
            [container] = doc["spec"]["template"]["spec"]["containers"]
            env = RelaySettings.from_env(
                {**RELAY_BASE_ENV, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
            )
            return {"oidc_audience": env.oidc_audience, "oidc_subjects": env.oidc_subjects}
    raise AssertionError("no rasterfn-relay Deployment")


RELAY_BASE_ENV = {"K_SINK": "http://broker", "WEBHOOK_TOKEN": "t"}


@dataclass
class Cluster:
    broker: Broker
    relay: TestClient  # the relay, as MinIO and the Broker reach it
    function: Any  # the function's ASGI app (the Knative Service)
    runtime: Any
    bucket: str


@pytest.fixture
def knative(small_parts, make_runtime, make_bucket, monkeypatch):
    """A :class:`Cluster`: the function with K_SINK set, its relay, the Broker stand-in, one allowed bucket."""
    bucket = make_bucket()
    runtime = make_runtime(
        fanout_threshold_seconds=0,
        fanout_max_shards=3,
        fanout_sink_url=SINK,
        webhook_token=TOKEN,
        allowed_buckets=(bucket,),
    )
    broker = Broker()
    publish = httpx.Client(transport=httpx.MockTransport(broker.ingress))
    # The function's sender is the real CloudEvent sender; only its HTTP client reaches the stand-in Broker.
    monkeypatch.setattr(
        coordinator,
        "sender_from_settings",
        lambda settings, queues=None: cloudevent_sender(settings.fanout_sink_url, publish),
    )
    function = create_app(runtime.settings, started(RuntimeLoader(lambda: runtime)), metrics=create_metrics())
    settings = relay_settings(sink_url=SINK, target_url=FUNCTION, webhook_token=TOKEN, **relay_oidc_from_manifests())
    to_function = httpx.AsyncClient(transport=httpx.ASGITransport(app=function))
    to_broker = httpx.AsyncClient(transport=httpx.MockTransport(broker.ingress))

    class Outbound(httpx.AsyncClient):
        """The relay's one client: the Broker for publishing, the function for deliveries."""

        async def post(self, url, **kwargs):  # type: ignore[override]
            return await (to_broker if str(url) == SINK else to_function).post(url, **kwargs)

    with TestClient(create_relay_app(settings, Outbound(), StaticJwks(ISSUER)), base_url=RELAY) as relay:
        yield Cluster(broker, relay, function, runtime, bucket)


def started(loader: RuntimeLoader) -> RuntimeLoader:
    loader.start()
    return loader


def upload(s3_client, bucket: str, make_raster, height: int, width: int) -> bytes:
    body = make_raster(height, width, name=f"src-{height}x{width}.tif").read_bytes()
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=body)
    return body


def expected_npy(runtime, body: bytes, tmp_path: Path) -> bytes:
    (tmp_path / "expected.tif").write_bytes(body)
    predict_file(runtime.model, tmp_path / "expected.tif", tmp_path / "expected.npy", PredictOptions())
    return (tmp_path / "expected.npy").read_bytes()


def webhook(cluster: Cluster, make_s3_record) -> None:
    """MinIO's webhook for the upload, to the relay (which publishes it to the Broker)."""
    answer = cluster.relay.post(
        "/minio",
        json={"Records": [make_s3_record(KEY, bucket=cluster.bucket, size=None)]},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 202, answer.text


def output(s3_client, bucket: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key="scenes/big.npy")["Body"].read()


@pytest.mark.parametrize(("height", "width"), [(300, 70), (530, 90)])
def test_upload_through_the_broker_fans_out_and_assembles_predict_files_npy(
    knative, s3_client, make_raster, make_s3_record, tmp_path, height, width
):
    body = upload(s3_client, knative.bucket, make_raster, height, width)
    # WHEN MinIO's webhook reaches the relay and the Broker delivers everything there is to deliver
    webhook(knative, make_s3_record)
    knative.broker.dispatch(knative.relay)
    # THEN the coordinator answered "fanned out", three stats and three predict shards ran through the Trigger,
    answers = knative.broker.answers
    shards = [a for a in answers if a["type"] == SHARD_EVENT_TYPE]
    assert [a["outcomes"][0]["status"] for a in answers if a["type"] != SHARD_EVENT_TYPE] == ["fanned_out"]
    assert sorted((a["phase"], a["shard"]) for a in shards) == [(p, i) for p in ("predict", "stats") for i in range(3)]
    assert [a["status"] for a in shards].count("completed") == 1
    # and the .npy is the single-request result byte for byte
    assert output(s3_client, knative.bucket) == expected_npy(knative.runtime, body, tmp_path)


def test_every_event_delivered_twice_still_gives_one_output(knative, s3_client, make_raster, make_s3_record, tmp_path):
    body = upload(s3_client, knative.bucket, make_raster, 300, 70)
    webhook(knative, make_s3_record)
    knative.broker.dispatch(knative.relay, twice=True)
    assert output(s3_client, knative.bucket) == expected_npy(knative.runtime, body, tmp_path)
    assert [a.get("status") for a in knative.broker.answers].count("completed") == 1
    assert s3_client.list_multipart_uploads(Bucket=knative.bucket).get("Uploads", []) == []


def test_shard_events_need_the_token_and_an_allowed_bucket(knative):
    client = TestClient(knative.function)
    headers = {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/x", "ce-type": SHARD_EVENT_TYPE}
    body = ShardMessage(knative.bucket, "0123abcd", "stats", 0).to_json()
    # straight to the function, past the relay: the event route wants the bearer token for shards too
    assert client.post("/", content=body, headers=headers).status_code == 401
    authorised = {**headers, "authorization": f"Bearer {TOKEN}"}
    # with it, a shard of a bucket outside ALLOWED_BUCKETS is refused before any S3 call
    other = ShardMessage("not-allowed-bucket", "0123abcd", "stats", 0).to_json()
    assert client.post("/", content=other, headers=authorised).status_code == 403
    # a malformed shard message is a bad event
    assert client.post("/", content=b'{"rasterfn-shard": {}}', headers=authorised).status_code == 400
    # and a well-formed shard of an unknown job is answered without doing anything
    answer = client.post("/", content=body, headers=authorised)
    assert answer.status_code == 200 and answer.json()["status"].startswith("unknown job")
    assert "ce-type" not in answer.headers  # no reply CloudEvent goes back into the Broker


@pytest.mark.parametrize(
    "error",
    [
        WorkerCrashedError("processing crashed its worker process (killed by SIGSEGV)"),
        DeadlineError("processing did not finish in time (INFERENCE_TIMEOUT_S); its worker was replaced"),
    ],
    ids=["crashed", "deadline"],
)
def test_a_shard_that_kills_or_outruns_its_worker_ends_the_job_with_an_error_marker(
    knative, s3_client, make_raster, make_s3_record, monkeypatch, error
):
    upload(s3_client, knative.bucket, make_raster, 300, 70)
    webhook(knative, make_s3_record)
    # GIVEN the worker pool's handling of a shard whose worker dies or is killed (handler.http.workers.WorkerPool)
    monkeypatch.setattr(
        InProcessBackend,
        "shard",
        lambda self, job, cancelled: WorkerPool.shard(_FailingPool(self.runtime, error), job, cancelled),
    )
    knative.broker.dispatch(knative.relay)
    # THEN the job failed once, with the error marker beside the input, no .npy and no upload left open
    bucket = knative.bucket
    marker = json.loads(s3_client.get_object(Bucket=bucket, Key="scenes/big.error.json")["Body"].read())
    assert marker["error"] == type(error).__name__ and str(error) in marker["message"]
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "scenes/big.npy" not in keys
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    [job] = {k.split("/")[1] for k in keys if k.endswith("/job.json")}
    assert JobStore(Storage(s3_client), bucket, job).failure().error == type(error).__name__
    # and the Broker was answered 200 each time: nothing is retried or dead-lettered
    assert all(answer.get("status") != "error" for answer in knative.broker.answers)


class _FailingPool:
    """A pool whose shard jobs fail in their worker with ``error``; the follow-up (FailShardJob) runs in process."""

    def __init__(self, runtime, error: Exception) -> None:
        self.runtime, self.error = runtime, error

    def _run(self, job, cancelled):
        if isinstance(job, isolation.ShardJob):
            raise self.error
        return isolation.run_job(self.runtime, job, cancelled)
