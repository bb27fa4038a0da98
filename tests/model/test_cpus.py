"""model/cpus.py: the thread count from the cgroup CPU quota (fake cgroup files in tmp_path) and the affinity."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from model import cpus
from model.cpus import (
    available_cpus,
    cpu_budget,
    cpus_from_quota,
    parse_cgroup_v1_quota,
    parse_cgroup_v2_cpu_max,
    read_cgroup_quota,
)

AFFINITY = 8


@pytest.fixture
def eight_cpu_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(AFFINITY)), raising=False)


def write_cpu_max(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text + "\n")
    return root


def write_v1_quota(root: Path, quota_us: str, period_us: str) -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota_us + "\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(period_us + "\n")
    return root


@pytest.mark.parametrize(
    ("cpu_max", "expected_threads"),
    [
        ("150000 100000", 2),  # 1.5 CPUs: rounded up
        ("200000 100000", 2),  # 2 CPUs
        ("max 100000", AFFINITY),  # unlimited: the affinity
        ("50000 100000", 1),  # half a CPU: still one thread
        ("1600000 100000", AFFINITY),  # a quota above the affinity: the affinity
    ],
)
def test_threads_follow_a_cgroup_v2_cpu_max(tmp_path, eight_cpu_affinity, cpu_max, expected_threads):
    root = write_cpu_max(tmp_path, cpu_max)

    assert available_cpus(root) == expected_threads


def test_budget_says_where_the_figure_came_from(tmp_path, eight_cpu_affinity):
    budget = cpu_budget(write_cpu_max(tmp_path, "150000 100000"))

    assert (budget.cpus, budget.affinity, budget.quota) == (2, AFFINITY, 1.5)
    assert budget.describe() == "2 CPU(s) (affinity 8, cgroup quota 1.50 CPUs)"
    assert "no cgroup quota" in cpu_budget(write_cpu_max(tmp_path, "max 100000")).describe()


@pytest.mark.parametrize(
    ("quota_us", "period_us", "expected_threads"),
    [("150000", "100000", 2), ("200000", "100000", 2), ("-1", "100000", AFFINITY)],
)
def test_threads_follow_a_cgroup_v1_cfs_quota(tmp_path, eight_cpu_affinity, quota_us, period_us, expected_threads):
    root = write_v1_quota(tmp_path, quota_us, period_us)

    assert available_cpus(root) == expected_threads


def test_no_cgroup_files_means_the_affinity(tmp_path, eight_cpu_affinity):
    assert read_cgroup_quota(tmp_path) is None
    assert available_cpus(tmp_path) == AFFINITY


def test_v2_wins_over_v1_when_both_are_present(tmp_path, eight_cpu_affinity):
    write_v1_quota(tmp_path, "400000", "100000")
    write_cpu_max(tmp_path, "100000 100000")

    assert available_cpus(tmp_path) == 1


@pytest.mark.parametrize("text", ["", "garbage", "max", "abc 100000", "100000 0", "1 2 3"])
def test_unreadable_cpu_max_means_no_quota(text):
    assert parse_cgroup_v2_cpu_max(text) is None


def test_v1_parser_and_rounding():
    assert parse_cgroup_v1_quota("250000\n", "100000\n") == 2.5
    assert parse_cgroup_v1_quota("-1", "100000") is None
    assert cpus_from_quota(2.5, affinity=64) == 3
    assert cpus_from_quota(None, affinity=0) == 1  # never zero threads


def test_predictor_sets_torch_threads_from_the_budget(monkeypatch, tmp_path, eight_cpu_affinity):
    # GIVEN a 1.5-CPU quota on an 8-CPU affinity, and a predictor that has not set its threads yet
    import torch

    from model.network.engines import base, torch_engine

    root = write_cpu_max(tmp_path, "150000 100000")
    monkeypatch.setattr(base, "available_cpus", lambda: cpus.available_cpus(root))
    monkeypatch.setattr(torch_engine, "_threads_set", False)
    monkeypatch.setattr(torch_engine, "_prepared", {})  # keyed by id(net): keep this fake out of the real cache
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    model = SimpleNamespace(net=torch.nn.Identity())

    # WHEN the first runner is prepared
    torch_engine.get_runner(model, "cpu", "fp32", channels_last=False)

    # THEN torch gets two threads, not eight
    assert calls == [2]
