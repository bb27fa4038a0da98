"""``rasterfn status s3://bucket/key``: the progress of the input's sharded job (see handler/fanout/status.py)."""

from __future__ import annotations

import argparse
from urllib.parse import urlparse

from handler.errors import EventError
from handler.fanout.status import describe, find_job_status
from handler.settings import get_settings
from handler.storage import Storage


def run_status(args: argparse.Namespace) -> int:
    uri = urlparse(args.uri)
    if uri.scheme != "s3" or not uri.netloc or not uri.path.strip("/"):
        raise EventError(f"expected s3://bucket/key, got {args.uri!r}")
    bucket, key = uri.netloc, uri.path.lstrip("/")
    settings = get_settings()
    storage = Storage.from_defaults(args.endpoint_url)
    status = find_job_status(storage, settings.output_bucket or bucket, bucket, key)
    if status is None:
        print(f"no sharded job recorded for {args.uri} (small rasters run in one invocation)")
        return 1
    print(describe(status))
    return 2 if status.failure else 0
