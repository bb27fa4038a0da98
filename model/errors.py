"""The project's one error tree.

It lives in ``model`` because ``model`` is the bottom layer: ``handler`` imports from here, never the reverse.

- :class:`InputError`: the user must fix something (a broken raster, an unsupported event). Never retried.
- :class:`TransientError`: worth retrying (S3 throttled, a network blip). Event sources retry, then dead-letter.
- :class:`ConfigError`: the deployment is wrong (bad setting, bad model card). Fails at start-up.
"""


class RasterfnError(Exception):
    """Base of every error this project raises on purpose."""


class InputError(RasterfnError):
    """The input cannot be processed as given; retrying will not help."""


class RasterReadError(InputError):
    """The file is not a raster rasterio can read (empty, truncated, not a TIFF)."""


class RasterTooLargeError(InputError):
    """The raster or object exceeds a configured size limit."""


class RasterBandsError(InputError):
    """The raster has fewer bands than the model card needs."""


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


class ConfigError(RasterfnError):
    """A setting, model card or checkpoint is invalid; the process cannot start."""


class CheckpointError(ConfigError):
    """A checkpoint file is refused (not a state dict, wrong keys, wrong checksum, unsafe pickle)."""


class TransientError(RasterfnError):
    """A temporary failure; the caller should retry."""


class BusyError(TransientError):
    """Every inference slot and wait-queue place is taken; the caller should retry after a short wait."""
