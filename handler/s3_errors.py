"""S3's errors worded for us: what each code means is :mod:`handler.aws`'s one table; the words are S3's.

- gone (404, NoSuchKey, NoSuchVersion) or replaced mid-download (412) -> :class:`ObjectMissingError`;
- throttled, 5xx, timeouts, dropped connections -> :class:`TransientError` (the event source retries);
- access denied, missing output bucket, other 4xx -> :class:`ConfigError` (a deployment fault);
- archived (Glacier) objects -> :class:`InputError` (the user must restore them first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from botocore.exceptions import ClientError
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

from handler.aws import Fault, botocore_errors, classify, error_code, error_message
from handler.errors import ObjectMissingError, TransientError
from model.errors import ConfigError, InputError, RasterfnError


class UploadGoneError(ObjectMissingError):
    """NoSuchUpload: :class:`handler.storage.Storage`'s multipart methods answer it; it never leaves them."""


def translate_client_error(exc: ClientError, uri: str, *, writing: bool = False) -> RasterfnError:
    """Map one botocore ``ClientError`` of S3 to our error tree (pure; see the module docstring)."""
    code, status = error_code(exc)
    what = error_message(exc, uri)
    fault = classify(code, status)
    if fault is Fault.ARCHIVED:
        return InputError(f"{uri} is archived; restore it before processing ({what})")
    if fault is Fault.TRANSIENT:
        return TransientError(f"S3 is unavailable, retry later ({what})")
    if fault is Fault.DENIED:
        return ConfigError(f"access denied: the function's role or the bucket policy does not allow {what}")
    if fault is Fault.UPLOAD_GONE:
        return UploadGoneError(f"{uri}: the multipart upload was completed or aborted since ({code})")
    if fault is Fault.MISSING:
        if writing and code != "NoSuchKey":  # NoSuchKey on a write: an If-Match on an object deleted since
            return ConfigError(f"the output location does not exist ({what})")
        return ObjectMissingError(f"{uri} no longer exists ({code or status})")
    if fault is Fault.CHANGED:
        if writing:
            return ObjectMissingError(f"{uri} was written by another job since this one looked (not overwritten)")
        return ObjectMissingError(f"{uri} was replaced by a newer upload while it was read")
    return ConfigError(f"S3 refused the request ({what})")


@contextlib.contextmanager
def s3_errors(uri: str, *, writing: bool = False) -> Iterator[None]:
    """Translate whatever boto3/s3transfer raise inside the block into our error tree (``raise ... from``)."""
    with botocore_errors(
        uri, "S3", lambda exc: translate_client_error(exc, uri, writing=writing), (RetriesExceededError,)
    ):
        try:
            yield
        except S3DownloadFailedError as exc:
            # s3transfer re-raises a ranged GET's 412 as this, with the ClientError as its context.
            if isinstance(exc.__context__, ClientError):
                raise translate_client_error(exc.__context__, uri, writing=writing) from exc
            raise TransientError(f"download of {uri} failed, retry later: {exc}") from exc
