"""The shared Optuna study: storage, sampler, a TOTAL budget across workers, stale-trial recovery.

- Storage: a local journal file by default (SQLite locks under several processes), or any Optuna
  RDB URL (PostgreSQL in production) with heartbeats so a killed worker's trial is failed and
  retried by :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`.
- Budget: ``n_trials`` in ``study.optimize`` counts per worker, so the total is enforced here.
  A trial starts (is admitted) only if the finished trials, the admitted RUNNING trials and the
  trials queued ahead of it leave room; otherwise it waits (one may fail and need a replacement)
  or, when the budget is met, ends itself as a surplus trial. The queue order is fixed (retries of
  killed trials first, then lower numbers), so nothing deadlocks, and a killed trial's slot goes
  to its retry: a blocked fresh trial steps aside (as a surplus trial) for a queued retry.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from autoft.config import SearchConfig
from autoft.errors import NonFiniteLossError, SearchFailed
from autoft.hparams import Hyperparams
from autoft.search.space import trial_hparams
from autoft.urls import database_url, is_rdb_url, redact_url

log = logging.getLogger(__name__)

COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
SURPLUS_ATTR = "surplus"
RETRY_OF_ATTR = "failed_trial"  # system attr RetryHeartbeatStaleTrialCallback sets on a re-queued trial
ERROR_ATTR = "error"  # user attr: the objective raised, so the trial is a failure, not a killed worker's
ADMITTED_ATTR = "admitted"  # user attr: the trial's own number once it passed the budget gate
MAX_RETRY = 1
RETRY_WINDOW_SECONDS = 60.0


class BudgetExhausted(RuntimeError):
    """This trial is beyond the total budget; it ends without evaluating anything."""


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
            with warnings.catch_warnings():
                # Heartbeats are "experimental" since Optuna 2.8; the warning would repeat in every worker.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    database_url(storage),  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3 (not installed)
                    heartbeat_interval=heartbeat,
                    grace_period=grace,
                    # Not the deprecated failed_trial_callback/RetryFailedTrialCallback (removed in Optuna 6).
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                    if heartbeat
                    else None,
                    engine_kwargs={"pool_pre_ping": True} if storage.startswith("postgresql") else None,
                )
        except Exception as error:
            raise ConnectionError(f"cannot open Optuna storage {redact_url(storage)}: {error}") from None
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(config: SearchConfig, worker_index: int = 0) -> optuna.samplers.TPESampler:
    # Workers get distinct seeds, or they would propose the same points in lockstep.
    return optuna.samplers.TPESampler(
        seed=(config.seed or 0) + worker_index,  # None (derive from the root seed) is resolved by search_for
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


def load_existing_study(storage: str, config: SearchConfig) -> optuna.Study:
    """The study a search created, or a clear error: reading one must never create an empty study."""
    if "://" not in storage and not Path(storage).is_file():
        raise SearchFailed(f"no study at {storage}: the journal file does not exist; check the storage path")
    try:
        return optuna.load_study(study_name=config.study_name, storage=open_storage(storage, config))
    except KeyError:
        raise SearchFailed(
            f"no study named {config.study_name!r} in {redact_url(storage)}; check the storage and the study name"
        ) from None


ORPHANED_ATTR = "orphaned"


def prepare_study(storage: str, config: SearchConfig) -> optuna.Study:
    """Create or resume the study BEFORE any worker starts (the pipeline's create_study step).

    A storage without heartbeats (a journal file, or an RDB URL with heartbeat_interval 0) cannot tell
    a live worker's trial from one whose worker was killed, so a trial still RUNNING when no worker
    runs is an orphan: it is failed here, freeing its place in the budget. Never call this while
    workers are running; they call :func:`create_or_load_study`.
    """
    study = create_or_load_study(storage, config)
    if getattr(study._storage, "get_heartbeat_interval", lambda: None)() is None:
        fail_orphaned_trials(study)
    else:
        optuna.storages.fail_stale_trials(study)
    return study


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Mark every RUNNING trial FAIL (and ``orphaned``); returns their numbers.

    Only for a moment when no worker of the study runs: before workers start, or after the run ended.
    """
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        study._storage.set_trial_user_attr(trial._trial_id, ORPHANED_ATTR, True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        log.warning("trial %d was left RUNNING by a stopped worker: marked FAIL", trial.number)
    return [trial.number for trial in orphans]


def count_trials(study: optuna.Study) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    counts["surplus"] = sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SURPLUS_ATTR))
    return counts


