"""Opening a TIFF, checking its header against limits, and reading windows: rasterio stays in here.

Every rasterio/GDAL failure becomes one of our errors with a one-line message that says what is wrong, what
was expected and what to do (:mod:`model.io.gdal_messages` translates the library's text, which only reaches the
debug log): :class:`RasterReadError` (not a TIFF, empty, truncated, corrupt, unsupported codec),
:class:`RasterTooLargeError` (too many pixels, bands or decoded bytes per block, decided from the header
before a single pixel is read, see :mod:`model.io.decode_limits`) and :class:`RasterBandsError`.

:func:`open_checked` opens a file single-threaded, checks its header, and only then reopens it with
multi-threaded decoding and a block cache sized for its layout: no hostile header reaches GDAL's
multi-threaded reader.

Validity: a pixel is valid when every band the model reads is valid in the dataset's masks (nodata value,
internal mask band or alpha) and, for float data, finite (with or without a nodata tag). Invalid pixels are
left out of the statistics and are 0 in the output.

Example:
    >>> with open_checked("data/test-1.tif", bands=range(1, 11), max_pixels=150_000_000) as (src, header):
    ...     data, valid = read_window(src, range(1, 11), Window(0, 0, 512, 64), header.all_valid)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from model.cpus import available_cpus
from model.errors import RasterBandsError, RasterReadError, RasterTooLargeError, RemoteReadError
from model.io.decode_limits import BlockLayout, DecodeLimits, cache_bytes, check_layout, read_layout
from model.io.gdal_messages import explain_open_error, explain_read_error, library_text
from model.io.refusals import EXPECTED_RASTER, REEXPORT, UPLOAD_AGAIN, refusal
from model.io.remote import SIGNATURE_BYTES, VSICURL, RemoteRaster, is_http_failure

CONVERT_SAMPLES = "Convert it to bands of measurements: `gdal_translate -ot Float32 in.tif out.tif`"
ALLOWED_DRIVER = "GTiff"  # also reads COGs and BigTIFFs
# Every sample type rasterio reports for a GDAL band (GDAL's name in brackets), decided here and nowhere else:
# None reads it, a text says why not. Integers and reals are reflectances or counts; complex samples (a SAR
# SLC product's phase and amplitude) are no input to a network trained on reflectances. A type missing here
# (a future GDAL's) is refused too: see :func:`sample_type_problem`.
SAMPLE_TYPES: dict[str, str | None] = {
    "uint8": None,  # Byte
    "int8": None,  # Int8
    "uint16": None,  # UInt16
    "int16": None,  # Int16
    "uint32": None,  # UInt32
    "int32": None,  # Int32
    "uint64": None,  # UInt64
    "int64": None,  # Int64
    "float32": None,  # Float32 (and Float16, which GDAL widens to it)
    "float64": None,  # Float64
    "complex_int16": "complex-valued samples (CInt16, as in a SAR SLC product)",
    "complex64": "complex-valued samples (CInt32 or CFloat32, as in a SAR SLC product)",
    "complex128": "complex-valued samples (CFloat64)",
}
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
KNOWN_MAGICS = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"PK\x03\x04": "a ZIP archive",
    b"\x93NUMPY": "a .npy array",
    b"%PDF": "a PDF document",
}
# No sidecar lookups (.aux.xml, .ovr, .msk): only the uploaded bytes count, and listing a directory is slow.
# The block cache defaults to 5% of the host's RAM; every block is decoded about once here (whole blocks in the
# stats pass, a cache holding one row of blocks, see decode_limits.cache_bytes), so a small cache keeps peak
# memory flat on big hosts and inside a Lambda's limit. Single-threaded until the header has been checked.
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_NUM_THREADS": "1",
    "GDAL_CACHEMAX": 128 * 1024**2,  # bytes
}
log = logging.getLogger("model.gdal")
READ_THREADS = str(available_cpus())  # ALL_CPUS would count the node, not the cgroup quota
_HTTP_STATUS = re.compile(r"HTTP (?:response|error) code:? ?\d+|response_code=\d+", re.I)
# What reading an opened header's attributes can raise: rasterio's errors, GDAL's own (CPLE_*, not rasterio's
# base class: colorinterp raised one on a directory whose entry count was cut), and a CRS or value rasterio
# cannot convert.
HEADER_LIBRARY_ERRORS = (RasterioError, CPLE_BaseError, ValueError, KeyError, OverflowError)
RasterSource = str | Path | RemoteRaster  # what the readers open: a local path, or a raster read over HTTP


@dataclass(frozen=True)
class RasterHeader:
    """What the file's header says, read without touching pixel data."""

    name: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    crs: str | None
    transform: tuple[float, ...]
    all_valid: bool  # no band has a mask or nodata value: masks need not be read
    layout: BlockLayout
    sample_bits: tuple[int | None, ...] = ()  # per band: NBITS when narrower than the type (1, 12), else None
    paletted: tuple[bool, ...] = ()  # per band: colour-table indices

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def may_have_invalid(self) -> bool:
        """Whether any pixel can be invalid: a mask or nodata value, or float data (NaN and +-inf)."""
        return not self.all_valid or any(dtype.startswith("float") for dtype in self.dtypes)


