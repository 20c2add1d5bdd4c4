"""The shared Optuna study: storage, sampler, a TOTAL budget across workers, stale-trial recovery.

- Storage: a local journal file by default (SQLite locks under several processes), or any Optuna
  RDB URL (PostgreSQL in production) with heartbeats so a killed worker's trial is failed and
  retried by :class:`optuna.storages.RetryFailedTrialCallback`.
- Budget: ``n_trials`` in ``study.optimize`` counts per worker, so the total is enforced here.
  A trial starts only if the finished trials plus the RUNNING trials numbered before it leave room;
  otherwise it waits for those to finish (one may fail and need a replacement) or, when the budget
  is met, ends itself as a surplus trial. Lower numbers have priority, so nothing deadlocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from autoft.config import SearchConfig
from autoft.search.space import trial_hparams
from autoft.train import Hyperparams, NonFiniteLossError

log = logging.getLogger(__name__)

COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
SURPLUS_ATTR = "surplus"
RDB_PREFIXES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


class BudgetExhausted(RuntimeError):
    """This trial is beyond the total budget; it ends without evaluating anything."""


class SearchFailed(RuntimeError):
    """Too many trials failed; the search stops instead of spinning."""


def is_rdb_url(storage: str) -> bool:
    return storage.startswith(RDB_PREFIXES)


def open_storage(storage: str, config: SearchConfig) -> BaseStorage:
    """A journal file for a path, an RDBStorage (heartbeat, retries) for a database URL."""
    if not storage:
        raise ValueError("no study storage given: pass a journal file path or an RDB URL")
    if "://" in storage and not is_rdb_url(storage):
        raise ValueError(
            f"unsupported study storage {storage!r}: use a local journal file path or an RDB URL "
            "(postgresql://user@host/db, sqlite:///file.db)"
        )
    if is_rdb_url(storage):
        heartbeat = config.heartbeat_interval or None
        grace = (config.grace_period or 2 * config.heartbeat_interval) if heartbeat else None
        try:
            return RDBStorage(
                storage,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                failed_trial_callback=RetryFailedTrialCallback(max_retry=1) if heartbeat else None,
                engine_kwargs={"pool_pre_ping": True} if storage.startswith("postgresql") else None,
            )
        except Exception as error:  # noqa: BLE001 - SQLAlchemy/driver errors vary; the user needs the URL
            raise ConnectionError(f"cannot open Optuna storage {_redact(storage)}: {error}") from None
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _redact(url: str) -> str:
    """Hide a password in a database URL before it reaches a message or a log."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url


def make_sampler(config: SearchConfig, worker_index: int = 0) -> optuna.samplers.TPESampler:
    # Workers get distinct seeds, or they would propose the same points in lockstep.
    return optuna.samplers.TPESampler(
        seed=config.seed + worker_index,
        multivariate=config.multivariate,
        constant_liar=config.constant_liar,
    )


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5) if config.pruning else optuna.pruners.NopPruner()


def create_or_load_study(storage: str, config: SearchConfig, worker_index: int = 0) -> optuna.Study:
    """Create the study (or load it to resume) and record the total budget on it."""
    study = optuna.create_study(
        study_name=config.study_name,
        storage=open_storage(storage, config),
        sampler=make_sampler(config, worker_index),
        pruner=make_pruner(config),
        direction="maximize",
        load_if_exists=True,
    )
    if "n_trials" not in study.user_attrs:
        study.set_user_attr("n_trials", config.n_trials)
    return study


def count_trials(study: optuna.Study) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    counts["surplus"] = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SURPLUS_ATTR))
    return counts


def _wait_for_room(trial: optuna.Trial, budget: int, poll_seconds: float) -> None:
    study = trial.study
    while True:
        trials = study.get_trials(deepcopy=False, states=(*COUNTED_STATES, TrialState.RUNNING))
        done = sum(1 for t in trials if t.state in COUNTED_STATES)
        ahead = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number < trial.number)
        if done >= budget:
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.stop()
            raise BudgetExhausted(f"the budget of {budget} trials is complete")
        if done + ahead < budget:
            return
        time.sleep(poll_seconds)
        if isinstance(study._storage, RDBStorage) and study._storage.heartbeat_interval:
            optuna.storages.fail_stale_trials(study)


class _FailureLimit:
    """Stop the worker once the study holds ``limit`` genuine failures (surplus trials excluded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.tripped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        failed = [
            t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if not t.user_attrs.get(SURPLUS_ATTR)
        ]
        if len(failed) >= self.limit:
            self.tripped = True
            study.stop()


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: int,
    *,
    max_failed_trials: int = 0,
    poll_seconds: float = 0.5,
    show_progress: bool = False,
) -> None:
    """Run trials on the shared study until the TOTAL budget of counted trials is met."""
    if budget < 1:
        raise ValueError(f"the trial budget must be >= 1, got {budget}")
    if len(study.get_trials(deepcopy=False, states=COUNTED_STATES)) >= budget:
        return

    def gated(trial: optuna.Trial) -> float:
        _wait_for_room(trial, budget, poll_seconds)
        return objective(trial)

    failure_limit = _FailureLimit(max_failed_trials or budget)
    done = len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
    bar = tqdm(total=budget, initial=done, desc=f"search {study.study_name}", disable=not show_progress)

    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        bar.n = len(study.get_trials(deepcopy=False, states=COUNTED_STATES))
        if trial.value is not None:
            bar.set_postfix(last=f"{trial.value:.4f}", best=f"{study.best_value:.4f}")
        bar.refresh()

    try:
        study.optimize(
            gated,
            catch=(NonFiniteLossError, BudgetExhausted),
            callbacks=[MaxTrialsCallback(budget, states=COUNTED_STATES), failure_limit, progress],
            gc_after_trial=False,
        )
    finally:
        bar.close()
    if failure_limit.tripped:
        raise SearchFailed(
            f"{failure_limit.limit} trials failed (e.g. NaN losses); check the search bounds "
            "(search.base_lr, search.weight_bounds) or raise search.max_failed_trials"
        )


def best_hparams(study: optuna.Study) -> tuple[Hyperparams, FrozenTrial]:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise SearchFailed(f"study {study.study_name!r} has no completed trial to select from")
    best = study.best_trial
    return trial_hparams(best), best
