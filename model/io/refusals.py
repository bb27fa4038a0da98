"""The one shape of every refusal message: what is wrong, what was expected, what to do; one line.

Every message starts with the file's name, once (the service layer swaps our temp name for the user's key
with :meth:`model.errors.InputError.renamed`), and holds no library text and no path of ours: the CLI, the
HTTP 422/413 body and ``.error.json`` all carry exactly this text.

Example:
    >>> refusal("a.tif", "it is a PNG image, not a TIFF", EXPECTED_RASTER, "convert it with `gdal_translate`")
    'a.tif: it is a PNG image, not a TIFF; expected a TIFF or GeoTIFF raster. Convert it with `gdal_translate`.'
"""

from __future__ import annotations

EXPECTED_RASTER = "a TIFF or GeoTIFF raster"
EXPECTED_BLOCKS = "a tiled TIFF (e.g. 256 or 512 pixel tiles) or one with strips of a few rows"
REEXPORT = "Re-export it, e.g. `gdal_translate -of GTiff -co TILED=YES -co COMPRESS=DEFLATE in.tif out.tif`"
RETILE = "Re-tile it: `gdal_translate -co TILED=YES -co COMPRESS=DEFLATE in.tif out.tif`"
UPLOAD_AGAIN = "Upload the complete file again, or re-export it with `gdal_translate -of GTiff in.tif out.tif`"


def refusal(name: str, problem: str, expected: str, action: str) -> str:
    """``"<name>: <problem>; expected <expected>. <Action>."`` on one line."""
    text = f"{name}: {problem}; expected {expected}. {action[:1].upper()}{action[1:]}"
    text = text if text.endswith(".") else text + "."
    return " ".join(text.split())