@contextlib.contextmanager
def open_raster(source: RasterSource, **gdal_options: object) -> Iterator[rasterio.DatasetReader]:
    """Open a TIFF single-threaded (to read its header); anything else is a :class:`RasterReadError`.

    ``source`` is a local path, or a :class:`~model.io.remote.RemoteRaster` read over HTTP range requests (a
    fetch that fails is a :class:`~model.errors.RemoteReadError`, not a verdict on the file).
    """
    if isinstance(source, RemoteRaster):
        check_signature(source.name, source.head)
        path, name, env = source.gdal_path, source.name, {**GDAL_ENV, **gdal_options, **source.gdal_options()}
    else:
        path = Path(source)
        _sniff(path)
        name, env = path.name, {**GDAL_ENV, **gdal_options}
    with rasterio.Env(**env):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                src = rasterio.open(path, driver=ALLOWED_DRIVER)
        except RasterioError as exc:
            if isinstance(source, RemoteRaster):
                _raise_if_fetch_failed(name, exc)
                # GDAL's text names the presigned URL: only its redacted form (the debug log) may outlive this.
                raise explain_open_error(name, exc) from None
            raise explain_open_error(name, exc) from exc
        with src:
            yield src


def inspect(path: RasterSource, bands: Sequence[int], max_pixels: int, limits: DecodeLimits) -> RasterHeader:
    """The whole pre-pixel path: signature, header, sample types, layout and decode cost; no block decoded.

    Raises only our :class:`~model.errors.InputError` refusals for what the file says (the fuzz target,
    tests/model/io/test_header_fuzz.py, holds it to that), or :class:`RemoteReadError` for a failed fetch.
    """
    with open_raster(path) as src:
        header = read_header(src, path)
    check_header(header, bands, max_pixels)
    check_layout(header.layout, limits, header.name)
    return header


@contextlib.contextmanager
def open_checked(
    path: RasterSource, bands: Sequence[int], max_pixels: int, limits: DecodeLimits | None = None
) -> Iterator[tuple[rasterio.DatasetReader, RasterHeader]]:
    """Check the header (:func:`inspect`), then open for reading.

    Yields ``(dataset, header)``; the dataset decodes with all CPUs and a block cache sized for its layout.
    """
    header = inspect(path, bands, max_pixels, limits or DecodeLimits())
    cache = cache_bytes(header.layout, len(set(bands)))
    with open_raster(path, GDAL_NUM_THREADS=READ_THREADS, GDAL_CACHEMAX=cache) as src:
        yield src, header


