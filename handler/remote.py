"""One object version as a :class:`model.io.remote.RemoteRaster`: read where it lies with ranged GETs, never downloaded.

:func:`remote_source` reads the object's first bytes (a ranged GET of exactly ``info``'s version, for the
signature check), presigns a GET of that version (``VersionId`` where the bucket has versioning) and hands GDAL
the URL with the ETag its every request carries as ``If-Match``: an unversioned object replaced mid-job fails
the next request (412) instead of mixing two uploads' bytes. The URL is the only credential GDAL sees (no AWS
keys, config or endpoint settings reach it), it expires after :func:`url_lifetime_s`, and nothing derived
from the key reaches the filesystem: nothing is written.

A read that fails is decided here, with one HEAD: the object gone or replaced since the job looked ->
:class:`~handler.errors.ObjectMissingError` (a replaced upload's own event supersedes the job, which is
abandoned). That covers a 412 whatever GDAL made of it: a failed fetch of pixel data reaches us as libtiff's
"read error ... got 0 bytes", with GDAL's HTTP message lost on the way. Otherwise a fetch GDAL reported as such
(:class:`~model.errors.RemoteReadError`: the header's requests, a status or a connection error) ->
:class:`~handler.errors.TransientError` (retried; the retry presigns a new URL, so an expired one heals too),
and an input error stands, as it would for a downloaded copy. GDAL itself retries 429 and 5xx answers
(``GDAL_HTTP_MAX_RETRY``, :mod:`model.io.remote`) before a read fails.

Example:
    >>> with remote_source(storage, info, expires_s=url_lifetime_s(settings)) as src:   # doctest: +SKIP
    ...     histograms = band_statistics(model, src, band)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from handler.errors import ObjectMissingError, TransientError
from handler.objects import ObjectInfo
from handler.settings import Settings
from handler.storage import Storage
from model.errors import InputError, RemoteReadError
from model.io.remote import SIGNATURE_BYTES, RemoteRaster

LAMBDA_MAX_TIMEOUT_S = 15 * 60
URL_SLACK_S = 5 * 60


def url_lifetime_s(settings: Settings) -> int:
    """How long a presigned URL lives: the longest a shard may read (Lambda's cap or INFERENCE_TIMEOUT_S) + slack."""
    return max(LAMBDA_MAX_TIMEOUT_S, settings.inference_timeout_s) + URL_SLACK_S


@contextlib.contextmanager
def remote_source(storage: Storage, info: ObjectInfo, *, expires_s: int) -> Iterator[RemoteRaster]:
    """``info``'s exact version as a :class:`RemoteRaster` named by its key; see the module docstring."""
    head = storage.read_range(info, 0, SIGNATURE_BYTES)
    url = storage.presigned_get(info, expires_s)
    try:
        yield RemoteRaster(url, info.key, info.size, head, info.etag or None)
    except (RemoteReadError, InputError) as exc:
        current = storage.head(info.bucket, info.key, version_id=info.version_id)
        if current is None or current.etag != info.etag:
            raise ObjectMissingError(f"{info.uri} was replaced or deleted while it was read") from exc
        if isinstance(exc, RemoteReadError):
            raise TransientError(f"{info.uri}: reading it failed, retry later ({exc})") from exc
        raise
