"""``rasterfn replay EVENT.json [--endpoint-url URL] [--seed]``: saved events through the real handler."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import boto3
import pytest

from handler.cli import main
from handler.events import load_event_file, parse_event
from handler.filters import skip_reason
from handler.local.replay import Seeded, align_event, handler_event, run_replay
from handler.objects import output_key
from tests.fixtures.paths import REPO_ROOT

REPO = REPO_ROOT
EVENT_FILES = sorted((REPO / "events").glob("*.json"))
SEEDED = Seeded(etag="0123456789abcdef0123456789abcdef", size=42, version_id=None)


# --- aligning a saved event with the seeded objects (pure) ------------------------------------------------


def test_align_replaces_etag_and_size_of_a_matching_s3_record(make_s3_event):
    event = make_s3_event("scenes/a+b.tif", "scenes/other.tif")
    aligned = align_event(event, {("rasterfn-demo", "scenes/a b.tif"): SEEDED})
    first, second = (r["s3"]["object"] for r in aligned["Records"])
    assert (first["eTag"], first["size"], first["key"]) == (SEEDED.etag, 42, "scenes/a+b.tif")
    assert second == event["Records"][1]["s3"]["object"]  # not seeded: untouched


def test_align_reaches_into_json_bodies_of_sqs_and_sns(make_s3_event, make_sqs_event):
    sns = {"Type": "Notification", "Message": json.dumps(make_s3_event("scenes/x.tif"))}
    event = make_sqs_event(make_s3_event("scenes/y.tif"), sns)
    seeded = {("rasterfn-demo", "scenes/x.tif"): SEEDED, ("rasterfn-demo", "scenes/y.tif"): SEEDED}
    refs = parse_event(align_event(event, seeded))
    assert {r.key: r.etag for r in refs} == {"scenes/y.tif": SEEDED.etag, "scenes/x.tif": SEEDED.etag}


def test_align_handles_eventbridge_and_version_ids(make_eventbridge_event):
    event = make_eventbridge_event("scenes/e.tif", etag="ffff", size=1, **{"version-id": "old"})
    new = align_event(event, {("rasterfn-demo", "scenes/e.tif"): Seeded("abcd", 7, "v2")})
    assert {k: new["detail"]["object"][k] for k in ("etag", "size", "version-id")} == {
        "etag": "abcd",
        "size": 7,
        "version-id": "v2",
    }
    # Seeded into an unversioned bucket: the saved version id names nothing, so it is dropped.
    unversioned = align_event(event, {("rasterfn-demo", "scenes/e.tif"): Seeded("abcd", 7, None)})
    assert "version-id" not in unversioned["detail"]["object"]


def test_saved_http_requests_become_function_url_events():
    event, headers = load_event_file(REPO / "events" / "cloudevent-binary.json")
    wrapped = handler_event(event, headers)
    assert wrapped["headers"]["Ce-Specversion"] == "1.0" and json.loads(wrapped["body"]) == event
    assert handler_event({"a": 1}, None) == {"a": 1}


# --- run_replay with a stand-in handler: seeding, endpoints, exit codes -------------------------------------


@pytest.fixture
def fake_handler(monkeypatch):
    """Replaces ``handler.lambda_function`` with one whose ``lambda_handler`` answers ``fake.respond``."""
    module = types.ModuleType("handler.lambda_function")
    calls: list[dict[str, Any]] = []

    def lambda_handler(event, context):
        calls.append({"event": event, "context": context, "environ": dict(os.environ)})
        return module.respond(event, context)

    module.lambda_handler = lambda_handler
    module.respond = lambda event, context: {"batchItemFailures": []}
    module.calls = calls
    monkeypatch.setitem(sys.modules, "handler.lambda_function", module)
    # The real runtime (maybe built by other tests in this process) is not what these tests are about.
    monkeypatch.setattr("handler.local.replay._refresh_stale_runtime", lambda out: None)
    return module


def replay(name: str, *, seed: bool = True, endpoint_url: str | None = None) -> int:
    args = argparse.Namespace(event=str(REPO / "events" / name), seed=seed, endpoint_url=endpoint_url)
    return run_replay(args)


def test_seed_uploads_the_sample_and_the_handler_sees_it_as_s3_would(fake_handler, moto_server, capsys):
    # GIVEN an SQS event naming two keys, and a local endpoint
    # WHEN it is replayed with --seed
    code = replay("sqs-s3.json", endpoint_url=moto_server)
    # THEN both keys hold the sample, and the event the handler got carries their real ETags
    assert code == 0
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    [call] = fake_handler.calls
    refs = parse_event(call["event"])
    assert [r.key for r in refs] == ["scenes/sqs/first.tif", "scenes/sqs/second take+1.tif"]
    for ref in refs:
        head = s3.head_object(Bucket=ref.bucket, Key=ref.key)
        assert head["ETag"].strip('"') == ref.etag and head["ContentLength"] == ref.size
    # AND the handler ran against that endpoint, with a realistic context
    assert call["environ"]["AWS_ENDPOINT_URL"] == moto_server
    assert call["context"].get_remaining_time_in_millis() > 0 and call["context"].function_name == "rasterfn"
    assert "return value:" in capsys.readouterr().out


def test_seed_without_any_endpoint_starts_an_embedded_moto(fake_handler, monkeypatch):
    # GIVEN no endpoint anywhere (a fresh clone, no AWS setup)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALLOOKING")
    # WHEN an event is replayed with --seed
    assert replay("s3-put.json") == 0
    # THEN the handler ran against a 127.0.0.1 moto with fake credentials, and the environment is restored
    env = fake_handler.calls[0]["environ"]
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:") and env["AWS_ACCESS_KEY_ID"] == "testing"
    assert "AWS_ENDPOINT_URL" not in os.environ and os.environ["AWS_ACCESS_KEY_ID"] == "AKIAREALLOOKING"


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (lambda e, c: {"batchItemFailures": [{"itemIdentifier": e["Records"][0]["messageId"]}]}, "FAILED: 1"),
        (lambda e, c: 1 / 0, "handler raised"),
    ],
)
def test_reported_failures_and_exceptions_exit_1(fake_handler, moto_server, capsys, respond, message):
    fake_handler.respond = respond
    assert replay("sqs-sns-s3.json", endpoint_url=moto_server) == 1
    assert message in capsys.readouterr().out


def test_missing_event_file_is_a_clear_error(capsys):
    assert main(["replay", "events/nope.json"]) == 2
    assert "event file not found" in capsys.readouterr().err


def test_outputs_are_the_handlers_outputs_for_the_call_alone(fake_handler, moto_server, monkeypatch):
    # GIVEN no OUTPUTS in the environment
    monkeypatch.delenv("OUTPUTS", raising=False)
    args = argparse.Namespace(
        event=str(REPO / "events" / "s3-put.json"), seed=True, endpoint_url=moto_server, outputs="STAC,cog"
    )
    # WHEN an event is replayed with --outputs
    assert run_replay(args) == 0
    # THEN the handler saw them as OUTPUTS (parsed), and they are gone afterwards
    assert fake_handler.calls[0]["environ"]["OUTPUTS"] == "cog,stac"
    assert "OUTPUTS" not in os.environ


def test_unknown_outputs_are_refused_before_anything_runs(fake_handler, capsys):
    code = main(["replay", "events/s3-put.json", "--seed", "--outputs", "npy,bogus"])
    err = capsys.readouterr().err
    assert code == 2 and "OUTPUTS must list some of npy, cog, stac" in err and err.count("\n") == 1
    assert fake_handler.calls == [] and "OUTPUTS" not in os.environ


# --- every sample through the real handler ----------------------------------------------------------------

DRIVER = """
import json, sys
from handler.cli import main
results = {}
for path in sys.argv[2:]:
    results[path] = main(["replay", path, "--seed"])
