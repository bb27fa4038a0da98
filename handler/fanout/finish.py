"""The end of a sharded job that asks for more than the ``.npy``: the COG from the shards' parts, then the
quicklook and the STAC Item, each written conditionally beside the input.

Each predict shard writes its rows as a GeoTIFF part (:func:`cog_part_writer`, a job object); the shard that
completes the ``.npy`` assembles the parts into one COG strip by strip (:func:`model.io.cog.assemble_cog`:
memory bounded by a strip, never the whole mask), reads the quicklook's colours from the input where it lies,
and writes the outputs in order, the Item last. A duplicate finisher finds outputs that already record this
upload and leaves them; a newer upload of the input stops it (its own event makes its own outputs).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from handler.fanout.jobs import Job, JobStore
from handler.objects import ObjectInfo
from handler.outputs import PlannedArray, identity, matches, output_metadata, write_output
from handler.products import COG_KIND, LOCAL_NAMES, MEDIA_TYPES, Published, describe_upload, relative_href
from handler.remote import remote_source, url_lifetime_s
from handler.runtime import Runtime
from model.card import ModelCard
from model.io.cog import RowRasterWriter, assemble_cog, cog_values
from model.io.quicklook import true_colour_bands, write_quicklook

log = logging.getLogger(__name__)


class _PartSink:
    """The predictor's sink for one band: its rows' scores as the COG stores them, into a GeoTIFF part."""

    def __init__(self, writer: RowRasterWriter, threshold: float, kind: str) -> None:
        self.writer, self.threshold, self.kind = writer, threshold, kind

    def write_rows(self, scores: np.ndarray, valid: np.ndarray | None) -> None:
        self.writer.write_values(cog_values(scores, valid, self.threshold, self.kind))


@contextlib.contextmanager
def cog_part_writer(
    path: Path,
    shape: tuple[int, int],
    output_mode: str,
    crs: str | None,
    transform: Sequence[float],
    card: ModelCard,
) -> Iterator[_PartSink]:
    """A band's GeoTIFF part of the COG at ``path``; complete only when the block exits cleanly."""
    kind = COG_KIND[output_mode]
    with RowRasterWriter(path, shape, kind, crs, transform) as writer:
        yield _PartSink(writer, card.threshold, kind)


def finish_products(runtime: Runtime, store: JobStore, job: Job) -> None:
    """Make and write the job's COG, quicklook and STAC Item (:attr:`Job.products`), the Item last."""
    storage, settings, model = runtime.storage, runtime.settings, runtime.model
    info = storage.locate(job.source.ref())  # replaced since the job began: ObjectMissingError, abandoned
    planned = PlannedArray(job.output_mode, job.shape, job.dtype, job.crs, job.transform)
    metadata = output_metadata(info, model.sha256, planned)
    expected = identity(info, model.sha256, job.output_mode)
    bucket, products = store.bucket, job.products
    with tempfile.TemporaryDirectory(prefix="rasterfn-finish-", dir=settings.tmp_dir) as workdir:
        work = Path(workdir)
        parts = [store.get_cog_part(i, work / f"part-{i}.tif") for i in range(job.shards)]
        files = {"cog": work / LOCAL_NAMES["cog"]}
        kind = COG_KIND[job.output_mode]
        assemble_cog(parts, files["cog"], job.shape, kind, job.crs, job.transform, tmp_dir=work)
        for part in parts:
            part.unlink()
        if "thumbnail" in products:
            files["thumbnail"] = work / LOCAL_NAMES["thumbnail"]
            with remote_source(storage, info, expires_s=url_lifetime_s(settings)) as src:
                write_quicklook(files["cog"], src, true_colour_bands(model.card), files["thumbnail"])
        item_key = products.get("stac", products.get("cog", job.target_key))
        published = _published_npy(runtime, store, job, item_key)
        for name, key in products.items():
            if name == "stac":
                continue
            _put(runtime, info, bucket, key, files[name], name, metadata, expected)
            published.append(Published(name, relative_href(item_key, key), files[name]))
        if "stac" in products:
            item = describe_upload(model, planned, info, bucket, item_key, published, work / LOCAL_NAMES["stac"])
            _put(runtime, info, bucket, products["stac"], item, "stac", metadata, expected)


def _published_npy(runtime: Runtime, store: JobStore, job: Job, item_key: str) -> list[Published]:
    """The assembled ``.npy`` as the Item lists it (its size from S3), when it is an output and not the job's own."""
    if job.target_key == store.array_key():
        return []
    found = runtime.storage.head(store.bucket, job.target_key)
    size = found.size if found is not None else None
    return [Published("npy", relative_href(item_key, job.target_key), None, size)]


def _put(
    runtime: Runtime,
    info: ObjectInfo,
    bucket: str,
    key: str,
    path: Path,
    kind: str,
    metadata: dict[str, str],
    expected: dict[str, str],
) -> None:
    """Write one output over what is there now, unless it already records this upload (a duplicate finisher)."""
    existing = runtime.storage.head(bucket, key)
    if existing is None or not matches(existing.metadata, expected):
        write_output(runtime.storage, info, bucket, key, path, MEDIA_TYPES[kind], metadata, existing)
