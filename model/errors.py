"""The inference core's errors, and the root every rasterfn error derives from.

``model`` is the bottom layer: the service layer (``handler``) adds its own errors in ``handler/errors.py``,
all under :class:`RasterfnError`, so a caller can still catch everything of ours in one clause.

- :class:`InputError`: the user must fix something (a broken raster, too few bands). Never retried.
- :class:`ConfigError`: the deployment is wrong (bad setting, bad model card). Fails at start-up.
- :class:`RemoteReadError`: a raster read over HTTP could not be fetched; says nothing about the file.
"""

from __future__ import annotations


class RasterfnError(Exception):
    """Base of every error this project raises on purpose."""


class InputError(RasterfnError):
    """The input cannot be processed as given; retrying will not help."""

    def renamed(self, temp_name: str, shown_name: str) -> InputError:
        """The same error naming ``shown_name`` where it named our ``temp_name`` (the user's name for the file).

        >>> str(RasterReadError("/tmp/x/input.tif: truncated").renamed("/tmp/x/input.tif", "a/b.tif"))
        'a/b.tif: truncated'
        """
        renamed = type(self)(*(a.replace(temp_name, shown_name) if isinstance(a, str) else a for a in self.args))
        renamed.__cause__ = self.__cause__
        return renamed


class RasterReadError(InputError):
    """The file is not a raster rasterio can read (empty, truncated, not a TIFF)."""


class RasterTooLargeError(InputError):
    """The raster or object exceeds a configured size limit."""


class RasterBandsError(InputError):
    """The raster has fewer bands than the model card needs."""


class RemoteReadError(RasterfnError):
    """A remote raster's bytes could not be fetched (HTTP status, connection): the caller decides what it means."""


class ConfigError(RasterfnError):
    """A setting, model card or checkpoint is invalid; the process cannot start."""


class CheckpointError(ConfigError):
    """A checkpoint file is refused (not a state dict, wrong keys, wrong checksum, unsafe pickle)."""