def read_header(src: rasterio.DatasetReader, name: RasterSource = "") -> RasterHeader:
    """The header of an open dataset; ``name`` is what it was opened from (the name messages use, and the
    size of a :class:`~model.io.remote.RemoteRaster`, which the caller knows and GDAL does not tell)."""
    if isinstance(name, RemoteRaster):
        shown, file_bytes = name.name, name.size
    else:
        shown, file_bytes = Path(name).name or _dataset_name(src), Path(src.name).stat().st_size
    try:
        return RasterHeader(
            name=shown,
            width=int(src.width),
            height=int(src.height),
            count=int(src.count),
            dtypes=tuple(src.dtypes),
            nodata=tuple(src.nodatavals),
            crs=_crs_text(src),
            transform=tuple(src.transform)[:6],
            all_valid=all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums),
            layout=read_layout(src, file_bytes),
            sample_bits=tuple(_sample_bits(src, band) for band in src.indexes),
            paletted=tuple(ci == ColorInterp.palette for ci in src.colorinterp),
        )
    except HEADER_LIBRARY_ERRORS as exc:
        # GDAL opened the file but one of its tags cannot be read (a CRS, a mask, a band's metadata): the header
        # is corrupt, whichever attribute asked first. Never a crash, never the library's words.
        if isinstance(name, RemoteRaster):
            raise explain_open_error(shown, exc) from None
        raise explain_open_error(shown, exc) from exc


def check_header(header: RasterHeader, bands: Sequence[int], max_pixels: int) -> None:
    """Refuse a raster from its header alone: too few bands, too many pixels, unsupported data type."""
    needed = max(bands)
    if header.count < needed:
        raise RasterBandsError(
            refusal(
                header.name,
                f"it has {header.count} band{'s' if header.count != 1 else ''}",
                f"a multispectral stack of at least {needed} bands, in the model card's band order "
                f"(the model reads bands {_band_list(bands)})",
                "Export the scene with all its bands in that order, e.g. "
                "`gdal_merge.py -separate -o stack.tif B01.tif B02.tif ...`",
            )
        )
    if header.width < 1 or header.height < 1:
        raise RasterReadError(
            refusal(header.name, f"it has no pixels ({header.width} x {header.height})", EXPECTED_RASTER, REEXPORT)
        )
    if header.pixels > max_pixels:
        raise RasterTooLargeError(
            refusal(
                header.name,
                f"it is {header.width} x {header.height} = {header.pixels:,} pixels, more than the limit of "
                f"{max_pixels:,} (MAX_PIXELS)",
                f"{EXPECTED_RASTER} of at most {max_pixels:,} pixels",
                "Cut it into smaller scenes, e.g. `gdal_translate -srcwin 0 0 10000 10000 in.tif part.tif`",
            )
        )
    expected_types = f"{EXPECTED_RASTER} of integer or real (float) samples, the same type in every band"
    for band in bands:
        if (problem := sample_type_problem(header, band)) is not None:
            raise RasterReadError(
                refusal(header.name, f"its band {band} holds {problem}", expected_types, CONVERT_SAMPLES)
            )
    if len({header.dtypes[b - 1] for b in bands}) > 1:
        problem = "it mixes data types across the bands the model reads"
        raise RasterReadError(refusal(header.name, problem, expected_types, CONVERT_SAMPLES))


def sample_type_problem(header: RasterHeader, band: int) -> str | None:
    """Why band ``band``'s samples are not read (a phrase), or None; pure, and decided for every type.

    >>> header = RasterHeader("a.tif", 1, 1, 1, ("complex_int16",), (None,), None, (), True, None, (16,), (False,))
    >>> sample_type_problem(header, 1)
    'complex-valued samples (CInt16, as in a SAR SLC product)'
    """
    dtype = header.dtypes[band - 1]
    if dtype not in SAMPLE_TYPES:
        return f"samples of a type this function does not read ({str(dtype)[:40]})"
    if (problem := SAMPLE_TYPES[dtype]) is not None:
        return problem
    if header.sample_bits[band - 1] == 1:
        return "1-bit (bilevel) samples, a black-and-white image rather than measurements"
    if header.paletted[band - 1]:
        return "palette indices (a colour-mapped image), not measurements"
    return None


