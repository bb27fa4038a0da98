"""Opening a GeoTIFF, checking its header against limits, and reading windows: rasterio stays in here.

Every rasterio/GDAL failure is translated to our error tree with a one-line message:
:class:`RasterReadError` (not a TIFF, empty, truncated, corrupt), :class:`RasterTooLargeError` (more pixels
than allowed, decided from the header before a single pixel is read) and :class:`RasterBandsError`.

Validity: a pixel is valid when every band the model reads is valid in the dataset's masks (nodata value,
internal mask band or alpha) and, for float data, finite. Invalid pixels are left out of the statistics and
are 0 in the output.

Example:
    >>> with open_raster("data/test-1.tif") as src:             # doctest: +SKIP
    ...     header = read_header(src, "data/test-1.tif")
    ...     check_header(header, bands=range(1, 11), max_pixels=150_000_000)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from model.cpus import available_cpus
from model.errors import RasterBandsError, RasterReadError, RasterTooLargeError

ALLOWED_DRIVER = "GTiff"  # also reads COGs and BigTIFFs
SUPPORTED_KINDS = "uif"  # unsigned, signed, float; no complex, no bool
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
# The block cache defaults to 5% of the host's RAM; every block is decoded at most twice here (stats pass,
# overlap rows), so a small cache keeps peak memory flat on big hosts and inside a Lambda's limit.
GDAL_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_NUM_THREADS": str(available_cpus()),  # ALL_CPUS would count the node, not the cgroup quota
    "GDAL_CACHEMAX": 128 * 1024**2,  # bytes
}


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

    @property
    def pixels(self) -> int:
        return self.width * self.height


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.DatasetReader]:
    """Open a local GeoTIFF for reading; anything else is a :class:`RasterReadError`."""
    path = Path(path)
    _sniff(path)
    with rasterio.Env(**GDAL_ENV):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                src = rasterio.open(path, driver=ALLOWED_DRIVER)
        except RasterioError as exc:
            raise RasterReadError(f"{path.name} is not a readable GeoTIFF: {_one_line(exc)}") from exc
        with src:
            yield src


def read_header(src: rasterio.DatasetReader, name: str | Path = "") -> RasterHeader:
    crs = None
    if src.crs is not None:
        epsg = src.crs.to_epsg()
        crs = f"EPSG:{epsg}" if epsg else src.crs.to_wkt()
    return RasterHeader(
        name=Path(name).name or Path(src.name).name,
        width=int(src.width),
        height=int(src.height),
        count=int(src.count),
        dtypes=tuple(src.dtypes),
        nodata=tuple(src.nodatavals),
        crs=crs,
        transform=tuple(src.transform)[:6],
        all_valid=all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums),
    )


def check_header(header: RasterHeader, bands: Sequence[int], max_pixels: int) -> None:
    """Refuse a raster from its header alone: too few bands, too many pixels, unsupported data type."""
    needed = max(bands)
    if header.count < needed:
        raise RasterBandsError(
            f"{header.name} has {header.count} band(s), but the model reads bands {list(bands)} "
            f"(needs at least {needed})"
        )
    if header.width < 1 or header.height < 1:
        raise RasterReadError(f"{header.name} has no pixels ({header.width} x {header.height})")
    if header.pixels > max_pixels:
        raise RasterTooLargeError(
            f"{header.name} is {header.width} x {header.height} = {header.pixels:,} pixels, "
            f"more than the limit of {max_pixels:,} (MAX_PIXELS)"
        )
    for band in bands:
        dtype = np.dtype(header.dtypes[band - 1])
        if dtype.kind not in SUPPORTED_KINDS:
            raise RasterReadError(f"{header.name} band {band} has unsupported data type {dtype}")
    if len({header.dtypes[b - 1] for b in bands}) > 1:
        raise RasterReadError(f"{header.name} mixes data types across the bands the model reads")


def read_window(
    src: rasterio.DatasetReader, bands: Sequence[int], window: Window, all_valid: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``bands`` in ``window`` -> (``(len(bands), h, w)`` array, validity ``(h, w)`` bool or None = all).

    A read failure mid-file (truncated or corrupt blocks) is a :class:`RasterReadError`.
    """
    try:
        data = src.read(list(bands), window=window)
        valid = None
        if not all_valid:
            masks = src.read_masks(list(bands), window=window)
            valid = np.logical_and.reduce(masks != 0, axis=0)
    except RasterioError as exc:
        raise RasterReadError(
            f"{Path(src.name).name} could not be read at rows {window.row_off}-"
            f"{window.row_off + window.height}: {_one_line(exc)} (truncated or corrupt file?)"
        ) from exc
    if data.dtype.kind == "f":
        finite = np.isfinite(data).all(axis=0)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    return data, valid


def _sniff(path: Path) -> None:
    """Name the problem for files that are clearly not TIFFs, before GDAL says something vaguer."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except FileNotFoundError as exc:
        raise RasterReadError(f"{path.name} does not exist") from exc
    except OSError as exc:
        raise RasterReadError(f"{path.name} cannot be read: {exc.strerror or exc}") from exc
    if not head:
        raise RasterReadError(f"{path.name} is empty (0 bytes)")
    if any(head.startswith(magic) for magic in TIFF_MAGICS):
        return
    what = next((kind for magic, kind in KNOWN_MAGICS.items() if head.startswith(magic)), None)
    raise RasterReadError(
        f"{path.name} is not a TIFF" + (f" (it is {what})" if what else f" (starts with {head[:4]!r})")
    )


def _one_line(exc: BaseException) -> str:
    """The most specific message of an exception chain, on one line."""
    messages = []
    while exc is not None:
        text = " ".join(str(exc).split())
        if text and "See previous exception" not in text:
            messages.append(text)
        exc = exc.__cause__ or exc.__context__
    return messages[-1] if messages else "unknown error"
