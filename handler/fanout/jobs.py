"""A fan-out job's state: small objects under ``<JOB_PREFIX><job id>/`` in the output bucket, and its upload.

No database: S3's conditional writes (``If-None-Match: *``) decide every race, and everything else is
idempotent, so at-least-once delivery is safe:

- ``job.json`` (conditional): the plan and the multipart upload id. Two coordinators (a re-delivered message)
  both try; the loser aborts its own upload and adopts the winner's job.
- ``stats-sent.json``: the coordinator sent the stats messages; a re-delivered upload event sends none.
- ``stats/<i>.npz``: band ``i``'s histograms (a duplicate writes the same bytes again).
- ``p90s.json`` (conditional): the reduction, written by whichever stats shard first sees every histogram.
- ``predict-sent.json``: the predict messages are sent; a stats message delivered again later sends none.
- ``parts/<i>.json``: band ``i``'s part is uploaded (its ETag); a duplicate shard sees it and does nothing.
- ``read-retried/<phase>-<i>.json`` (conditional): band ``i``'s rows failed to read once; the next failure fails.
- ``failed.json`` (conditional): the first input error; later shards stop, the upload is aborted.
- ``done.json``: the ``.npy`` is complete.

Lifecycle rules (infra/terraform/fanout.tf) expire job objects and abort incomplete uploads after days.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from handler.objects import JOB_PREFIX
from handler.storage import JSON_CONTENT_TYPE, OUTPUT_CONTENT_TYPE, s3_errors, s3_uri


@dataclass(frozen=True)
class JobStore:
    """The job's objects in ``bucket`` over one S3 client."""

    client: Any
    bucket: str
    job: str

    def key(self, name: str) -> str:
        return f"{JOB_PREFIX}{self.job}/{name}"

    def put_json(self, name: str, doc: Any, *, if_absent: bool = False) -> bool:
        """Write ``name``; with ``if_absent``, only when it does not exist yet. Returns whether it was written."""
        body = json.dumps(doc, sort_keys=True).encode()
        return self._put(name, body, JSON_CONTENT_TYPE, if_absent)

    def get_json(self, name: str) -> Any | None:
        body = self._get(name)
        return None if body is None else json.loads(body)

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            with s3_errors(s3_uri(self.bucket, self.key(name))):
                raise
        return True

    def count(self, folder: str) -> int:
        """How many objects lie under ``folder/`` of the job."""
        prefix = self.key(folder + "/")
        total = 0
        with s3_errors(s3_uri(self.bucket, prefix)):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                total += page.get("KeyCount", 0)
        return total

    def put_histograms(self, index: int, histograms: list[tuple[str, np.ndarray]]) -> None:
        out = io.BytesIO()
        modes = np.array([mode for mode, _ in histograms])
        np.savez_compressed(out, modes=modes, **{f"b{i}": counts for i, (_, counts) in enumerate(histograms)})
        self._put(f"stats/{index}.npz", out.getvalue(), OUTPUT_CONTENT_TYPE, False)

    def get_histograms(self, index: int) -> list[tuple[str, np.ndarray]]:
        body = self._get(f"stats/{index}.npz")
        if body is None:
            raise FileNotFoundError(self.key(f"stats/{index}.npz"))
        with np.load(io.BytesIO(body), allow_pickle=False) as data:
            return [(str(mode), data[f"b{i}"]) for i, mode in enumerate(data["modes"])]

    def _put(self, name: str, body: bytes, content_type: str, if_absent: bool) -> bool:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(name), "Body": body}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            self.client.put_object(ContentType=content_type, **kwargs)
        except ClientError as exc:
            if if_absent and _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            with s3_errors(s3_uri(self.bucket, self.key(name)), writing=True):
                raise
        return True

    def _get(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            with s3_errors(s3_uri(self.bucket, self.key(name))):
                raise


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
