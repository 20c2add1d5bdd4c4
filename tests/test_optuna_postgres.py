"""The shared Optuna study on a REAL PostgreSQL with worker PROCESSES: the total budget split between
workers, a killed worker started again, heartbeats, and optuna-dashboard on the same storage.

Each test gets a database of its own (AUTOFT_TEST_POSTGRES_URL names the server; unset = skipped).
Workers run a small script that calls autoft.search.study exactly as a pipeline step would, with a
cheap objective (a sleep and a function of the sampled hyperparameters) instead of a model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoft.config import SearchConfig
from autoft.search.study import count_trials, open_storage, prepare_study, worker_quota
from autoft.urls import database_url
from servers import ServerProcess, start_optuna_dashboard, wait_for_dashboard

pytest_plugins = ["conftest_servers"]
pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

WORKERS_SCRIPT = textwrap.dedent(
    """
    import json, math, os, sys, time, traceback
    from pathlib import Path

    from autoft.config import SearchConfig
    from autoft.search.space import SearchSpace
    from autoft.search.study import create_or_load_study, run_worker

    storage, config_json, sync_dir, indices, workers, hang, trial_seconds = sys.argv[1:8]
    config = SearchConfig.model_validate_json(config_json)
    space = SearchSpace.from_config(config)
    sync = Path(sync_dir)
    hanging = {int(i) for i in hang.split(",") if i}


    def work(index):
        # Everything that opens a database connection happens after the fork, in the worker.
        study = create_or_load_study(storage, config, worker_index=index)

        def objective(trial):
            hp = space.sample(trial)
            (sync / f"started-{index}-{trial.number}").touch()
            time.sleep(3600 if index in hanging else float(trial_seconds))
            return -abs(math.log10(hp.lr) + 5.0) - hp.weight_decay

        run_worker(study, objective, config.n_trials, worker_index=index, workers=int(workers))


    # Import once, then fork the workers: three processes importing torch at once on two shared
    # cores take tens of seconds, and forked workers start together, so they really compete.
    children = {}
    for index in (int(i) for i in indices.split(",")):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                work(index)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index
        (sync / f"pid-{index}").write_text(str(pid))
    codes = {}
    while children:
        pid, status = os.wait()
        codes[children.pop(pid)] = os.waitstatus_to_exitcode(status)
    (sync / "exit-codes.json").write_text(json.dumps(codes))
    """
)


def _config(name: str, n_trials: int) -> SearchConfig:
    # Heartbeat every second, a trial is stale after 3 s of silence.
    return SearchConfig(
        study_name=name, n_trials=n_trials, losses=["ce", "l2init"], heartbeat_interval=1, grace_period=3
    )


@dataclass
class Workers:
    """The worker processes of one test (forked by one launcher process) and their rendezvous folder."""

    launcher: subprocess.Popen
    sync: Path
    log: Path

    def pid(self, index: int, timeout: float = 60) -> int:
        return int(_wait_for_glob(self, f"pid-{index}", timeout).read_text())

    def wait(self, timeout: float) -> dict[int, int]:
        """Exit code per worker index (negative: killed by that signal)."""
        try:
            self.launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"workers still running after {timeout:.0f}s (budget deadlock?); log:\n{self.log_tail()}")
        codes_file = self.sync / "exit-codes.json"
        assert self.launcher.returncode == 0 and codes_file.exists(), self.log_tail()
        return {int(k): v for k, v in json.loads(codes_file.read_text()).items()}

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    """Start ``count`` workers on a study; at teardown, kill whatever still runs (whole group)."""
    started: list[Workers] = []

    def start(
        storage: str,
        config: SearchConfig,
        count: int,
        trial_seconds: float,
        hang: frozenset[int] = frozenset(),
        only: tuple[int, ...] | None = None,
    ) -> Workers:
        """Workers ``only`` (default: all ``count``) of ``count`` sharing the budget."""
        script = tmp_path / "workers.py"
        script.write_text(WORKERS_SCRIPT)
        sync = tmp_path / f"sync{len(started)}"
        sync.mkdir(exist_ok=True)
        log = tmp_path / f"workers{len(started)}.log"
        with log.open("wb") as out:
            launcher = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    storage,
                    config.model_dump_json(),
                    str(sync),
                    ",".join(map(str, only if only is not None else range(count))),
                    str(count),
                    ",".join(map(str, sorted(hang))),
                    str(trial_seconds),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the forked workers die with it
            )
        started.append(Workers(launcher, sync, log))
        return started[-1]

    yield start
    for workers in started:
        if workers.launcher.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(workers.launcher.pid, signal.SIGKILL)
        workers.launcher.wait(timeout=10)


def _wait_for_glob(workers: Workers, pattern: str, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while not (found := sorted(workers.sync.glob(pattern))):
        if time.monotonic() > deadline or workers.launcher.poll() is not None:
            pytest.fail(f"nothing matched {pattern} in time; log:\n{workers.log_tail()}")
        time.sleep(0.05)
    return found[0]


def test_three_workers_complete_exactly_the_budget(
    postgres_db: str, tmp_path: Path, start_workers: Callable[..., Workers]
) -> None:
    budget = 10
    config = _config("budget", budget)
    # A plain postgresql:// URL, as users write it (the driver is pinned inside open_storage).
    prepare_study(postgres_db, config, workers=3)
    # optuna-dashboard on the same storage, started now so its start-up overlaps the workers'.
    dashboard = start_optuna_dashboard(database_url(postgres_db), tmp_path, wait=False)
    workers = start_workers(postgres_db, config, count=3, trial_seconds=0.3)
    try:
        assert workers.wait(timeout=120) == {0: 0, 1: 0, 2: 0}, workers.log_tail()
        study = optuna.load_study(study_name="budget", storage=open_storage(postgres_db, config))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        assert len(complete) == budget and len(study.trials) == budget, f"{count_trials(study)}"
        shares = [sum(1 for t in complete if t.user_attrs["worker"] == i) for i in range(3)]
        assert shares == [worker_quota(budget, 3, i) for i in range(3)] == [4, 3, 3]
        assert all(math.isfinite(t.value) for t in complete)
        _check_dashboard(dashboard, budget)
    finally:
        dashboard.stop()


def _check_dashboard(dashboard: ServerProcess, budget: int) -> None:
    """optuna-dashboard reads the same storage and lists the study with its trials."""
    wait_for_dashboard(dashboard)
    with urllib.request.urlopen(f"{dashboard.url}/api/studies", timeout=10) as response:
        payload = json.loads(response.read())
    studies = payload["study_summaries"]
    assert [s["study_name"] for s in studies] == ["budget"], payload
    study_id = studies[0]["study_id"]
    with urllib.request.urlopen(f"{dashboard.url}/api/studies/{study_id}?after=0", timeout=10) as response:
        detail = json.loads(response.read())
    states = [t["state"] for t in detail["trials"]]
    assert states.count("Complete") == budget, states


def test_a_killed_worker_started_again_finishes_its_share(
    postgres_db: str, start_workers: Callable[..., Workers]
) -> None:
    """kill -9 a worker mid-trial; the others finish their shares without waiting; the killed worker,
    started again (as KFP retries a pod), fails its orphaned trial and completes the budget exactly."""
    budget = 6
    config = _config("killed", budget)
    prepare_study(postgres_db, config, workers=3)
    workers = start_workers(postgres_db, config, count=3, trial_seconds=0.3, hang=frozenset({0}))
    started = _wait_for_glob(workers, "started-0-*", timeout=90)
    killed_number = int(started.name.rsplit("-", 1)[1])
    os.kill(workers.pid(0), signal.SIGKILL)
    assert workers.wait(timeout=90) == {0: -signal.SIGKILL, 1: 0, 2: 0}, workers.log_tail()

    study = optuna.load_study(study_name="killed", storage=open_storage(postgres_db, config))
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == budget - 2, "0's share is open"
    again = start_workers(postgres_db, config, count=3, trial_seconds=0.3, only=(0,))
    assert again.wait(timeout=90) == {0: 0}, again.log_tail()

    trials = study.get_trials(deepcopy=False)
    summary = [(t.number, t.state.name, t.user_attrs.get("worker")) for t in trials]
    assert study.trials[killed_number].state == TrialState.FAIL, summary
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], summary
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == budget, summary
    assert sorted(t.user_attrs["worker"] for t in complete) == [0, 0, 1, 1, 2, 2], summary
