"""S3 access: find the object an event names, download exactly that version, upload results.

Every S3 call is a :class:`Storage` method; its errors are worded by :mod:`handler.s3_errors` from
:mod:`handler.aws`'s one table, and the client comes from :func:`handler.aws.make_s3_client` (boto3 reads
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` itself; a non-AWS endpoint gets path-style addressing).

Example:
    >>> storage = Storage.from_defaults()
    >>> info = storage.locate(ObjectRef("scenes", "a/b/scene.tif"))
    >>> path = storage.download(info, Path("/tmp"), max_bytes=4 << 30)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.subscribers import BaseSubscriber

from handler.aws import DEFAULT_MAX_ATTEMPTS, make_s3_client
from handler.errors import ObjectMissingError, TransientError
from handler.objects import ObjectInfo, ObjectRef, normalize_etag, s3_uri
from handler.s3_errors import UploadGoneError, s3_errors
from model.errors import RasterfnError, RasterTooLargeError

MB = 1024**2
MULTIPART_THRESHOLD = 64 * MB
MULTIPART_CHUNKSIZE = 16 * MB
MAX_TRANSFER_CONCURRENCY = 8
# Room left on the temp disk besides the input: the predictor writes its output there before the upload.
DISK_HEADROOM_BYTES = 16 * MB
IO_CHUNK_BYTES = 1 * MB
OUTPUT_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


@dataclass(frozen=True)
class Upload:
    """One open multipart upload."""

    bucket: str
    key: str
    upload_id: str

    @property
    def uri(self) -> str:
        return s3_uri(self.bucket, self.key)


class _KnownObject(BaseSubscriber):
    """Hands s3transfer the size and ETag from our HeadObject: no second HEAD, and every ranged GET carries
    ``IfMatch``, so an object replaced mid-download fails with 412 instead of mixing two versions."""

    def __init__(self, size: int, etag: str) -> None:
        self._size = size
        self._etag = f'"{etag}"'

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        future.meta.provide_object_etag(self._etag)


@dataclass(frozen=True)
class Storage:
    """S3 operations the function needs, over one thread-safe boto3 client."""

    client: Any
    transfer_config: TransferConfig = field(
        default_factory=lambda: TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=MAX_TRANSFER_CONCURRENCY,
        )
    )

    @classmethod
    def from_defaults(cls, endpoint_url: str | None = None, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Storage:
        return cls(make_s3_client(endpoint_url, max_attempts=max_attempts, pool=MAX_TRANSFER_CONCURRENCY + 2))

    def head(self, bucket: str, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        """The object's metadata, or None when it does not exist."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            with s3_errors(s3_uri(bucket, key)):
                response = self.client.head_object(**kwargs)
        except ObjectMissingError:
            return None
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(response["ContentLength"]),
            etag=normalize_etag(response.get("ETag")) or "",
            version_id=response.get("VersionId"),
            metadata=dict(response.get("Metadata") or {}),
            last_modified=response.get("LastModified"),
        )

    def locate(self, ref: ObjectRef) -> ObjectInfo:
        """The current object ``ref`` names, trying ``ref.raw_key`` when ``ref.key`` is not found.

        Raises :class:`ObjectMissingError` when it is gone, or when a newer upload replaced the version the
        event is about (that upload has its own event; processing the old one could overwrite its result).
        """
        keys = [ref.key] + ([ref.raw_key] if ref.raw_key and ref.raw_key != ref.key else [])
        for key in keys:
            info = self.head(ref.bucket, key)
            if info is not None:
                break
        else:
            raise ObjectMissingError(f"{s3_uri(ref.bucket, ref.key)} no longer exists")
        if ref.version_id and info.version_id:
            if ref.version_id != info.version_id:
                raise ObjectMissingError(f"{info.uri} version {ref.version_id} was replaced by {info.version_id}")
        elif ref.etag and normalize_etag(ref.etag) != info.etag:
            raise ObjectMissingError(f"{info.uri} with ETag {ref.etag} was replaced (now {info.etag})")
        return info

    def download(
        self,
        info: ObjectInfo,
        dest_dir: str | Path,
        *,
        max_bytes: int,
        reserve_bytes: int = DISK_HEADROOM_BYTES,
        prefix: str = "rasterfn-in-",
        limit_name: str = "MAX_INPUT_BYTES",
    ) -> Path:
        """Download exactly ``info``'s version into a new private (0600) file in ``dest_dir``; return its path.

        The file name never comes from the key. Objects over ``max_bytes``, or that would not fit the free
        space of ``dest_dir`` with ``reserve_bytes`` to spare, are refused before any byte is read.
        """
        if info.size > max_bytes:
            raise RasterTooLargeError(
                f"{info.uri} is {info.size} bytes, over the {max_bytes}-byte limit ({limit_name})"
            )
        free = shutil.disk_usage(dest_dir).free
        if info.size + reserve_bytes > free:
            raise RasterTooLargeError(
                f"{info.uri} is {info.size} bytes but only {free} bytes of temporary space are free "
                f"(raise the function's ephemeral storage)"
            )
        suffix = os.path.splitext(info.key)[1]
        fd, name = tempfile.mkstemp(
            prefix=prefix, suffix=suffix if _SAFE_SUFFIX.fullmatch(suffix) else "", dir=dest_dir
        )
        try:
            with os.fdopen(fd, "wb") as fh, s3_errors(info.uri):
                if info.size < self.transfer_config.multipart_threshold:
                    self._get_into(info, fh)
                else:
                    self._get_ranges_into(info, fh)
            written = os.path.getsize(name)
            if written != info.size:
                raise TransientError(f"{info.uri}: downloaded {written} of {info.size} bytes")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        return Path(name)

    def _get_into(self, info: ObjectInfo, fh: BinaryIO) -> None:
        # One GET with If-Match (s3transfer sends it on ranged GETs only): a replaced version fails with 412.
        with contextlib.closing(self.client.get_object(**self._exact(info))["Body"]) as body:
            for chunk in body.iter_chunks(IO_CHUNK_BYTES):
                fh.write(chunk)

    def _get_ranges_into(self, info: ObjectInfo, fh: BinaryIO) -> None:
        # Parallel ranged GETs, each with If-Match on the ETag from our HEAD (see _KnownObject).
        extra_args = {"VersionId": info.version_id} if info.version_id else {}
        with create_transfer_manager(self.client, self.transfer_config) as manager:
            subscribers = [_KnownObject(info.size, info.etag)]
            manager.download(info.bucket, info.key, fh, extra_args=extra_args, subscribers=subscribers).result()

    def read_range(self, info: ObjectInfo, start: int, length: int) -> bytes:
        """Bytes ``start..start+length-1`` of exactly ``info``'s version (fewer at the end of the object)."""
        if length < 1 or start >= info.size:
            return b""
        kwargs = self._exact(info)
        kwargs["Range"] = f"bytes={start}-{start + length - 1}"
        with s3_errors(info.uri), contextlib.closing(self.client.get_object(**kwargs)["Body"]) as body:
            return body.read()

    def presigned_get(self, info: ObjectInfo, expires_s: int) -> str:
        """A GET URL for exactly ``info``'s version, valid ``expires_s`` seconds: the only credential it carries is
        the right to read that one object (pinned by ``VersionId`` where versioning is on; the caller adds If-Match
        on the ETag for unversioned buckets, which a URL cannot pin). Never log it."""
        # The ETag in the (signed) URL, as a download name: GDAL caches ranges process-wide by URL, and two
        # versions of one key presigned in the same second must never share a URL (nor that cache).
        params: dict[str, Any] = {
            "Bucket": info.bucket,
            "Key": info.key,
            "ResponseContentDisposition": f'attachment; filename="{info.etag}.tif"',
        }
        if info.version_id:
            params["VersionId"] = info.version_id
        with s3_errors(info.uri):
            return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    def _exact(self, info: ObjectInfo) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": info.bucket, "Key": info.key}
        if info.version_id:
            kwargs["VersionId"] = info.version_id
        if info.etag:
            kwargs["IfMatch"] = f'"{info.etag}"'
        return kwargs

    def upload_file(
        self,
        path: str | Path,
        bucket: str,
        key: str,
        *,
        metadata: Mapping[str, str],
        content_type: str = OUTPUT_CONTENT_TYPE,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> int:
        """Upload a finished file (multipart above the threshold); returns its size in bytes.

        ``if_match`` (an ETag) or ``if_absent`` make the write conditional (S3's ``If-Match`` /
        ``If-None-Match: *``, on the PUT or on CompleteMultipartUpload): when the key changed since the caller
        looked, nothing is written and S3's 412 becomes :class:`ObjectMissingError`.
        """
        conditions: dict[str, str] = {}
        if if_match:
            conditions["IfMatch"] = f'"{if_match}"'
        elif if_absent:
            conditions["IfNoneMatch"] = "*"
        extra_args = {"Metadata": dict(metadata), "ContentType": content_type}
        size = os.path.getsize(path)
        with s3_errors(s3_uri(bucket, key), writing=True):
            if not conditions:
                with create_transfer_manager(self.client, self.transfer_config) as manager:
                    manager.upload(str(path), bucket, key, extra_args=extra_args).result()
            elif size < self.transfer_config.multipart_threshold:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=bucket, Key=key, Body=body, **extra_args, **conditions)
            else:
                self._conditional_multipart(Path(path), size, bucket, key, extra_args, conditions)
        return size

    def _conditional_multipart(
        self, path: Path, size: int, bucket: str, key: str, extra_args: Mapping[str, Any], conditions: Mapping[str, str]
    ) -> None:
        # s3transfer cannot pass If-Match / If-None-Match to CompleteMultipartUpload: parts in parallel, ours.
        chunk = self.transfer_config.multipart_chunksize
        upload = self.create_multipart(
            bucket, key, metadata=extra_args["Metadata"], content_type=extra_args["ContentType"]
        )

        def put_part(number: int) -> str | None:
            with open(path, "rb") as fh:
                fh.seek((number - 1) * chunk)
                data = fh.read(chunk)
            return self.upload_part(upload, number, data)

        try:
            numbers = range(1, max(1, -(-size // chunk)) + 1)
            with ThreadPoolExecutor(max_workers=self.transfer_config.max_request_concurrency) as pool:
                etags = list(pool.map(put_part, numbers))
            if None in etags or not self.complete_multipart(upload, etags, conditions=conditions):
                raise ObjectMissingError(f"{s3_uri(bucket, key)}: the upload was aborted while it ran")
        except BaseException:
            with contextlib.suppress(RasterfnError):
                self.abort_multipart(upload)
            raise

    def create_multipart(self, bucket: str, key: str, *, metadata: Mapping[str, str], content_type: str) -> Upload:
        """Open a multipart upload of ``key``; nothing appears until :meth:`complete_multipart`."""
        with s3_errors(s3_uri(bucket, key), writing=True):
            response = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, Metadata=dict(metadata), ContentType=content_type
            )
        return Upload(bucket, key, response["UploadId"])

    def upload_part(self, upload: Upload, number: int, body: bytes | BinaryIO) -> str | None:
        """Upload part ``number`` (1-based); its ETag, or None when the upload was completed or aborted since."""
        try:
            with s3_errors(upload.uri, writing=True):
                response = self.client.upload_part(
                    Bucket=upload.bucket, Key=upload.key, UploadId=upload.upload_id, PartNumber=number, Body=body
                )
        except UploadGoneError:
            return None
        return response["ETag"]

    def complete_multipart(
        self, upload: Upload, etags: Sequence[str], *, conditions: Mapping[str, str] | None = None
    ) -> bool:
        """Assemble the parts (``etags`` in part order); False when the upload was completed or aborted since."""
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, start=1)]
        try:
            with s3_errors(upload.uri, writing=True):
                self.client.complete_multipart_upload(
                    Bucket=upload.bucket,
                    Key=upload.key,
                    UploadId=upload.upload_id,
                    MultipartUpload={"Parts": parts},
                    **(conditions or {}),
                )
        except UploadGoneError:
            return False
        return True

    def abort_multipart(self, upload: Upload) -> None:
        """Abort the upload and drop its parts; one already gone is fine."""
        with contextlib.suppress(UploadGoneError), s3_errors(upload.uri, writing=True):
            self.client.abort_multipart_upload(Bucket=upload.bucket, Key=upload.key, UploadId=upload.upload_id)

    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        """A small object's whole body, or None when it does not exist."""
        try:
            with (
                s3_errors(s3_uri(bucket, key)),
                contextlib.closing(self.client.get_object(Bucket=bucket, Key=key)["Body"]) as body,
            ):
                return body.read()
        except ObjectMissingError:
            return None

    def put_bytes(self, bucket: str, key: str, body: bytes, *, content_type: str, if_absent: bool = False) -> bool:
        """Write a small object; with ``if_absent`` only when the key is free (``If-None-Match: *``).

        Returns whether it was written: a conditional write that lost the race returns False.
        """
        conditions = {"IfNoneMatch": "*"} if if_absent else {}
        try:
            with s3_errors(s3_uri(bucket, key), writing=True):
                self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **conditions)
        except ObjectMissingError:
            if if_absent:  # 412: another writer was first
                return False
            raise
        return True

    def count(self, bucket: str, prefix: str) -> int:
        """How many objects have keys starting with ``prefix``."""
        total = 0
        with s3_errors(s3_uri(bucket, prefix)):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                total += page.get("KeyCount", 0)
        return total

    def put_json(self, bucket: str, key: str, doc: Any, *, metadata: Mapping[str, str]) -> int:
        """Write a small JSON document; returns its size in bytes."""
        body = json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n"
        with s3_errors(s3_uri(bucket, key), writing=True):
            self.client.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=JSON_CONTENT_TYPE, Metadata=dict(metadata)
            )
        return len(body)

    def delete(self, bucket: str, key: str, *, version_id: str | None = None) -> None:
        """Delete one object; with ``version_id``, exactly that version (no delete marker, nothing newer)."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        with s3_errors(s3_uri(bucket, key), writing=True):
            self.client.delete_object(**kwargs)
