"""handler.http.uploads: multipart and raw bodies streamed to a private temp file, limits checked while reading."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator

import anyio
import pytest

from handler.errors import MediaTypeError, UploadError
from handler.http.uploads import (
    MAX_FIELD_BYTES,
    MULTIPART_OVERHEAD_BYTES,
    Upload,
    receive_upload,
    safe_stem,
)
from model.errors import RasterTooLargeError

BOUNDARY = "----rasterfn-test-boundary"
MULTIPART_CT = f"multipart/form-data; boundary={BOUNDARY}"


def multipart_body(*parts: tuple[str, str | None, bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """``(field name, filename or None, content)`` parts -> a multipart/form-data body."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: image/tiff\r\n"
        out += b"\r\n" + content + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


class CountingBody:
    """An async body that records how many chunks (and bytes) the receiver pulled from it."""

    def __init__(self, body: bytes, chunk_size: int = 4096) -> None:
        self.body = body
        self.chunk_size = chunk_size
        self.chunks_read = 0
        self.bytes_read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.chunk_size):
            chunk = self.body[start : start + self.chunk_size]
            self.chunks_read += 1
            self.bytes_read += len(chunk)
            yield chunk

    @property
    def total_chunks(self) -> int:
        return -(-len(self.body) // self.chunk_size)


def receive(headers: dict[str, str], body: CountingBody, dest, max_bytes: int = 1 << 20) -> Upload:
    return anyio.run(receive_upload, headers, body.__aiter__(), dest, max_bytes)


PAYLOAD = bytes(range(256)) * 300  # 76.8 kB, every byte value, CR/LF and "--" included


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096, 1 << 20])
def test_multipart_file_part_is_written_exactly_whatever_the_chunking(tmp_path, chunk_size):
    # GIVEN a multipart body with a small field before and after the file part
    body = multipart_body(
        ("note", None, b"hello"), ("file", "scene.tif", PAYLOAD), ("other", None, b"--" + BOUNDARY.encode())
    )
    # WHEN it is streamed in chunks of any size
    upload = receive({"content-type": MULTIPART_CT}, CountingBody(body, chunk_size), tmp_path)
    # THEN the temp file holds exactly the file part's bytes, privately, and the sizes are right
    assert upload.path.read_bytes() == PAYLOAD
    assert upload.size == len(PAYLOAD) and upload.body_bytes == len(body)
    assert upload.stem == "scene"
    assert stat.S_IMODE(upload.path.stat().st_mode) == 0o600
    assert upload.path.parent == tmp_path and "scene" not in upload.path.name  # names never come from clients


@pytest.mark.parametrize(
    "content_type", ["image/tiff", "application/octet-stream", "IMAGE/TIFF; charset=binary", "image/geotiff"]
)
def test_raw_body_is_written_and_named_from_content_disposition(tmp_path, content_type):
    headers = {"content-type": content_type, "content-disposition": 'attachment; filename="T32UQD.tif"'}
    upload = receive(headers, CountingBody(PAYLOAD, 1000), tmp_path)
    assert upload.path.read_bytes() == PAYLOAD
    assert upload.stem == "T32UQD"


def test_raw_body_without_a_name_is_called_output(tmp_path):
    upload = receive({"content-type": "image/tiff"}, CountingBody(b"II*\x00"), tmp_path)
    assert upload.stem == "output"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json", "image/png"])
