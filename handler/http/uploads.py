"""Stream an HTTP upload (a multipart ``file`` field or a raw raster body) to a private temp file, bounded.

The body is never held in memory: each chunk goes to disk as it arrives, and the size limit is checked on
every chunk, so a 50 GB upload against a 4 GB limit is refused after about 4 GB read, not after 50 GB (and
at once, without reading anything, when ``Content-Length`` already says it is too large). Multipart bodies
go through python-multipart's callback parser, which writes the ``file`` part straight to the temp file
(Starlette's own ``request.form()`` would spool every part, with no overall limit on the file).

Accepted bodies (the old Flask API first):

- ``multipart/form-data`` with a part named ``file`` (``curl -F "file=@scene.tif"``); small other fields
  are ignored;
- ``image/tiff`` or ``application/octet-stream`` raw bodies (``curl --data-binary @scene.tif -H "Content-Type:
  image/tiff"``), optionally named by a ``Content-Disposition: attachment; filename=...`` request header.

The client's file name is only ever used (sanitised) to name the response; temp files get random names.

Example:
    >>> safe_stem("../../etc/passwd.tif"), safe_stem("C:\\\\scenes\\\\T32 UQD.tiff"), safe_stem(None)
    ('passwd', 'T32_UQD', 'output')
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from handler.errors import MediaTypeError, UploadError
from model.errors import RasterTooLargeError

FILE_FIELD = "file"
MULTIPART = "multipart/form-data"
RAW_MEDIA_TYPES = ("image/tiff", "image/tif", "image/geotiff", "application/octet-stream")
# Boundaries, part headers and small form fields around the file part: what a multipart body may add on top of
# the file-size limit before the body as a whole is refused.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 16 * 1024  # all non-file form fields together: they are ignored, so they stay small
# Parts in one multipart body: the file and a few small fields. 250k empty parts would cost seconds of event
# loop; refused at the first part over the cap.
MAX_MULTIPART_PARTS = 16
MAX_NAMES_SHOWN = 5  # field names quoted back in an error message, so its body stays short
MAX_NAME_CHARS = 40
MAX_STEM_CHARS = 100
MAX_SUFFIX_CHARS = 16
DEFAULT_STEM = "output"  # names the response: output.npy, like the old README's command
DEFAULT_NAME = "upload"  # names the upload in error messages when the client gave no file name
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Upload:
    """A received upload: its file, the client's (sanitised) stem, its size and the body bytes read."""

    path: Path
    stem: str
    size: int
    body_bytes: int
    name: str = DEFAULT_NAME  # the client's file name, sanitised: for messages ("scene.tif is not a TIFF")


def safe_stem(filename: str | None, default: str = DEFAULT_STEM) -> str:
    """The client's file name reduced to a harmless stem for ``Content-Disposition`` (never for a path)."""
    if not filename:
        return default
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem, _ = posixpath.splitext(base)
    stem = _UNSAFE_CHARS.sub("_", stem).strip("._")[:MAX_STEM_CHARS]
    return stem or default


def safe_name(filename: str | None, default: str = DEFAULT_NAME) -> str:
    """The file name with its suffix, sanitised as by :func:`safe_stem`: ``a/b c.tif`` -> ``b_c.tif``."""
    if not filename:
        return default
    suffix = posixpath.splitext(filename.replace("\\", "/").rsplit("/", 1)[-1])[1]
    return safe_stem(filename, default) + _UNSAFE_CHARS.sub("_", suffix)[:MAX_SUFFIX_CHARS]


def media_type(headers: Mapping[str, str]) -> str:
    """The lower-cased media type of ``Content-Type``, without parameters (``""`` if absent)."""
    value, _ = parse_options_header(headers.get("content-type", ""))
    return value.decode("latin-1").strip().lower()


def check_content_length(headers: Mapping[str, str], limit: int) -> None:
    """Refuse a body whose declared length is over ``limit`` before reading any of it."""
    declared = headers.get("content-length")
    if declared is None:
        return  # chunked: the streaming count below enforces the limit
    try:
        length = int(declared)
    except ValueError as exc:
        raise UploadError(f"invalid Content-Length header {declared!r}") from exc
    if length > limit:
        raise RasterTooLargeError(f"request body of {length} bytes is over the {limit}-byte limit")


async def receive_upload(
    headers: Mapping[str, str], chunks: AsyncIterator[bytes], dest_dir: str | Path, max_bytes: int
) -> Upload:
    """Stream the raster in the request to a new private file in ``dest_dir``; delete it on any error.

    ``headers`` must be case-insensitive or lower-case (Starlette's ``request.headers`` is); ``chunks`` is the
    body (``request.stream()``). Raises :class:`MediaTypeError` (415), :class:`UploadError` (400) or
    :class:`RasterTooLargeError` (413).
    """
    kind = media_type(headers)
    if kind == MULTIPART:
        receiver: _Receiver = _MultipartReceiver(headers, max_bytes)
    elif kind in RAW_MEDIA_TYPES:
        receiver = _RawReceiver(headers, max_bytes)
    else:
        accepted = ", ".join((MULTIPART, *RAW_MEDIA_TYPES))
        raise MediaTypeError(f"Content-Type {kind or '(none)'!r} is not accepted; send one of: {accepted}")
    check_content_length(headers, receiver.body_limit)

    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".tif", dir=dest_dir)  # mode 0600
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            receiver.out = out
            async for chunk in chunks:
                receiver.feed(chunk)
            receiver.finish()
        return Upload(
            path=path,
            stem=safe_stem(receiver.filename),
            size=receiver.file_bytes,
            body_bytes=receiver.body_bytes,
            name=safe_name(receiver.filename),
        )
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


