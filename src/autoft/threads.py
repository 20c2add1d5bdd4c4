"""How many CPU threads a step's torch may use: the cores this process has, shared by the steps running at once.

A pod on a cluster has its own cores (its CPU limit, seen through cgroups); steps that share one machine
(kfp.local runs loop iterations two at a time) must split its cores, or two processes each running as
many threads as there are cores thrash: two search workers with 2 torch threads each on 2 cores ran 8x
fewer trials per minute than with 1 thread each (docs/performance.md).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# An explicit thread count for a step's torch (the local runner or a user sets it); wins over the estimate.
THREADS_ENV = "AUTOFT_THREADS"
# How many steps may run at once on this machine in a parallel loop (kfp.local's runner sets it; unset on
# a cluster, where each pod has its own cores).
PARALLEL_TASKS_ENV = "AUTOFT_PARALLEL_TASKS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 CFS quota), None when unlimited."""
    candidates = [(root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, _, period = quota_file.read_text().strip().partition(" ")
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except OSError:
            continue
        if quota in ("max", "-1") or not period:
            return None
        try:
            return max(float(quota) / float(period), 0.0) or None
        except ValueError:
            return None
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The cores this process may run on: its CPU affinity, capped by its container's CPU quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def _positive_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"${name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"${name} must be a positive integer, got {value!r}")
    return number


def step_threads(parallel: int | None = 1) -> int:
    """Threads for one step: ``$AUTOFT_THREADS`` if set, else this process's cores divided by the steps
    running at once: ``parallel`` (None: as many as the runner starts at once), capped by
    ``$AUTOFT_PARALLEL_TASKS``; when that is unset (a cluster, where a parallel step has its own pod) 1."""
    explicit = _positive_int(THREADS_ENV)
    if explicit is not None:
        return explicit
    sharing = _positive_int(PARALLEL_TASKS_ENV)
    if sharing is None:
        return available_cpus()
    together = sharing if parallel is None else max(1, min(parallel, sharing))
    return max(1, available_cpus() // together)


def configure_threads(parallel: int | None = 1) -> int:
    """Set torch's intra-op threads for this step (see :func:`step_threads`); returns the count."""
    import torch

    threads = step_threads(parallel)
    torch.set_num_threads(threads)
    return threads
