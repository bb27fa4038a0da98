"""The service layer's errors: events, uploads, S3 and admission. All derive from ``model.errors.RasterfnError``.

- :class:`EventError`, :class:`UploadError`: the caller sent something we cannot use. Never retried.
- :class:`DeadlineError`, :class:`WorkerCrashedError`: this input took too long or crashed its process;
  an input error (``<stem>.error.json``), since a retry would do the same.
- :class:`ObjectMissingError`: the object an event names is gone. Skipped, not retried.
- :class:`TransientError`: worth retrying (S3 throttled, a network blip, no free slot). Event sources retry,
  then dead-letter.
"""

from __future__ import annotations

from model.errors import InputError, RasterfnError


class EventError(InputError):
    """An event has a shape this function does not understand."""


class UploadError(InputError):
    """An HTTP upload carries no raster or is malformed (no ``file`` field, broken multipart body)."""


class MediaTypeError(UploadError):
    """An HTTP upload has a Content-Type this function does not accept."""


class ObjectMissingError(RasterfnError):
    """The object an event names is gone: deleted, or replaced by a newer upload since. Skipped, not retried.

    Not an :class:`InputError`: the user did nothing wrong and there is nothing to write an error marker
    beside; the newer upload, if any, has its own event.
    """


class TransientError(RasterfnError):
    """A temporary failure; the caller should retry."""


class BusyError(TransientError):
    """Every inference slot and wait-queue place is taken; the caller should retry after a short wait."""


class ForbiddenObjectError(EventError):
    """An event names a bucket or prefix outside ``ALLOWED_BUCKETS``; refused before any S3 call."""


class UploadTimeoutError(UploadError):
    """An upload sent no bytes for ``UPLOAD_READ_TIMEOUT_S`` seconds."""


class DeadlineError(InputError):
    """Processing one input did not finish within ``INFERENCE_TIMEOUT_S``; a retry would take as long."""


class WorkerCrashedError(InputError):
    """The process running one input died (a crash in native code: GDAL, torch); the input is refused."""


class CancelledError(TransientError):
    """The request was abandoned (the client went away) and its inference stopped between tiles."""
