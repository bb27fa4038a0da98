"""model/io/remote.py: what GDAL is told about a raster read over HTTP, and what its failures are (pure)."""

from __future__ import annotations

import pytest

from model.errors import RasterReadError
from model.io.raster import check_signature
from model.io.remote import REMOTE_GDAL_ENV, RemoteRaster, is_http_failure, redact

URL = "https://b.s3.amazonaws.com/k.tif?versionId=v1&X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef"


def test_every_request_carries_if_match_on_the_etag():
    options = RemoteRaster(URL, "k.tif", 10, b"II*\x00", "abc").gdal_options()
    assert options["GDAL_HTTP_HEADERS"] == 'If-Match: "abc"\r\n'
    assert options["CPL_VSIL_CURL_USE_HEAD"] == "NO"  # a presigned GET does not sign HEAD
    assert "GDAL_HTTP_HEADERS" not in RemoteRaster(URL, "k.tif", 10, b"II*\x00").gdal_options()
    assert "GDAL_HTTP_HEADERS" not in REMOTE_GDAL_ENV


def test_the_url_never_shows_in_repr():
    text = repr(RemoteRaster(URL, "k.tif", 10, b"II*\x00", "abc"))
    assert "deadbeef" not in text and "AKIA" not in text and "k.tif" in text


@pytest.mark.parametrize(
    ("text", "http"),
    [
        ("HTTP response code: 412", True),
        ("Request for 77849-155103 failed with response_code=503", True),
        ("Curl error: Could not resolve host: b.s3.amazonaws.com", True),
        ("TIFFFillTile:Read error at row 64, col 64, tile 8; got 0 bytes, expected 68889", False),
        ("ZIPDecode:Decoding error at scanline 0", False),
    ],
)
def test_http_failures_are_told_from_bad_bytes(text, http):
    assert is_http_failure(text) is http


def test_signatures_and_credentials_never_reach_the_log():
    text = redact(f"GDAL could not read /vsicurl/{URL} rows 0-64")
    assert "deadbeef" not in text and "AKIA" not in text and "versionId=v1" in text


@pytest.mark.parametrize(
    ("head", "match"),
    [(b"", "empty"), (b"%PDF-1.7", "a PDF document, not a TIFF"), (b"abcdefgh", "does not start with a TIFF")],
)
def test_the_signature_check_needs_only_the_first_bytes(head, match):
    with pytest.raises(RasterReadError, match=match):
        check_signature("in/k.tif", head)
    check_signature("in/k.tif", b"II+\x00\x08\x00\x00\x00")  # BigTIFF passes
