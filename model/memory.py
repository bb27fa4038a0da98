"""How much memory this process may use: the cgroup's limit where there is one, else the machine's RAM.

A container's limit (Kubernetes ``resources.limits.memory``, cgroup v2 ``memory.max`` or v1
``memory.limit_in_bytes``) is what the OOM killer enforces, whatever ``/proc/meminfo`` says of the node; a
Lambda function's ``MemTotal`` is about its configured memory. The smaller of the two is the limit.

Example:
    >>> parse_cgroup_memory("max\\n"), parse_cgroup_memory("1073741824\\n")
    (None, 1073741824)
    >>> parse_meminfo_total("MemTotal:        2048000 kB\\nMemFree: 1 kB\\n")
    2097152000
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V2_MEMORY_MAX = "memory.max"
CGROUP_V1_MEMORY_LIMIT = "memory/memory.limit_in_bytes"
MEMINFO = Path("/proc/meminfo")
FALLBACK_BYTES = 1024**3  # neither file readable (not Linux): assume a small machine
# cgroup v1 writes a huge page-rounded number for "no limit"; anything past this is none.
UNLIMITED_BYTES = 1 << 62


def parse_cgroup_memory(text: str) -> int | None:
    """Bytes allowed by a cgroup ``memory.max`` / ``memory.limit_in_bytes`` text, None for no limit."""
    text = text.strip()
    if not text.isdigit():
        return None  # "max", empty or unreadable
    value = int(text)
    return value if 0 < value < UNLIMITED_BYTES else None


def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal`` of a ``/proc/meminfo`` text, in bytes."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def memory_limit_bytes(root: Path = CGROUP_ROOT, meminfo: Path = MEMINFO) -> int:
    """The memory this process may use: the smaller of the cgroup's limit and the machine's total."""
    limits = [
        parse_cgroup_memory(_read(root / CGROUP_V2_MEMORY_MAX)),
        parse_cgroup_memory(_read(root / CGROUP_V1_MEMORY_LIMIT)),
        parse_meminfo_total(_read(meminfo)),
    ]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else FALLBACK_BYTES


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