def test_other_content_types_are_refused_before_reading(tmp_path, content_type):
    body = CountingBody(PAYLOAD)
    headers = {"content-type": content_type} if content_type else {}
    with pytest.raises(MediaTypeError, match="not accepted"):
        receive(headers, body, tmp_path)
    assert body.chunks_read == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("parts", "close", "message"),
    [
        ([("image", "scene.tif", PAYLOAD)], True, "no 'file' field but a file in field 'image'"),
        ([("note", None, b"x")], True, "no 'file' field"),
        ([("file", "scene.tif", b"")], True, "'file' field is empty"),
        ([("file", "scene.tif", PAYLOAD)], False, "ended before its closing boundary"),
    ],
)
def test_bad_multipart_bodies_are_upload_errors_and_leave_nothing(tmp_path, parts, close, message):
    body = multipart_body(*parts, close=close)
    with pytest.raises(UploadError, match=message):
        receive({"content-type": MULTIPART_CT}, CountingBody(body), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_multipart_without_boundary_is_an_upload_error(tmp_path):
    with pytest.raises(UploadError, match="boundary"):
        receive({"content-type": "multipart/form-data"}, CountingBody(b"x"), tmp_path)


def test_garbage_multipart_is_an_upload_error(tmp_path):
    with pytest.raises(UploadError):
        receive({"content-type": MULTIPART_CT}, CountingBody(b"this is not multipart at all\r\n"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_empty_raw_body_is_an_upload_error(tmp_path):
    with pytest.raises(UploadError, match="empty"):
        receive({"content-type": "image/tiff"}, CountingBody(b""), tmp_path)


@pytest.mark.parametrize("multipart", [False, True])
def test_declared_length_over_the_limit_is_refused_without_reading(tmp_path, multipart):
    # GIVEN a Content-Length far over the limit
    limit = 10_000
    declared = limit + (MULTIPART_OVERHEAD_BYTES if multipart else 0) + 1
    headers = {"content-type": MULTIPART_CT if multipart else "image/tiff", "content-length": str(declared)}
    body = CountingBody(PAYLOAD)
    # WHEN it is received THEN it is refused before a single chunk is pulled
    with pytest.raises(RasterTooLargeError, match="over the"):
        receive(headers, body, tmp_path, max_bytes=limit)
    assert body.chunks_read == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("multipart", [False, True])
def test_streamed_body_over_the_limit_stops_early_and_cleans_up(tmp_path, multipart):
    # GIVEN a chunked body (no Content-Length) 100 times the limit
    limit, chunk = 8_192, 1_024
    data = b"\x01" * (limit * 100)
    body_bytes = multipart_body(("file", "big.tif", data)) if multipart else data
    body = CountingBody(body_bytes, chunk)
    content_type = MULTIPART_CT if multipart else "application/octet-stream"
    # WHEN it is received
    with pytest.raises(RasterTooLargeError, match="MAX_INPUT_BYTES"):
        receive({"content-type": content_type}, body, tmp_path, max_bytes=limit)
    # THEN reading stopped just past the limit, far before the end, and the partial file is gone
    assert body.bytes_read <= limit + 2 * chunk
    assert body.chunks_read < body.total_chunks // 50
    assert list(tmp_path.iterdir()) == []


def test_file_of_exactly_the_limit_is_accepted(tmp_path):
    data = b"\x02" * 5000
    upload = receive(
        {"content-type": MULTIPART_CT}, CountingBody(multipart_body(("file", "a.tif", data))), tmp_path, 5000
    )
    assert upload.size == 5000


def test_large_non_file_fields_are_refused(tmp_path):
    body = multipart_body(("junk", None, b"j" * (MAX_FIELD_BYTES + 1)), ("file", "a.tif", b"x"))
    with pytest.raises(RasterTooLargeError, match="fields besides"):
        receive({"content-type": MULTIPART_CT}, CountingBody(body), tmp_path)


def test_invalid_content_length_is_an_upload_error(tmp_path):
    with pytest.raises(UploadError, match="Content-Length"):
        receive({"content-type": "image/tiff", "content-length": "lots"}, CountingBody(b"x"), tmp_path)


def test_only_the_first_file_field_is_kept(tmp_path):
    body = multipart_body(("file", "first.tif", b"one"), ("file", "second.tif", b"two"))
    upload = receive({"content-type": MULTIPART_CT}, CountingBody(body), tmp_path)
    assert (upload.path.read_bytes(), upload.stem) == (b"one", "first")


@pytest.mark.parametrize(
    ("filename", "stem"),
    [
        ("scene.tif", "scene"),
        ("a/b/scene.v2.tiff", "scene.v2"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\T32 UQD.tif", "T32_UQD"),
        ('evil"; filename=x.sh', "evil_filename_x"),
        ("..", "output"),
        (".tif", "tif"),
        ("", "output"),
        (None, "output"),
        ("é" * 300 + ".tif", "output"),
        ("a" * 300 + ".tif", "a" * 100),
    ],
)
def test_safe_stem(filename, stem):
    assert safe_stem(filename) == stem


# --- caps on multipart structure (issue 9)


def test_a_body_of_many_empty_parts_is_refused_at_the_first_part_over_the_cap(tmp_path):
    from handler.http.uploads import MAX_MULTIPART_PARTS

    part = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n'.encode()
    body = CountingBody(part * 250_000 + f"--{BOUNDARY}--\r\n".encode(), chunk_size=64 * 1024)
    with pytest.raises(UploadError, match=f"more than {MAX_MULTIPART_PARTS} parts"):
        receive({"content-type": MULTIPART_CT}, body, tmp_path)
    assert body.chunks_read == 1, "refused within the first chunk, not after parsing the whole body"
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_field_names_only_a_few_fields_briefly(tmp_path):
    body = CountingBody(multipart_body(*[("x" * 500 + str(i), None, b"v") for i in range(10)]))
    with pytest.raises(UploadError, match="and 5 more") as info:
        receive({"content-type": MULTIPART_CT}, body, tmp_path)
    assert len(str(info.value)) < 400


def test_a_huge_part_header_is_refused_by_the_parser(tmp_path):
    header = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{"a" * 100_000}.tif"\r\n\r\n'
    body = CountingBody(header.encode() + b"II*\x00" + f"\r\n--{BOUNDARY}--\r\n".encode())
    with pytest.raises(UploadError, match="Maximum header size exceeded"):
        receive({"content-type": MULTIPART_CT}, body, tmp_path)
