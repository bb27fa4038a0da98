"""The HTTP adapter's error table: our error tree -> status, title and the rejected-inputs metric's reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.responses import JSONResponse

from handler.errors import (
    BusyError,
    CancelledError,
    DeadlineError,
    EventError,
    ForbiddenObjectError,
    MediaTypeError,
    TransientError,
    UploadError,
    UploadTimeoutError,
    WorkerCrashedError,
)
from model.errors import ConfigError, InputError, RasterTooLargeError


@dataclass(frozen=True)
class ErrorMapping:
    status: int
    error: str
    reason: str  # label of the rejected-inputs metric ("" = not a rejected input)


def map_error(exc: BaseException) -> ErrorMapping:
    """The HTTP status, error title and metric reason for one of our errors (pure; most specific first)."""
    table: Sequence[tuple[type[BaseException], ErrorMapping]] = (
        (MediaTypeError, ErrorMapping(415, "unsupported media type", "bad_media_type")),
        (UploadTimeoutError, ErrorMapping(408, "request timeout", "slow_upload")),
        (UploadError, ErrorMapping(400, "bad request", "no_file")),
        (ForbiddenObjectError, ErrorMapping(403, "forbidden", "forbidden_bucket")),
        (EventError, ErrorMapping(400, "bad event", "bad_event")),
        (RasterTooLargeError, ErrorMapping(413, "too large", "too_large")),
        (DeadlineError, ErrorMapping(504, "timed out", "timeout")),
        (WorkerCrashedError, ErrorMapping(422, "unreadable raster", "crashed")),
        (InputError, ErrorMapping(422, "unreadable raster", "bad_raster")),
        (CancelledError, ErrorMapping(499, "client disconnected", "")),
        (BusyError, ErrorMapping(503, "busy", "busy")),
        (TransientError, ErrorMapping(503, "temporarily unavailable", "")),
        (ConfigError, ErrorMapping(500, "misconfigured", "")),
    )
    for kind, mapping in table:
        if isinstance(exc, kind):
            return mapping
    return ErrorMapping(500, "internal error", "")


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)
