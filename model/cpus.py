"""How many CPUs this process may really use: the affinity mask, capped by the cgroup CPU quota.

A Kubernetes CPU limit (and Lambda's vCPU share) is a CFS *quota*, not an affinity: ``sched_getaffinity``
still lists every core of the node, so torch would start one thread per node core and spend the quota in a
few milliseconds of each period, then stall until the next. The quota, in CPUs, is ``quota / period`` from
cgroup v2's ``cpu.max`` (``"150000 100000"``, or ``"max 100000"`` for none) or cgroup v1's
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (``-1`` for none).

A fractional quota is rounded *up*: 1.5 CPUs gives 2 threads. CFS throttles the whole cgroup at once, so
the one extra thread costs a short pause per period but never a straggler, while rounding down would leave
a third of a 1.5-CPU quota unused. The result is at least 1 and never more than the affinity allows.

Example:
    >>> parse_cgroup_v2_cpu_max("150000 100000"), parse_cgroup_v2_cpu_max("max 100000")
    (1.5, None)
    >>> cpus_from_quota(1.5, affinity=64), cpus_from_quota(None, affinity=8), cpus_from_quota(0.2, affinity=8)
    (2, 8, 1)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V2_CPU_MAX = "cpu.max"
CGROUP_V1_QUOTA = "cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "cpu/cpu.cfs_period_us"


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs a process may use and where the figure came from (logged at start)."""

    cpus: int
    affinity: int
    quota: float | None  # CPUs allowed by the cgroup quota; None: no quota

    def describe(self) -> str:
        """``"2 CPU(s) (affinity 64, cgroup quota 1.50 CPUs)"``: one line for the start-up log."""
        quota = f"cgroup quota {self.quota:.2f} CPUs" if self.quota is not None else "no cgroup quota"
        return f"{self.cpus} CPU(s) (affinity {self.affinity}, {quota})"


def parse_cgroup_v2_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line, ``None`` when unlimited (``max``) or unreadable."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def parse_cgroup_v1_quota(quota_us: str, period_us: str) -> float | None:
    """CPUs allowed by cgroup v1's ``cfs_quota_us`` / ``cfs_period_us``, ``None`` when unlimited (``-1``)."""
    return _ratio(quota_us.strip(), period_us.strip())


def cpus_from_quota(quota: float | None, affinity: int) -> int:
    """The thread count for a quota in CPUs (rounded up, see the module docstring) within the affinity."""
    affinity = max(1, affinity)
    if quota is None:
        return affinity
    return max(1, min(affinity, math.ceil(quota)))


def read_cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process' cgroup (v2 first, then v1), ``None`` if there is none or no cgroup fs."""
    v2 = root / CGROUP_V2_CPU_MAX
    if v2.is_file():
        return parse_cgroup_v2_cpu_max(_read(v2))
    quota, period = root / CGROUP_V1_QUOTA, root / CGROUP_V1_PERIOD
    if quota.is_file() and period.is_file():
        return parse_cgroup_v1_quota(_read(quota), _read(period))
    return None


def cpu_budget(root: Path = CGROUP_ROOT) -> CpuBudget:
    """The CPUs this process may use: the affinity mask, capped by the cgroup quota under ``root``."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = read_cgroup_quota(root)
    return CpuBudget(cpus=cpus_from_quota(quota, affinity), affinity=affinity, quota=quota)


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """How many threads CPU-bound work should use here (at least 1)."""
    return cpu_budget(root).cpus


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None  # a format this parser does not know: no cap rather than a crash at start-up
    if q <= 0 or p <= 0:
        return None  # cgroup v1 writes -1 for "no quota"
    return q / p


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
