"""A sharded job's progress from its objects alone: shards done / total per phase, ETA, failure (pure core).

Example:
    >>> describe(JobStatus("ab12", shards=4, stats_done=4, parts_done=1, elapsed=30.0))
    'job ab12: 4 shards; stats 4/4, parts 1/4; running, ETA ~18 s'
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from handler.fanout.jobs import JobStore
from handler.storage import Storage


@dataclass(frozen=True)
class JobStatus:
    job: str
    shards: int
    stats_done: int
    parts_done: int
    elapsed: float
    done: bool = False
    failure: str | None = None
    output: str | None = None

    @property
    def eta_seconds(self) -> float | None:
        """Linear in the work units done so far (a stats shard and a part count one each)."""
        units = self.stats_done + self.parts_done
        total = 2 * self.shards
        if self.done or self.failure or units == 0:
            return None
        return self.elapsed * (total - units) / units


def describe(status: JobStatus) -> str:
    head = f"job {status.job}: {status.shards} shards; stats {status.stats_done}/{status.shards}, "
    head += f"parts {status.parts_done}/{status.shards}; "
    if status.failure:
        return head + f"FAILED: {status.failure}"
    if status.done:
        return head + f"done: {status.output}"
    eta = status.eta_seconds
    return head + ("running, ETA unknown" if eta is None else f"running, ETA ~{eta:.0f} s")


def find_job_status(storage: Storage, output_bucket: str, bucket: str, key: str) -> JobStatus | None:
    """The status of the latest job of input ``bucket/key`` (state in ``output_bucket``), or None."""
    store = JobStore.latest(storage, output_bucket, bucket, key)
    job = None if store is None else store.read_job()
    if store is None or job is None:
        return None
    failed, done = store.failure(), store.completion()
    return JobStatus(
        job=store.job,
        shards=job.shards,
        stats_done=store.histograms_done(),
        parts_done=store.parts_done(),
        elapsed=(done.time if done else time.time()) - job.created,
        done=done is not None,
        failure=None if failed is None else f"{failed.error}: {failed.message}",
        output=None if done is None else done.output,
    )
