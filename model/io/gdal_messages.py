"""GDAL, libtiff and PROJ speak to the log, never to the user: one translation point and one log route.

- :func:`explain_open_error` / :func:`explain_read_error` turn a rasterio/GDAL exception into our
  :class:`RasterReadError` whose message says, in the user's terms, what is wrong, what was expected and
  what to do (:func:`model.io.refusals.refusal`). The library's own text (with its build paths and source lines)
  goes to the ``model.gdal`` logger at debug level only.
- :func:`prepare_gdal` (run by ``model/__init__.py``, so before anything of ours imports rasterio) routes
  rasterio's loggers, which carry GDAL's CPL error handler output (libtiff and PROJ warnings included), into
  ``model.gdal`` at debug level, and sets PROJ's own variables: ``PROJ_DATA`` to the data rasterio's wheels
  ship (``rasterio/proj_data``) unless ``PROJ_DATA`` or ``PROJ_LIB`` already say where it is (libgeotiff
  looks angular units up in a PROJ context of its own, which GDAL's search path does not reach: it printed
  ``Cannot find proj.db``), and ``PROJ_DEBUG=0``, which stops PROJ's own logger: it writes straight to the
  process's stderr. PROJ reads ``PROJ_DEBUG`` once, when its first context is made (importing rasterio
  does that), hence the early call; PROJ errors that matter come back through GDAL anyway.

Example:
    >>> str(explain_open_error("a.tif", Exception("TIFFReadDirectory:Incorrect count for \\"ImageWidth\\"")))[:48]
    'a.tif: its TIFF directory (the header) is corrup'
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from model.errors import RasterReadError
from model.io.refusals import EXPECTED_RASTER, REEXPORT, UPLOAD_AGAIN, refusal
from model.io.remote import redact

log = logging.getLogger("model.gdal")

LIBRARY_LOGGERS = ("rasterio",)  # rasterio._env's CPL error handler logs under rasterio.*
COMMON_CODECS = "a common codec (DEFLATE, LZW or ZSTD)"

_MISSING_CODEC = re.compile(r"missing codec(?: of code)? ?([\w.-]+)", re.IGNORECASE)
_IMPOSSIBLE = re.compile(
    r"cannot allocate|out of memory|integer overflow|too large|zero tile size|cannot handle zero|"
    r"bad value 0|memory allocation",
    re.IGNORECASE,
)
_CORRUPT_DIRECTORY = re.compile(r"TIFFReadDirectory|TIFFFetch|incorrect count|IFD|directory", re.IGNORECASE)
_NOT_RECOGNISED = re.compile(r"not recognized as|not a TIFF|does not start with|cannot read TIFF header", re.I)


def explain_open_error(name: str, exc: BaseException) -> RasterReadError:
    """Our error for a dataset GDAL could not open (its header is unreadable)."""
    text = library_text(exc)
    log.debug("GDAL could not open %s: %s", name, text)
    if match := _MISSING_CODEC.search(text):
        problem = f"it is compressed with a codec this function does not have ({match.group(1).rstrip('.')})"
        return RasterReadError(
            refusal(
                name,
                problem,
                f"{EXPECTED_RASTER} compressed with {COMMON_CODECS}",
                "Re-compress it: `gdal_translate -co COMPRESS=DEFLATE -co TILED=YES in.tif out.tif`",
            )
        )
    if _IMPOSSIBLE.search(text):
        problem = "its TIFF header declares sizes no real image has (a corrupt or crafted file)"
    elif _NOT_RECOGNISED.search(text):
        problem = "it starts like a TIFF but is not one GDAL can read"
    elif _CORRUPT_DIRECTORY.search(text):
        problem = "its TIFF directory (the header) is corrupt"
    else:
        problem = "its TIFF header cannot be read (a corrupt file)"
    return RasterReadError(refusal(name, problem, EXPECTED_RASTER, REEXPORT))


def explain_read_error(name: str, exc: BaseException, first_row: int, last_row: int) -> RasterReadError:
    """Our error for pixel data GDAL could not decode between ``first_row`` and ``last_row``."""
    text = library_text(exc)
    log.debug("GDAL could not read %s rows %d-%d: %s", name, first_row, last_row, text)
    if _IMPOSSIBLE.search(text):
        problem = f"its pixel data at rows {first_row}-{last_row} is corrupt (it declares impossible sizes)"
    else:
        problem = f"its pixel data is truncated or corrupt (rows {first_row}-{last_row} cannot be decoded)"
    return RasterReadError(refusal(name, problem, f"{EXPECTED_RASTER}, complete", UPLOAD_AGAIN))


def library_text(exc: BaseException | None) -> str:
    """The messages of an exception chain, most specific last, on one line (for the debug log only)."""
    messages = []
    while exc is not None:
        text = " ".join(str(exc).split())
        if text and "See previous exception" not in text:
            messages.append(text)
        exc = exc.__cause__ or exc.__context__
    return redact(" <- ".join(reversed(messages))) or "unknown error"  # a presigned URL's signature never logged


class _ToDebugLog(logging.Handler):
    """Re-logs a library's records on ``model.gdal`` at debug level (they are never the user's business)."""

    def emit(self, record: logging.LogRecord) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s: %s", record.name, record.levelname, redact(record.getMessage()))


@cache
def prepare_gdal() -> None:
    """Route GDAL/PROJ diagnostics into our log and make PROJ find its data; once per process."""
    handler = _ToDebugLog()
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.addHandler(handler)
        library.propagate = False  # Python's last-resort handler would print warnings on stderr
    sys.unraisablehook, sys.excepthook = _dropping_undecodable_messages(sys.unraisablehook, sys.excepthook)
    # PROJ's variables, not ours (handler/settings.py reads ours): set only where nobody else has.
    proj_data = packaged_proj_data()
    if proj_data is not None and "PROJ_DATA" not in os.environ and "PROJ_LIB" not in os.environ:
        os.environ["PROJ_DATA"] = str(proj_data)
    os.environ.setdefault("PROJ_DEBUG", "0")


def _dropping_undecodable_messages(unraisable_hook: Callable, except_hook: Callable) -> tuple[Callable, Callable]:
    """``sys.unraisablehook`` and ``sys.excepthook`` without rasterio's failures to decode a GDAL message that
    is not UTF-8.

    rasterio's error handler turns GDAL's message into text in a C callback; a message quoting a file's bytes
    (a corrupt tag value) fails there, and Cython prints the UnicodeDecodeError (through ``sys.excepthook``,
    with no traceback) and a traceback (through ``sys.unraisablehook``) on stderr, after the CLI's one line.
    The fuzz target found it. It says nothing about the file (GDAL carries on): debug log only. Anything else,
    and any UnicodeDecodeError with a traceback of its own, goes to the previous hooks.
    """

    def unraisable(info: Any) -> object:
        if isinstance(info.exc_value, UnicodeDecodeError) and "rasterio" in str(info.object):
            log.debug("a GDAL message that is not UTF-8 was dropped (%s)", info.exc_value)
            return None
        return unraisable_hook(info)

    def uncaught(kind: type[BaseException], value: BaseException, traceback: Any) -> object:
        if issubclass(kind, UnicodeDecodeError) and traceback is None:  # Cython's print, not an uncaught error
            return None
        return except_hook(kind, value, traceback)

    return unraisable, uncaught


def packaged_proj_data() -> Path | None:
    """``rasterio/proj_data`` when rasterio's wheel ships PROJ's data (a source build uses the system's).

    Found without importing rasterio, which would create PROJ's first context too early.
    """
    spec = importlib.util.find_spec("rasterio")
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "proj_data"
        if (folder / "proj.db").is_file():
            return folder
    return None