def read_window(
    src: rasterio.DatasetReader, bands: Sequence[int], window: Window, all_valid: bool, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``bands`` in ``window`` -> (``(len(bands), h, w)`` array, validity ``(h, w)`` bool or None = all).

    ``out``: an array of that shape and the bands' type to read into (a buffer reused window after window).

    A read failure mid-file (truncated or corrupt blocks) is a :class:`RasterReadError`.
    """
    try:
        data = src.read(list(bands), window=window, out=out)
        valid = None
        if not all_valid:
            masks = src.read_masks(list(bands), window=window)
            valid = np.logical_and.reduce(masks != 0, axis=0)
    except RasterioError as exc:
        first = int(window.row_off)
        name = _dataset_name(src)
        if src.name.startswith(VSICURL):
            _raise_if_fetch_failed(name, exc)
            raise explain_read_error(name, exc, first, first + int(window.height)) from None  # no URL in a chain
        raise explain_read_error(name, exc, first, first + int(window.height)) from exc
    if data.dtype.kind == "f":
        finite = np.isfinite(data).all(axis=0)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    return data, valid


def _sniff(path: Path) -> None:
    """Name the problem for files that are clearly not TIFFs, before GDAL says something vaguer."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SIGNATURE_BYTES)
    except FileNotFoundError as exc:
        raise RasterReadError(refusal(path.name, "it does not exist", EXPECTED_RASTER, "Check the name")) from exc
    except OSError as exc:
        problem = f"it cannot be opened ({exc.strerror or type(exc).__name__})"
        raise RasterReadError(refusal(path.name, problem, EXPECTED_RASTER, "Check its permissions")) from exc
    check_signature(path.name, head)


def check_signature(name: str, head: bytes) -> None:
    """Refuse what is clearly not a TIFF from its first bytes, naming what it is where it can (pure).

    >>> check_signature("a.tif", b"\\x89PNG\\r\\n\\x1a\\n")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    model.errors.RasterReadError: a.tif: it is a PNG image, not a TIFF; ...
    """
    if not head:
        raise RasterReadError(refusal(name, "it is empty (0 bytes)", EXPECTED_RASTER, UPLOAD_AGAIN))
    if any(head.startswith(magic) for magic in TIFF_MAGICS):
        return
    what = next((kind for magic, kind in KNOWN_MAGICS.items() if head.startswith(magic)), None)
    problem = f"it is {what}, not a TIFF" if what else "it is not a TIFF (it does not start with a TIFF signature)"
    raise RasterReadError(
        refusal(name, problem, EXPECTED_RASTER, "Convert it: `gdal_translate -of GTiff in.xxx out.tif`")
    )


def _raise_if_fetch_failed(name: str, exc: RasterioError) -> None:
    """A remote read that failed because a request failed (HTTP status, connection) -> :class:`RemoteReadError`."""
    text = library_text(exc)
    if is_http_failure(text):
        status = _HTTP_STATUS.search(text)
        log.debug("GDAL could not fetch %s: %s", name, text)
        raise RemoteReadError(f"{name}: a ranged read failed ({status.group(0) if status else 'connection'})") from None


def _crs_text(src: rasterio.DatasetReader) -> str | None:
    if src.crs is None:
        return None
    epsg = src.crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else src.crs.to_wkt()


def _sample_bits(src: rasterio.DatasetReader, band: int) -> int | None:
    """NBITS when a band's samples are narrower than their type (1-bit, 12-bit), else None."""
    nbits = src.tags(band, ns="IMAGE_STRUCTURE").get("NBITS")
    return int(nbits) if nbits is not None and nbits.isdigit() else None


def _dataset_name(src: rasterio.DatasetReader) -> str:
    """The file name a dataset's messages use: a remote one's is the URL path's last part, never the URL."""
    if src.name.startswith(VSICURL):
        return unquote(PurePosixPath(urlsplit(src.name[len(VSICURL) :]).path).name)
    return Path(src.name).name


def _band_list(bands: Sequence[int]) -> str:
    """``[1, 2, 3, 4]`` -> ``"1-4"``; anything else listed as it is, in order."""
    bands = list(bands)
    if bands == list(range(bands[0], bands[0] + len(bands))) and len(bands) > 2:
        return f"{bands[0]}-{bands[-1]}"
    return ", ".join(str(b) for b in bands)