class _Receiver:
    """Counts body and file bytes against the limits while writing the file bytes to ``out``."""

    body_limit: int

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.out: BinaryIO | None = None
        self.body_bytes = 0
        self.file_bytes = 0
        self.filename: str | None = None  # as the client sent it: only ever sanitised before use

    def feed(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_bytes > self.body_limit:
            raise RasterTooLargeError(
                f"request body is over the {self.body_limit}-byte limit "
                f"(MAX_INPUT_BYTES={self.max_bytes} plus any multipart framing)"
            )

    def finish(self) -> None:
        raise NotImplementedError

    def write_file(self, data: bytes) -> None:
        self.file_bytes += len(data)
        if self.file_bytes > self.max_bytes:
            raise RasterTooLargeError(f"uploaded file is over the {self.max_bytes}-byte limit (MAX_INPUT_BYTES)")
        assert self.out is not None
        # A blocking write of one chunk (<= 64 KiB from the server) to local disk: cheaper than a thread hop.
        self.out.write(data)


class _RawReceiver(_Receiver):
    def __init__(self, headers: Mapping[str, str], max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.body_limit = max_bytes
        _, params = parse_options_header(headers.get("content-disposition", ""))
        self.filename = _param(params, b"filename")

    def feed(self, chunk: bytes) -> None:
        super().feed(chunk)
        self.write_file(chunk)

    def finish(self) -> None:
        if self.file_bytes == 0:
            raise UploadError("the request body is empty: send the raster as the body or a multipart 'file' field")


class _MultipartReceiver(_Receiver):
    def __init__(self, headers: Mapping[str, str], max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.body_limit = max_bytes + MULTIPART_OVERHEAD_BYTES
        _, params = parse_options_header(headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if not boundary:
            raise UploadError("multipart/form-data body without a boundary parameter in Content-Type")
        self.field_bytes = 0
        self.fields_seen: list[str] = []
        self.parts = 0
        self.found_file = False
        self.file_done = False
        self.ended = False
        self._in_file = False
        self._header_name = b""
        self._header_value = b""
        self._part_headers: dict[bytes, bytes] = {}
        try:
            self.parser = MultipartParser(
                boundary,
                callbacks={
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
            )
        except (FormParserError, ValueError) as exc:
            raise UploadError(f"bad multipart boundary: {exc}") from exc

    def feed(self, chunk: bytes) -> None:
        super().feed(chunk)
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise UploadError(f"malformed multipart body: {exc}") from exc

    def finish(self) -> None:
        try:
            self.parser.finalize()
        except FormParserError as exc:
            raise UploadError(f"malformed multipart body: {exc}") from exc
        if not self.found_file:
            seen = ", ".join(repr(f[:MAX_NAME_CHARS]) for f in self.fields_seen[:MAX_NAMES_SHOWN]) or "none"
            if len(self.fields_seen) > MAX_NAMES_SHOWN:
                seen += f" and {len(self.fields_seen) - MAX_NAMES_SHOWN} more"
            raise UploadError(f"multipart body has no {FILE_FIELD!r} field (fields received: {seen})")
        if not (self.file_done and self.ended):
            raise UploadError("multipart body ended before its closing boundary (truncated upload?)")
        if self.file_bytes == 0:
            raise UploadError(f"the multipart {FILE_FIELD!r} field is empty")

    # python-multipart callbacks: data callbacks get (buffer, start, end).
    def _on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_MULTIPART_PARTS:
            raise UploadError(f"multipart body has more than {MAX_MULTIPART_PARTS} parts")
        self._part_headers = {}
        self._in_file = False

    # Header lines and their number per part are bounded by python-multipart itself (max_header_size/count).
    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part_headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._part_headers.get(b"content-disposition", b""))
        name = _param(params, b"name")
        self.fields_seen.append(name or "")
        if name == FILE_FIELD and not self.found_file:
            self.found_file = True
            self._in_file = True
            self.filename = _param(params, b"filename")
        elif b"filename" in params and not self.found_file:
            # A file under another name is the raster sent wrong: say so before reading it, not at the end.
            raise UploadError(
                f"multipart body has no {FILE_FIELD!r} field but a file in field {(name or '')[:MAX_NAME_CHARS]!r}: "
                f'send the raster as {FILE_FIELD!r} (curl -F "{FILE_FIELD}=@scene.tif")'
            )

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.write_file(data[start:end])
            return
        self.field_bytes += end - start
        if self.field_bytes > MAX_FIELD_BYTES:
            raise RasterTooLargeError(f"multipart fields besides {FILE_FIELD!r} are over {MAX_FIELD_BYTES} bytes")

    def _on_part_end(self) -> None:
        if self._in_file:
            self.file_done = True
        self._in_file = False

    def _on_end(self) -> None:
        self.ended = True


def _param(params: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = params.get(name)
    return value.decode("utf-8", "replace") if value is not None else None
