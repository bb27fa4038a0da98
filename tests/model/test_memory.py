"""The memory limit: the cgroup's where there is one, else the machine's RAM."""

from __future__ import annotations

import pytest

from model.memory import FALLBACK_BYTES, memory_limit_bytes, parse_cgroup_memory, parse_meminfo_total

MEMINFO = "MemTotal:        4096000 kB\nMemFree:         1000 kB\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max\n", None), ("536870912\n", 536870912), ("", None), ("9223372036854771712\n", None), ("0", None)],
)
def test_parse_cgroup_memory(text, expected):
    assert parse_cgroup_memory(text) == expected


def test_parse_meminfo_total():
    assert parse_meminfo_total(MEMINFO) == 4096000 * 1024
    assert parse_meminfo_total("MemFree: 3 kB\n") is None


@pytest.mark.parametrize("v2", [True, False])
def test_the_cgroup_limit_wins_when_smaller(tmp_path, v2):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    limit = tmp_path / ("memory.max" if v2 else "memory/memory.limit_in_bytes")
    limit.parent.mkdir(exist_ok=True)
    limit.write_text("1073741824\n")
    assert memory_limit_bytes(tmp_path, meminfo) == 1024**3
    limit.write_text("max\n" if v2 else "9223372036854771712\n")  # no limit: the machine's RAM
    assert memory_limit_bytes(tmp_path, meminfo) == 4096000 * 1024


def test_nothing_readable_is_a_small_machine(tmp_path):
    assert memory_limit_bytes(tmp_path, tmp_path / "absent") == FALLBACK_BYTES
