"""A raster read where it lies, over HTTP range requests (GDAL's ``/vsicurl/``): only the bytes read travel.

``model/`` knows nothing of S3: a caller hands :func:`model.io.raster.open_checked` (and so ``band_statistics`` /
``predict_band``) a :class:`RemoteRaster` instead of a local path: a URL that answers ranged GETs (the
service's is a short-lived presigned S3 GET of one object version), the user's name for it, its size and
its first bytes (both from the caller's own requests: the compression-ratio check needs the size and the
signature check runs on the first bytes before GDAL sees anything), and the ETag every request must still
match. The same header checks as for a local file run before any pixel is read.

GDAL reads a tiled TIFF's header, then, for a window, the tiles that window touches (in parallel ranged
GETs, merged when adjacent); a striped TIFF costs whole strips (full-width rows), an untiled one with a
single strip the whole image. Every request carries ``If-Match: "<etag>"``: if the object is replaced
while a job reads it, the next request fails (412) instead of mixing two versions' bytes, and
:class:`~model.errors.RemoteReadError` says so to the caller, which decides what a failed fetch means.

Example:
    >>> source = RemoteRaster("https://example.com/a.tif?X-Amz-Signature=s", "a.tif", 1000, b"II*\\x00", "abc")
    >>> source.gdal_path
    '/vsicurl/https://example.com/a.tif?X-Amz-Signature=s'
    >>> source.gdal_options()["GDAL_HTTP_HEADERS"]
    'If-Match: "abc"\\r\\n'
    >>> "X-Amz-Signature" in repr(source)
    False
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SIGNATURE_BYTES = 8  # enough for every TIFF magic and every other format model.io.raster names
VSICURL = "/vsicurl/"
# GDAL's settings for reading over HTTP (process-wide curl region cache, per-request retries):
# - a presigned GET URL does not sign HEAD, so GDAL learns the size from a GET it cuts off after the headers;
# - retries cover S3's 5xx and throttling (GDAL retries 429, 500, 502, 503, 504), with back-off; a 412 or 404
#   is not retried: the caller checks whether the object was replaced;
# - the region cache keeps the header and the blocks just read, bounded (GDAL's default is 16 MiB);
# - no sidecar probes (.aux.xml, .ovr, .msk): each would be a GET, and only the uploaded bytes count;
# - one decoding thread: GDAL then reads a band's blocks in a window as few merged ranged GETs (the demo scene,
#   band-interleaved 256-pixel tiles: 162 GETs for the whole job instead of 3726 with GDAL's threads, which
#   fetch block by block), and GDAL's messages stay in our debug log (a worker thread's go to stderr).
#   Inference, not decoding, is a shard's cost. The price: GDAL's sequential read-ahead fetches a little past
#   a band's last block, which only tiny blocks make noticeable.
REMOTE_GDAL_ENV: dict[str, object] = {
    "GDAL_NUM_THREADS": "1",
    "CPL_VSIL_CURL_USE_HEAD": "NO",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "4",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "120",
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 1024**2),
}
_HTTP_FAILURE = re.compile(
    r"HTTP response code|HTTP error code|response_code=\d|curl error|Could not resolve host|timed out", re.I
)
_SECRET = re.compile(r"(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=[^&\s\"']+")


@dataclass(frozen=True)
class RemoteRaster:
    """A raster GDAL reads with ranged GETs; see the module docstring. ``url`` is a credential: never logged."""

    url: str = field(repr=False)
    name: str  # the user's name for it, in every message
    size: int  # bytes, from the caller's HEAD
    head: bytes = field(repr=False)  # the first bytes (at least SIGNATURE_BYTES unless the object is shorter)
    etag: str | None = None  # every request carries If-Match on it

    @property
    def gdal_path(self) -> str:
        return VSICURL + self.url

    def gdal_options(self) -> dict[str, object]:
        """GDAL configuration for reading this raster: :data:`REMOTE_GDAL_ENV` plus the ``If-Match`` header."""
        options = dict(REMOTE_GDAL_ENV)
        if self.etag:
            # \r\n-separated form: GDAL's comma-separated form would strip the ETag's quotes.
            options["GDAL_HTTP_HEADERS"] = f'If-Match: "{self.etag}"\r\n'
        return options


def is_http_failure(library_text: str) -> bool:
    """Whether GDAL's text says a fetch failed (HTTP status, connection), not that the bytes were bad (pure).

    >>> is_http_failure("HTTP response code: 412 <- Read failed")
    True
    >>> is_http_failure("TIFFReadEncodedTile:Read error at row 0")
    False
    """
    return bool(_HTTP_FAILURE.search(library_text))


def redact(text: str) -> str:
    """``text`` with presigned URLs' signatures and credentials cut out, for the debug log (pure).

    >>> redact("GET https://b.s3/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc123 failed")
    'GET https://b.s3/k?X-Amz-Credential=...&X-Amz-Signature=... failed'
    """
    return _SECRET.sub(lambda m: f"{m.group(1)}=...", text)
