"""Threads per step: the process's cores (cgroup quota included), split between the steps running at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoft import threads


def test_cgroup_v2_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == pytest.approx(2.0)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    assert threads.cgroup_cpu_limit(tmp_path / "nowhere") is None


def test_available_cpus_is_the_smaller_of_affinity_and_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert threads.available_cpus(tmp_path) == 8
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # 2.5 cores: 3 threads keep the quota busy
    assert threads.available_cpus(tmp_path) == 3
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert threads.available_cpus(tmp_path) == 1


def test_step_threads_split_the_cores_only_where_steps_share_a_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cpus", lambda root=threads.CGROUP_ROOT: 8)
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.delenv(threads.PARALLEL_TASKS_ENV, raising=False)
    # A cluster: each step (a loop iteration too) has its pod's cores.
    assert threads.step_threads(4) == 8 and threads.step_threads(None) == 8
    # kfp.local runs two iterations at once: they split the cores; a step outside a loop has them all.
    monkeypatch.setenv(threads.PARALLEL_TASKS_ENV, "2")
    assert threads.step_threads(4) == 4 and threads.step_threads(None) == 4
    assert threads.step_threads(1) == 8 and threads.step_threads() == 8
    monkeypatch.setattr(threads, "available_cpus", lambda root=threads.CGROUP_ROOT: 2)
    assert threads.step_threads(2) == 1
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.step_threads(2) == 3
    monkeypatch.setenv(threads.THREADS_ENV, "0")
    with pytest.raises(ValueError, match="AUTOFT_THREADS"):
        threads.step_threads()


def test_configure_threads_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    previous = torch.get_num_threads()
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    try:
        assert threads.configure_threads(2) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
