"""What decoding a TIFF will cost, decided from its header before any pixel is read, and the limits on it.

A hostile header can make GDAL allocate gigabytes for one block (a 2**31-pixel tile aborts the process with
``std::bad_alloc``), decode one 720 MB strip again for every tile row, or describe a 12240 x 12240 image in
5 kB of sparse blocks that costs a quarter of an hour of inference. :func:`check_layout` refuses, in this
order:

1. more bands than ``max_bands`` (every band is an object in GDAL and a mask to check);
2. a compression outside ``compressions`` (every codec is native code reachable from an upload);
3. a block (tile or strip) larger than the image it belongs to (beyond :data:`MIN_BLOCK_SIDE`): a corrupt or
   crafted header, so a :class:`RasterReadError`; the cost limits below are :class:`RasterTooLargeError`;
4. a block that decodes to more than ``max_block_bytes`` (all bands, for pixel-interleaved files: GDAL
   decodes them together);
5. more than ``max_compression_ratio`` decoded bytes per stored byte, above :data:`SPARSE_PIXEL_ALLOWANCE`
   pixels. DEFLATE cannot exceed about 1032:1 on any data, and imagery compresses 1.5-5:1 (a scene mostly of
   nodata perhaps 100:1): a ratio beyond 1000:1 means absent (sparse) or constant blocks, whose inference
   costs as much as a real scene's. Small files like that are still processed.

The defaults cover real multispectral GeoTIFFs (Sentinel-2 and Landsat COGs, GDAL's own strips, hyperspectral
stacks of a few hundred bands). LERC, JPEG, WebP, LZMA and JPEG-XL are not in the default list: no
multispectral product we read uses them (LERC is Esri's codec for elevation and imagery, lossy by design,
and the largest C++ decoder in the list), and each is more native code for an anonymous upload to reach.
``ALLOWED_COMPRESSIONS`` turns any of them on.

Example:
    >>> layout = BlockLayout(1024, 1024, 10, 2, block_height=6000, block_width=1024, pixel_interleaved=True,
    ...                      compression="DEFLATE", file_bytes=700_000)
    >>> check_layout(layout, DecodeLimits(), "a.tif")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    model.errors.RasterReadError: a.tif: its header declares strips 6,000 rows high, larger than the image ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.errors import RasterReadError, RasterTooLargeError
from model.io.refusals import EXPECTED_BLOCKS, EXPECTED_RASTER, RETILE, refusal

DEFAULT_MAX_BLOCK_BYTES = 32 * 1024**2
DEFAULT_MAX_BANDS = 512  # EnMAP has 224 bands, PRISMA 239, AVIRIS-NG 425
DEFAULT_COMPRESSIONS = ("NONE", "LZW", "DEFLATE", "ZSTD", "PACKBITS")
# GDAL's names (the COMPRESSION item of the IMAGE_STRUCTURE metadata): what ALLOWED_COMPRESSIONS may list.
KNOWN_COMPRESSIONS = (
    *DEFAULT_COMPRESSIONS,
    "JPEG", "WEBP", "LERC", "LERC_DEFLATE", "LERC_ZSTD", "LZMA", "JXL",
    "CCITTRLE", "CCITTFAX3", "CCITTFAX4",
)  # fmt: skip
DEFAULT_MAX_COMPRESSION_RATIO = 1000
SPARSE_PIXEL_ALLOWANCE = 4096 * 4096  # ~80 tiles, about a minute on 2 cores: cheap enough to just do
MIN_BLOCK_SIDE = 1024  # a 100 x 100 image in 256 or 512 pixel tiles is normal; 1024 leaves room
# GDAL's block cache: large enough for one row of blocks of what is read (tall strips are then decoded once),
# never more than the ceiling, so `rasterfn predict` stays under 1.2 GB (beyond it, tall strips are decoded
# more than once: slower, never larger).
CACHE_FLOOR_BYTES = 128 * 1024**2
CACHE_CEILING_BYTES = 384 * 1024**2  # 12 bands of 32 MiB strips; measured peak RSS < 1.2 GB


@dataclass(frozen=True)
class DecodeLimits:
    """How much decoding one upload may ask for; see the module docstring."""

    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    max_bands: int = DEFAULT_MAX_BANDS
    compressions: tuple[str, ...] = DEFAULT_COMPRESSIONS
    max_compression_ratio: int = DEFAULT_MAX_COMPRESSION_RATIO


@dataclass(frozen=True)
class BlockLayout:
    """How a TIFF stores its pixels, from its header: sizes, blocks, interleaving, codec, stored bytes."""

    width: int
    height: int
    count: int
    itemsize: int  # bytes per sample, the widest band's
    block_height: int
    block_width: int
    pixel_interleaved: bool  # all bands in each block (GDAL decodes them together)
    compression: str  # GDAL's name, "NONE" when uncompressed
    file_bytes: int

    @property
    def is_striped(self) -> bool:
        return self.block_width == self.width  # GDAL reports a strip as a block as wide as the image

    @property
    def block_bytes(self) -> int:
        """Decoded bytes of one block: all bands' when pixel-interleaved."""
        bands = self.count if self.pixel_interleaved else 1
        return self.block_width * self.block_height * self.itemsize * bands

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.count * self.itemsize

    def block_row_bytes(self, bands_read: int) -> int:
        """Decoded bytes of one full-width row of blocks, for the blocks reading ``bands_read`` bands touches."""
        blocks_across = math.ceil(self.width / self.block_width)
        planes = 1 if self.pixel_interleaved else min(bands_read, self.count)
        return blocks_across * planes * self.block_bytes