json.dump(results, open(sys.argv[1], "w"))
"""


def tiny_card(work: Path) -> Path:
    """A 2-level U-Net's card with 512-pixel tiles in ``work``: the real handler, quickly."""
    from model.network.checkpoint import save_checkpoint
    from tests.fixtures.models import build_random_unet

    architecture = {"num_classes": 1, "in_channels": 10, "depth": 2, "start_filts": 4}
    digest = save_checkpoint(build_random_unet(0, **architecture), work / "tiny.pt", fp16=False)
    card = {"name": "tiny", "weights": {"file": "tiny.pt", "sha256": digest}, "architecture": architecture}
    (work / "tiny.json").write_text(json.dumps({**card, "tile_size": 512, "tile_overlap": 64}))
    return work / "tiny.json"


def run_driver(driver: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``driver`` (Python source) with ``args`` in a fresh process from the repository; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-c", driver, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict[str, Any]:
    """Every sample replayed with ``--seed`` by ``handler.cli.main`` in one fresh process (the real handler,
    imported once; an embedded moto per replay). A 2-level U-Net with 512-pixel tiles keeps it quick."""
    work = tmp_path_factory.mktemp("replay")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env |= {"MODEL_CARD": str(tiny_card(work)), "TMPDIR": str(work)}
    results = work / "results.json"
    proc = run_driver(DRIVER, [str(results), *map(str, EVENT_FILES)], env)
    return {"codes": json.loads(results.read_text()), "out": proc.stdout, "err": proc.stderr}


@pytest.mark.slow
@pytest.mark.parametrize("path", EVENT_FILES, ids=[p.name for p in EVENT_FILES])
def test_every_sample_replays_with_seed(replayed, path):
    # GIVEN a sample event and what its objects should become
    event, headers = load_event_file(path)
    refs = parse_event(event, headers)
    # WHEN it was replayed with --seed (in the module fixture)
    # THEN the replay succeeded, and every object the handler should process got its .npy written
    assert replayed["codes"][str(path)] == 0, replayed["err"][-3000:]
    out = replayed["out"]
    for ref in refs:
        if skip_reason(ref) is None:
            assert f"written  s3://{ref.bucket}/{output_key(ref.key)} " in out
        else:
            assert f"skipped  s3://{ref.bucket}/{ref.key}: {skip_reason(ref)}" in out
    if not refs:
        assert "nothing to do" in out


# --- --outputs through the real handler -------------------------------------------------------------------

OUTPUTS_DRIVER = """
import contextlib, io, json, os, sys
from handler.cli import main
results = []
for argv in json.loads(sys.argv[2]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    results.append({"code": code, "out": out.getvalue(), "OUTPUTS": os.environ.get("OUTPUTS")})
json.dump(results, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_replay_outputs_prints_every_object_and_does_not_leak(moto_server, tmp_path):
    # GIVEN three replays in one process against one endpoint: --outputs, none, --outputs again
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL") and k != "OUTPUTS"}
    env |= {"MODEL_CARD": str(tiny_card(tmp_path)), "TMPDIR": str(tmp_path)}
    env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    every = ["--outputs", "npy,cog,stac"]
    runs = [
        ["replay", "events/s3-put.json", "--seed", "--endpoint-url", moto_server, *every],
        ["replay", "events/direct-invoke.json", "--seed", "--endpoint-url", moto_server],
        ["replay", "events/eventbridge-object-created.json", "--seed", "--endpoint-url", moto_server, *every],
    ]
    results = tmp_path / "results.json"
    # WHEN they run
    proc = run_driver(OUTPUTS_DRIVER, [str(results), json.dumps(runs)], env)
    first, plain, last = json.loads(results.read_text())
    # THEN each succeeded, and --outputs did not stay in the environment
    assert [r["code"] for r in (first, plain, last)] == [0, 0, 0], proc.stderr[-3000:]
    assert [r["OUTPUTS"] for r in (first, plain, last)] == [None, None, None]
    # AND with --outputs a line names each object written, the .npy first, then the COG, quicklook and Item
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    for result, stem in ((first, "scenes/test-1"), (last, "scenes/eventbridge/test-1")):
        keys = [f"{stem}.npy", f"{stem}.mask.TIF", f"{stem}.thumb.png", f"{stem}.stac.json"]
        lines = [line for line in result["out"].splitlines() if line.endswith(" bytes")]
        assert [line.split()[-3] for line in lines] == [f"s3://rasterfn-demo/{key}" for key in keys], result["out"]
        assert lines[0].split()[0] == "written"
        for key in keys:
            s3.head_object(Bucket="rasterfn-demo", Key=key)
    # AND the replay without --outputs wrote the .npy alone
    assert "written  s3://rasterfn-demo/scenes/direct/test-1.npy " in plain["out"]
    listed = s3.list_objects_v2(Bucket="rasterfn-demo", Prefix="scenes/direct/test-1.")
    assert [o["Key"] for o in listed["Contents"]] == ["scenes/direct/test-1.npy", "scenes/direct/test-1.tif"]
