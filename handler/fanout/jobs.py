"""A fan-out job's state: typed records, and the store that owns every job object's name.

Small objects under ``<JOB_PREFIX><job id>/`` in the output bucket; no database: S3's conditional writes
(``If-None-Match: *``) decide every race and everything else is idempotent, so at-least-once delivery is
safe. Lifecycle rules (infra/terraform/fanout.tf) expire job objects and abort incomplete uploads after days.

- ``job.json`` (conditional): the :class:`Job`; of two coordinators, the loser adopts the winner's job.
- ``stats-sent.json`` / ``predict-sent.json``: a phase's messages are sent; a re-delivery sends none.
- ``stats/<i>.npz``: band ``i``'s histograms; ``p90s.json`` (conditional): their reduction.
- ``parts/<i>.json``: band ``i``'s part is uploaded (its ETag); ``cog-parts/<i>.tif``: its rows as a GeoTIFF
  part of the COG, when the job makes one (``OUTPUTS`` cog or stac); ``array.npy``: the assembled ``.npy`` of a
  job whose ``OUTPUTS`` leave it out (the COG is made beside it).
- ``read-retried/<phase>-<i>.json`` (conditional): band ``i``'s rows failed to read once.
- ``failed.json`` (conditional): the first input error; ``done.json``: the ``.npy`` is complete.
- ``by-key-<hash>/latest.json``: the latest job of an input key (``rasterfn status``).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handler.errors import ObjectMissingError
from handler.objects import JOB_PREFIX, ObjectInfo, ObjectRef
from handler.storage import JSON_CONTENT_TYPE, OUTPUT_CONTENT_TYPE, Storage, s3_uri
from model.predictor.shards import RowBand

_JOB = "job.json"
_STATS_SENT = "stats-sent.json"
_PREDICT_SENT = "predict-sent.json"
_P90S = "p90s.json"
_FAILED = "failed.json"
_DONE = "done.json"
_LATEST = "latest.json"
_STATS = "stats"
_PARTS = "parts"
_COG_PARTS = "cog-parts"
_ARRAY = "array.npy"
_READ_RETRIED = "read-retried"

Histograms = list[tuple[str, np.ndarray]]


def job_id(info: ObjectInfo, model_sha256: str, output: str, formats: tuple[str, ...] = ("npy",)) -> str:
    """The job's id: the same upload, model, output mode and outputs always give the same job (pure)."""
    # The .npy alone keeps the ids jobs had before OUTPUTS existed.
    wanted = [] if formats == ("npy",) else [",".join(formats)]
    identity = "\n".join([info.bucket, info.key, info.etag, info.version_id or "", model_sha256, output, *wanted])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def pointer_name(bucket: str, key: str) -> str:
    """Where the latest job of input ``bucket/key`` is recorded (``<JOB_PREFIX><this>/latest.json``) (pure)."""
    return "by-key-" + hashlib.sha256(f"{bucket}\n{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SourceVersion:
    """The exact upload a job reads."""

    bucket: str
    key: str
    etag: str
    version_id: str | None

    @classmethod
    def of(cls, info: ObjectInfo) -> SourceVersion:
        return cls(info.bucket, info.key, info.etag, info.version_id)

    def ref(self) -> ObjectRef:
        return ObjectRef(self.bucket, self.key, etag=self.etag, version_id=self.version_id)


@dataclass(frozen=True)
class Job:
    """The plan a coordinator records (``job.json``): what to read, where the ``.npy`` goes, the bands."""

    source: SourceVersion
    source_size: int
    source_dtype: str
    target_key: str
    marker_key: str
    upload_id: str
    dtype: str
    shape: tuple[int, int]
    bands: tuple[RowBand, ...]
    estimated_seconds: float
    created: float
    # The outputs made once the .npy is assembled (kind -> key: cog, thumbnail, stac), and what they need.
    products: dict[str, str] = field(default_factory=dict)
    output_mode: str = "mask"
    crs: str | None = None
    transform: tuple[float, ...] = ()

    @property
    def shards(self) -> int:
        return len(self.bands)

    @property
    def makes_cog(self) -> bool:
        """Whether shards write COG parts: the COG is asked for, or the quicklook of the STAC Item needs it."""
        return bool(self.products)

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["shape"], doc["bands"] = list(self.shape), [asdict(band) for band in self.bands]
        doc["transform"] = list(self.transform)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Job:
        height, width = doc["shape"]
        return cls(
            source=SourceVersion(**doc["source"]),
            source_size=doc["source_size"],
            source_dtype=doc["source_dtype"],
            target_key=doc["target_key"],
            marker_key=doc["marker_key"],
            upload_id=doc["upload_id"],
            dtype=doc["dtype"],
            shape=(height, width),
            bands=tuple(RowBand(**band) for band in doc["bands"]),
            estimated_seconds=doc["estimated_seconds"],
            created=doc["created"],
            products=dict(doc.get("products", {})),
            output_mode=doc.get("output_mode", "mask"),
            crs=doc.get("crs"),
            transform=tuple(doc.get("transform", ())),
        )


@dataclass(frozen=True)
class Failure:
    """The input error that ended a job (``failed.json``)."""

    error: str
    message: str


@dataclass(frozen=True)
class Completion:
    """A finished job (``done.json``): when, and the ``.npy``'s URI."""

    time: float
    output: str


@dataclass(frozen=True)
class JobStore:
    """One job's objects in ``bucket``; the only code that knows their names."""

    storage: Storage
    bucket: str
    job: str

    # --- the plan

    def read_job(self) -> Job | None:
        doc = self._get_json(_JOB)
        return None if doc is None else Job.from_doc(doc)

    def create_job(self, job: Job) -> bool:
        """Record ``job`` unless another coordinator was first; then point the input's key at it."""
        if not self._put_json(_JOB, job.to_doc(), if_absent=True):
            return False
        pointer = JobStore(self.storage, self.bucket, pointer_name(job.source.bucket, job.source.key))
        pointer._put_json(_LATEST, {"job": self.job, "created": job.created})
        return True

    @classmethod
    def latest(cls, storage: Storage, bucket: str, input_bucket: str, input_key: str) -> JobStore | None:
        """The store of the latest job of input ``input_bucket/input_key`` (state in ``bucket``), or None."""
        pointer = cls(storage, bucket, pointer_name(input_bucket, input_key))._get_json(_LATEST)
        return None if pointer is None else cls(storage, bucket, pointer["job"])

    def uri(self) -> str:
        return s3_uri(self.bucket, self._key(_JOB))

    # --- the phases' messages

    def stats_sent(self) -> bool:
        return self._exists(_STATS_SENT)

    def mark_stats_sent(self) -> None:
        self._put_json(_STATS_SENT, {"time": time.time()})

    def predict_sent(self) -> bool:
        return self._exists(_PREDICT_SENT)

    def mark_predict_sent(self) -> None:
        self._put_json(_PREDICT_SENT, {"time": time.time()})

    # --- statistics

    def has_histograms(self, index: int) -> bool:
        return self._exists(f"{_STATS}/{index}.npz")

    def put_histograms(self, index: int, histograms: Histograms) -> None:
        out = io.BytesIO()
        modes = np.array([mode for mode, _ in histograms])
        np.savez_compressed(out, modes=modes, **{f"b{i}": counts for i, (_, counts) in enumerate(histograms)})
        self._put(f"{_STATS}/{index}.npz", out.getvalue(), OUTPUT_CONTENT_TYPE)

    def get_histograms(self, index: int) -> Histograms:
        name = f"{_STATS}/{index}.npz"
        body = self.storage.get_bytes(self.bucket, self._key(name))
        if body is None:
            raise FileNotFoundError(self._key(name))
        with np.load(io.BytesIO(body), allow_pickle=False) as data:
            return [(str(mode), data[f"b{i}"]) for i, mode in enumerate(data["modes"])]

    def histograms_done(self) -> int:
        return self._count(_STATS)

    def put_p90s(self, p90s: list[float]) -> None:
        self._put_json(_P90S, {"p90s": p90s}, if_absent=True)

    def p90s(self) -> list[float]:
        return self._get_json(_P90S)["p90s"]

    # --- parts

    def has_part(self, index: int) -> bool:
        return self._exists(f"{_PARTS}/{index}.json")

    def record_part(self, index: int, etag: str) -> None:
        self._put_json(f"{_PARTS}/{index}.json", {"etag": etag, "time": time.time()})

    def part_etags(self, count: int) -> list[str]:
        return [self._get_json(f"{_PARTS}/{i}.json")["etag"] for i in range(count)]

    def parts_done(self) -> int:
        return self._count(_PARTS)

    def put_cog_part(self, index: int, path: Path) -> None:
        self.storage.upload_file(path, self.bucket, self._key(f"{_COG_PARTS}/{index}.tif"), metadata={})

    def get_cog_part(self, index: int, dst: Path) -> Path:
        """Band ``index``'s COG part, written to ``dst``."""
        body = self.storage.get_bytes(self.bucket, self._key(f"{_COG_PARTS}/{index}.tif"))
        if body is None:
            raise ObjectMissingError(f"{self.uri()}: the COG part of band {index} is gone (expired?)")
        dst.write_bytes(body)
        return dst

    def array_key(self) -> str:
        """Where the ``.npy`` is assembled when ``OUTPUTS`` leaves it out (the job's own object)."""
        return self._key(_ARRAY)

    # --- retries and the end

    def mark_read_retried(self, phase: str, index: int, error: str) -> bool:
        """Record a band's first unreadable read; False when one was recorded before (conditional put)."""
        return self._put_json(f"{_READ_RETRIED}/{phase}-{index}.json", {"error": error}, if_absent=True)

    def record_failure(self, failure: Failure) -> bool:
        """Record the job's first failure; False when it had failed already."""
        return self._put_json(_FAILED, asdict(failure), if_absent=True)

    def failure(self) -> Failure | None:
        doc = self._get_json(_FAILED)
        return None if doc is None else Failure(**doc)

    def is_failed(self) -> bool:
        return self._exists(_FAILED)

    def record_done(self, output: str) -> None:
        self._put_json(_DONE, asdict(Completion(time.time(), output)))

    def completion(self) -> Completion | None:
        doc = self._get_json(_DONE)
        return None if doc is None else Completion(**doc)

    def is_done(self) -> bool:
        return self._exists(_DONE)

    # --- S3

    def _key(self, name: str) -> str:
        return f"{JOB_PREFIX}{self.job}/{name}"

    def _exists(self, name: str) -> bool:
        return self.storage.head(self.bucket, self._key(name)) is not None

    def _count(self, folder: str) -> int:
        return self.storage.count(self.bucket, self._key(folder + "/"))

    def _get_json(self, name: str) -> Any | None:
        body = self.storage.get_bytes(self.bucket, self._key(name))
        return None if body is None else json.loads(body)

    def _put_json(self, name: str, doc: Any, *, if_absent: bool = False) -> bool:
        body = json.dumps(doc, sort_keys=True).encode()
        return self._put(name, body, JSON_CONTENT_TYPE, if_absent=if_absent)

    def _put(self, name: str, body: bytes, content_type: str, *, if_absent: bool = False) -> bool:
        return self.storage.put_bytes(
            self.bucket, self._key(name), body, content_type=content_type, if_absent=if_absent
        )
