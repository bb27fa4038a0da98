"""What the function left in S3 for one input, seen from outside (``rasterfn replay`` and ``rasterfn demo``).

The function writes ``<stem>.npy`` and the other ``OUTPUTS`` (or, for a refused input, ``<stem>.error.json``)
under the output bucket and prefix; :func:`find_result` looks for them, :func:`validate_mask` checks a mask.

Example:
    >>> validate_mask(np.zeros((4, 5), np.float32), (4, 5)) is None
    True
    >>> validate_mask(np.full((4, 5), 0.3, np.float32), (4, 5))
    'values outside {0, 1} (e.g. 0.3)'
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from botocore.exceptions import ClientError
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from handler.objects import error_key, product_keys
from model.options import DEFAULT_OUTPUT_FORMATS

MASK_DTYPE = np.dtype("float32")
# S3's LastModified has one-second resolution: an output written in the same second as `since` counts.
_CLOCK_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class ObjectResult:
    """``status``: ``written`` (a .npy), ``rejected`` (an .error.json) or ``none`` (neither, or older)."""

    input_key: str
    status: str
    bucket: str
    key: str | None = None
    size: int | None = None
    detail: str = ""
    last_modified: datetime | None = None
    # every output found beside the first (the COG, quicklook and STAC Item): (key, size)
    others: tuple[tuple[str, int], ...] = ()


def find_result(
    s3: Any,
    bucket: str,
    key: str,
    *,
    output_bucket: str | None = None,
    output_prefix: str = "",
    since: datetime | None = None,
    formats: Sequence[str] = DEFAULT_OUTPUT_FORMATS,
    output_mode: str = "mask",
) -> ObjectResult:
    """The newest output (or error marker) for ``bucket/key``, ignoring ones older than ``since``.

    ``written`` needs every output ``formats`` names: its ``key`` is the first (the .npy, else the COG), the
    others are listed in ``others``; a job stopped halfway shows as ``none``.
    """
    out_bucket = output_bucket or bucket
    products = list(product_keys(key, formats, output_mode, output_prefix).values())
    for status, candidate in (
        ("written", products[0]),
        ("rejected", error_key(key, output_prefix)),
    ):
        head = _head(s3, out_bucket, candidate)
        if head is None:
            continue
        modified = head.get("LastModified")
        if since is not None and modified is not None and modified + _CLOCK_SLACK < since:
            continue
        detail = _marker_message(s3, out_bucket, candidate) if status == "rejected" else ""
        others = []
        for other in products[1:] if status == "written" else ():
            found = _head(s3, out_bucket, other)
            if found is None:
                return ObjectResult(input_key=key, status="none", bucket=out_bucket)
            others.append((other, int(found.get("ContentLength", 0))))
        return ObjectResult(
            input_key=key,
            status=status,
            bucket=out_bucket,
            key=candidate,
            size=int(head.get("ContentLength", 0)),
            detail=detail,
            last_modified=modified,
            others=tuple(others),
        )
    return ObjectResult(input_key=key, status="none", bucket=out_bucket)


def load_npy(data: bytes) -> np.ndarray:
    """A .npy from bytes; pickled object arrays are refused (ValueError), never unpickled."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def load_cog_mask(data: bytes) -> np.ndarray:
    """A class-mask COG from bytes as the ``.npy`` holds it: float32 0/1, nodata (invalid input) as 0."""
    try:
        with MemoryFile(data) as memfile, memfile.open() as ds:
            classes = ds.read(1, masked=True)
    except RasterioError as exc:
        raise ValueError(str(exc)) from exc
    return classes.filled(0).astype(MASK_DTYPE)


def validate_mask(array: np.ndarray, shape: tuple[int, int] | None) -> str | None:
    """Why ``array`` is not a valid mask of ``shape`` (float32, values in {0, 1}); ``None`` when it is."""
    if shape is not None and tuple(array.shape) != tuple(shape):
        return f"shape {array.shape} != raster {tuple(shape)}"
    if array.ndim != 2:
        return f"{array.ndim} dimensions, not 2"
    if array.dtype != MASK_DTYPE:
        return f"dtype {array.dtype}, not {MASK_DTYPE}"
    bad = array[(array != 0) & (array != 1)]
    if bad.size:
        return f"values outside {{0, 1}} (e.g. {bad.flat[0]:g})"
    return None


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _marker_message(s3: Any, bucket: str, key: str) -> str:
    try:
        doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (ClientError, ValueError) as exc:
        return f"(unreadable error marker: {exc})"
    return f"{doc.get('error', 'error')}: {doc.get('message', '')}" if isinstance(doc, dict) else str(doc)