def _retry_pending(trial: FrozenTrial, requeued: set[int], now: datetime) -> bool:
    """A trial failed by heartbeat whose re-queued copy is not in the study YET.

    fail_stale_trials sets FAIL first and enqueues the retry a moment later; a gate that looked in
    between would hand the slot to a fresh trial. The window is bounded, in case the process that
    failed the trial died before enqueueing.
    """
    if trial.state != TrialState.FAIL or trial.user_attrs.get(SURPLUS_ATTR) or ERROR_ATTR in trial.user_attrs:
        return False
    if trial.number in requeued or len(trial.system_attrs.get("retry_history", [])) >= MAX_RETRY:
        return False
    completed = trial.datetime_complete
    return completed is not None and (now - completed).total_seconds() < RETRY_WINDOW_SECONDS


def _admitted(trial: FrozenTrial) -> bool:
    # Compared with the trial's own number: a retry inherits its killed original's user attrs.
    return trial.state == TrialState.RUNNING and trial.user_attrs.get(ADMITTED_ATTR) == trial.number


def _queue_key(trial: FrozenTrial) -> tuple[int, int]:
    # Retries of killed trials queue before fresh proposals, then lower numbers first.
    return (0 if RETRY_OF_ATTR in trial.system_attrs else 1, trial.number)


def _wait_for_room(trial: optuna.Trial, budget: int, poll_seconds: float) -> None:
    """Admit this trial when the finished, the admitted and the trials queued ahead leave room."""
    study = trial.study
    # Only storages with heartbeats fail (and re-queue) a killed worker's trial.
    heartbeat = getattr(study._storage, "get_heartbeat_interval", lambda: None)() is not None
    while True:
        trials = study.get_trials(deepcopy=False)
        others = [t for t in trials if t.number != trial.number]
        mine = next((t for t in trials if t.number == trial.number), None)
        key = _queue_key(mine) if mine is not None else (1, trial.number)
        done = sum(1 for t in trials if t.state in COUNTED_STATES)
        admitted = sum(1 for t in others if _admitted(t))
        queued = [
            t
            for t in others
            if _queue_key(t) < key
            and (
                (t.state == TrialState.RUNNING and not _admitted(t))
                or (t.state == TrialState.WAITING and RETRY_OF_ATTR in t.system_attrs)
            )
        ]
        if heartbeat and key[0] == 1:
            requeued = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            now = datetime.now()
            queued += [t for t in others if _retry_pending(t, requeued, now)]
        if done >= budget:
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.stop()
            raise BudgetExhausted(f"the budget of {budget} trials is complete")
        if done + admitted + len(queued) < budget:
            trial.set_user_attr(ADMITTED_ATTR, trial.number)
            return
        if any(t.state == TrialState.WAITING for t in queued):
            # A retry is queued but every live worker may be blocked here: step aside (without
            # stopping the study) so that this worker's next trial picks the retry up.
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise BudgetExhausted("yielding this trial's slot to the retry of a killed trial")
        time.sleep(poll_seconds)
        # A killed worker's trial stays RUNNING (and blocks the budget) until someone fails it; Optuna
        # only does that when a trial starts, and every live worker may be waiting right here.
        # study._storage is a _CachedStorage wrapping the RDBStorage, so no isinstance check: the
        # function itself returns at once when the storage has no heartbeat.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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
        try:
            return objective(trial)
        except BaseException as error:
            # Marks the failure as the objective's own, so the budget gate never waits for a retry.
            with contextlib.suppress(Exception):
                trial.set_user_attr(ERROR_ATTR, type(error).__name__)
            raise

    if show_progress:  # the progress bar reports each trial; Optuna's per-trial INFO lines would interleave
        optuna.logging.set_verbosity(optuna.logging.WARNING)
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
