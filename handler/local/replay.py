"""``rasterfn replay EVENT.json [--endpoint-url URL] [--seed]``: run ``lambda_handler`` in-process on a saved
event, with a realistic fake Lambda context, against real S3, MinIO or moto.

- ``--endpoint-url`` points this process's AWS clients there (``AWS_ENDPOINT_URL``) before the handler is
  imported; without it the environment decides (``AWS_ENDPOINT_URL`` or AWS itself).
- ``--seed`` first uploads ``data/test-1.tif`` under every key the event names (creating the bucket if
  needed) and makes the event describe those uploads (their ETag, size, version id), as S3 would have; with
  no endpoint at all it starts an embedded moto server, so a fresh clone replays offline.

It prints the event's objects, what the handler wrote for each (key, size, status) and its return value, and
exits 1 when the handler raised or reported failures (``batchItemFailures``).

Example:
    $ rasterfn replay events/sqs-s3.json --seed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from handler.aws import make_s3_client
from handler.events import load_event_file, parse_event
from handler.filters import skip_reason
from handler.local.lambda_context import make_context
from handler.local.moto_stack import (
    DEFAULT_REGION,
    MotoServer,
    client,
    ensure_bucket,
    local_aws_environ,
    patched_environ,
)
from handler.local.paths import SAMPLE_RASTER
from handler.local.results import find_result
from handler.objects import ObjectRef
from handler.runtime import get_runtime, reload_runtime, runtime_is_built
from handler.settings import ENV_OUTPUTS, Settings, parse_outputs
from model.errors import ConfigError

_ETAG_FIELDS = ("eTag", "etag", "ETag")
_VERSION_FIELDS = ("versionId", "version-id", "VersionId")


@dataclass(frozen=True)
class Seeded:
    """What an upload made: the facts the event must carry to describe it."""

    etag: str
    size: int
    version_id: str | None


def run_replay(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    path = Path(args.event)
    if not path.is_file():
        raise ConfigError(f"event file not found: {path}")
    event, headers = load_event_file(path)
    refs = parse_event(event, headers)
    endpoint = args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    outputs = getattr(args, "outputs", None)
    # --outputs is OUTPUTS for the handler, as a deployment's environment sets it (validated first).
    wanted = {ENV_OUTPUTS: ",".join(parse_outputs(outputs))} if outputs else {}
    with (
        patched_environ(wanted),
        _endpoint(args.endpoint_url, embedded=args.seed and not endpoint, out=out) as endpoint_url,
    ):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        s3 = client("s3", endpoint_url, region)
        print(f"event {path}: {len(refs)} object(s)", file=out)
        if args.seed:
            seeded = seed_objects(s3, refs, region, out=out)
            event = align_event(event, seeded)
        return _invoke(handler_event(event, headers), refs, s3, out=out)


@contextlib.contextmanager
def _endpoint(explicit: str | None, *, embedded: bool, out: TextIO) -> Iterator[str | None]:
    """The endpoint this replay talks to, set in the environment for the handler; restored afterwards."""
    if embedded:
        with MotoServer() as server:
            print(f"embedded moto S3 on {server.endpoint_url} (fake credentials)", file=out)
            with patched_environ(local_aws_environ(server.endpoint_url)):
                yield server.endpoint_url
        return
    if explicit:
        # The service-specific variable would win over AWS_ENDPOINT_URL in botocore: pin it too.
        with patched_environ({"AWS_ENDPOINT_URL": explicit, "AWS_ENDPOINT_URL_S3": explicit}):
            yield explicit
        return
    yield None  # boto3 reads AWS_ENDPOINT_URL* itself, or talks to AWS


def seed_objects(s3: Any, refs: list[ObjectRef], region: str, *, out: TextIO) -> dict[tuple[str, str], Seeded]:
    """Upload the sample raster under every key the handler would process; returns what each upload made."""

    suffixes = Settings.from_env().input_suffixes
    body = SAMPLE_RASTER.read_bytes()
    seeded: dict[tuple[str, str], Seeded] = {}
    for ref in refs:
        reason = skip_reason(ref, suffixes)
        if reason is not None:
            print(f"  not seeded s3://{ref.bucket}/{ref.key}: the handler skips it ({reason})", file=out)
            continue
        if ensure_bucket(s3, ref.bucket, region):
            print(f"  created bucket {ref.bucket}", file=out)
        reply = s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=body)
        seeded[(ref.bucket, ref.key)] = Seeded(reply["ETag"].strip('"'), len(body), reply.get("VersionId"))
        print(f"  seeded s3://{ref.bucket}/{ref.key} with {SAMPLE_RASTER.name} ({len(body)} bytes)", file=out)
    return seeded


def align_event(event: Any, seeded: Mapping[tuple[str, str], Seeded]) -> Any:
    """The event with each seeded object's ETag, size and version id in place of the saved ones (pure).

    A saved event describes an upload that is not in the seeded bucket: its ETag would make the handler
    treat the object as replaced by a newer upload and skip it. Works through any envelope: every object
    (``{"key": ..., "size"/"eTag"/...}``) is matched by key, JSON-in-a-string bodies (SQS, SNS) included.
    """
    by_key: dict[str, Seeded] = {key: s for (_bucket, key), s in seeded.items()}
    return _align(event, by_key) if by_key else event


def _align(value: Any, by_key: Mapping[str, Seeded]) -> Any:
    if isinstance(value, dict):
        aligned = {k: _align(v, by_key) for k, v in value.items()}
        key = value.get("key")
        match = None
        if isinstance(key, str):
            match = by_key.get(key) or by_key.get(unquote_plus(key))
        if match is not None:
            for name in _ETAG_FIELDS:
                if name in aligned:
                    aligned[name] = match.etag
            if "size" in aligned:
                aligned["size"] = match.size
            for name in _VERSION_FIELDS:
                if name in aligned:
                    if match.version_id:
                        aligned[name] = match.version_id
                    else:
                        del aligned[name]
        return aligned
    if isinstance(value, list):
        return [_align(v, by_key) for v in value]
    if isinstance(value, str) and value[:1] in "{[":
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        aligned_inner = _align(inner, by_key)
        return value if aligned_inner == inner else json.dumps(aligned_inner)
    return value


def handler_event(event: Any, headers: Mapping[str, str] | None) -> Any:
    """What Lambda is given for a saved event (pure): the event itself, or for a saved HTTP request
    (a binary-mode CloudEvent's ``ce-*`` headers around its body) the function-URL event carrying it."""
    if headers is None:
        return event
    body = event if isinstance(event, str) else json.dumps(event)
    return {"headers": dict(headers), "body": body, "isBase64Encoded": False}


def _invoke(event: Any, refs: list[ObjectRef], s3: Any, *, out: TextIO) -> int:

    settings = Settings.from_env()
    t0 = time.perf_counter()
    # Imported here, not at the top: importing it is Lambda's INIT (the model loads), which must see the
    # endpoint and credentials this replay has just put into the environment.
    from handler.lambda_function import lambda_handler

    _refresh_stale_runtime(out)
    print(f"init: handler imported in {time.perf_counter() - t0:.2f} s", file=out)
    context = make_context()
    since = datetime.now(UTC)
    t1 = time.perf_counter()
    try:
        response = lambda_handler(event, context)
    except Exception:
        print(f"handler raised after {time.perf_counter() - t1:.2f} s:\n{traceback.format_exc()}", file=out)
        return 1
    print(f"handler returned in {time.perf_counter() - t1:.2f} s (request {context.aws_request_id})", file=out)
    if not refs:
        print("  nothing to do: the event names no objects (e.g. S3's s3:TestEvent)", file=out)
    for ref in refs:
        reason = skip_reason(ref, settings.input_suffixes)
        if reason is not None:
            print(f"  skipped  s3://{ref.bucket}/{ref.key}: {reason}", file=out)
            continue
        print("  " + _describe_result(s3, ref, settings, since), file=out)
    print("return value: " + json.dumps(response, indent=2, default=str), file=out)
    failures = response.get("batchItemFailures") if isinstance(response, Mapping) else None
    if failures:
        print(f"FAILED: {len(failures)} record(s) reported in batchItemFailures", file=out)
        return 1
    return 0


def _refresh_stale_runtime(out: TextIO) -> None:
    """Rebuild the handler's runtime when its S3 client targets another endpoint than this replay, or it
    writes other outputs than this replay's ``OUTPUTS``.

    Only when the handler was imported earlier in this process (several replays in one process): its
    runtime would still talk to the previous replay's endpoint, possibly a moto server that is gone, and
    write the previous replay's ``--outputs``.
    """
    if not runtime_is_built():
        return
    wanted = make_s3_client().meta.endpoint_url
    if get_runtime().storage.client.meta.endpoint_url != wanted:
        reload_runtime()
        print(f"  runtime rebuilt for {wanted} (the handler was imported for another endpoint)", file=out)
    elif get_runtime().settings.outputs != (outputs := Settings.from_env().outputs):
        reload_runtime()
        print(f"  runtime rebuilt for OUTPUTS={','.join(outputs)} (it was built for other outputs)", file=out)


def _describe_result(s3: Any, ref: ObjectRef, settings: Any, since: datetime) -> str:
    try:
        result = find_result(
            s3,
            ref.bucket,
            ref.key,
            output_bucket=settings.output_bucket,
            output_prefix=settings.output_prefix,
            since=since,
            formats=settings.outputs,
            output_mode=settings.output_mode,
        )
    except (ClientError, BotoCoreError) as exc:
        return f"unknown  s3://{ref.bucket}/{ref.key}: could not check its output ({exc})"
    if result.status == "none":
        return f"nothing  s3://{ref.bucket}/{ref.key}: no new output (missing, replaced or already done)"
    detail = f" ({result.detail})" if result.detail else ""
    lines = [f"{result.status:<8} s3://{result.bucket}/{result.key} {result.size} bytes{detail}"]
    lines += [f"  {'':<8} s3://{result.bucket}/{key} {size} bytes" for key, size in result.others]
    return "\n".join(lines)