def read_layout(src, file_bytes: int) -> BlockLayout:
    """The :class:`BlockLayout` of an open rasterio dataset (header only: no block is decoded)."""
    structure = src.tags(ns="IMAGE_STRUCTURE")
    block_height, block_width = src.block_shapes[0]
    itemsize = max((_itemsize(dtype) for dtype in src.dtypes), default=1)
    return BlockLayout(
        width=int(src.width),
        height=int(src.height),
        count=int(src.count),
        itemsize=itemsize,
        block_height=int(block_height),
        block_width=int(block_width),
        pixel_interleaved=src.count > 1 and structure.get("INTERLEAVE", "PIXEL").upper() == "PIXEL",
        compression=structure.get("COMPRESSION", "NONE").upper(),
        file_bytes=int(file_bytes),
    )


def check_layout(layout: BlockLayout, limits: DecodeLimits, name: str) -> None:
    """Refuse a layout whose decoding would cost more than ``limits`` allow; see the module docstring."""
    if layout.count > limits.max_bands:
        raise RasterTooLargeError(
            refusal(
                name,
                f"it has {layout.count:,} bands, more than the limit of {limits.max_bands:,} (MAX_BANDS)",
                f"{EXPECTED_RASTER} holding the bands the model reads",
                "Keep only the bands you need: `gdal_translate -b 1 -b 2 ... in.tif out.tif`",
            )
        )
    if layout.compression not in limits.compressions:
        allowed = ", ".join(limits.compressions)
        raise RasterReadError(
            refusal(
                name,
                f"it is compressed with {layout.compression}, which this function does not decode",
                f"{EXPECTED_RASTER} compressed with one of {allowed} (ALLOWED_COMPRESSIONS)",
                "Re-compress it: `gdal_translate -co COMPRESS=DEFLATE -co TILED=YES in.tif out.tif`",
            )
        )
    _check_block_sides(layout, name)
    if layout.block_bytes > limits.max_block_bytes:
        shape = f"{layout.block_width} x {layout.block_height} pixels"
        bands = f" x {layout.count} bands" if layout.pixel_interleaved else ""
        raise RasterTooLargeError(
            refusal(
                name,
                f"each of its blocks (tiles or strips, {shape}{bands}) decodes to {_mib(layout.block_bytes)}, "
                f"more than the limit of "
                f"{_mib(limits.max_block_bytes)} (MAX_BLOCK_BYTES)",
                EXPECTED_BLOCKS,
                RETILE.replace("TILED=YES", "TILED=YES -co INTERLEAVE=BAND") if bands else RETILE,
            )
        )
    pixels = layout.width * layout.height
    ratio = layout.decoded_bytes / max(1, layout.file_bytes)
    if ratio > limits.max_compression_ratio and pixels > SPARSE_PIXEL_ALLOWANCE:
        raise RasterTooLargeError(
            refusal(
                name,
                f"its header declares {layout.width} x {layout.height} pixels x {layout.count} bands "
                f"({_mib(layout.decoded_bytes)}) in a file of {layout.file_bytes:,} bytes, a ratio of "
                f"{ratio:,.0f}:1, more than {limits.max_compression_ratio:,}:1 (MAX_COMPRESSION_RATIO): "
                "its blocks are absent or constant",
                f"{EXPECTED_RASTER} whose blocks hold image data (files this empty are processed up to "
                f"{SPARSE_PIXEL_ALLOWANCE:,} pixels)",
                "Crop it to the area that has data: `gdal_translate -projwin ... in.tif out.tif`",
            )
        )


def cache_bytes(layout: BlockLayout, bands_read: int) -> int:
    """GDAL_CACHEMAX for reading ``bands_read`` bands: one row of blocks, within the floor and ceiling."""
    return min(CACHE_CEILING_BYTES, max(CACHE_FLOOR_BYTES, layout.block_row_bytes(bands_read)))


def stat_windows(height: int, width: int, block: tuple[int, int], pixels: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(col, row, width, height)`` covering the image, each about ``pixels`` pixels per band.

    Whole rows of blocks where they fit (each block decoded once); a wide image is cut into columns of
    whole blocks; a strip taller than the budget is read a few rows at a time (the block cache holds it, see
    :func:`cache_bytes`). Memory per window stays near ``pixels`` whatever the layout.

    >>> stat_windows(1000, 100, (256, 100), 30_000)[:2]
    [(0, 0, 100, 256), (0, 256, 100, 256)]
    >>> stat_windows(100, 1000, (100, 1000), 30_000)[:2]
    [(0, 0, 1000, 30), (0, 30, 1000, 30)]
    """
    block_h, block_w = max(1, block[0]), max(1, block[1])
    if block_h * width <= pixels:
        rows, cols = max(1, pixels // width // block_h) * block_h, width
    elif block_w < width:
        rows, cols = block_h, max(1, pixels // block_h // block_w) * block_w
    else:
        rows, cols = max(1, pixels // width), width
    return [
        (left, top, min(cols, width - left), min(rows, height - top))
        for top in range(0, height, rows)
        for left in range(0, width, cols)
    ]


def _check_block_sides(layout: BlockLayout, name: str) -> None:
    # A block larger than its image is no exporter's choice: a corrupt or crafted header (RasterReadError).
    for side, size, block in (("wide", layout.width, layout.block_width), ("high", layout.height, layout.block_height)):
        if block > max(_round_up(size, 16), MIN_BLOCK_SIDE):
            what = "strips" if layout.is_striped else "tiles"
            unit = "columns" if side == "wide" else "rows"
            raise RasterReadError(
                refusal(
                    name,
                    f"its header declares {what} {block:,} {unit} {side}, larger than the image ({size:,} {unit}): "
                    "a corrupt or crafted file",
                    EXPECTED_BLOCKS,
                    RETILE,
                )
            )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.0f} MiB" if size >= 1024**2 else f"{size:,} bytes"


def _itemsize(dtype: str) -> int:
    # Any type GDAL reports, complex ones included (numpy has no complex_int16): the raster module refuses
    # the types it does not read; the cost of what it would decode is still known. Unknown: the widest.
    return _ITEMSIZES.get(dtype, max(_ITEMSIZES.values()))


_ITEMSIZES = {
    "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4, "float32": 4,
    "uint64": 8, "int64": 8, "float64": 8, "complex_int16": 4, "complex64": 8, "complex128": 16,
}  # fmt: skip
