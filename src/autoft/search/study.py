"""The shared Optuna study: storage, sampler, and a TOTAL trial budget split statically across workers.

- Storage: a journal file (``*.journal``; SQLite locks under several processes) or an Optuna RDB URL
  (PostgreSQL on a cluster). Anything else is refused, so a mistyped URL never becomes a local file.
- Budget: ``search.n_trials`` is the total. Worker ``i`` of ``W`` owns :func:`worker_quota` counted
  trials (COMPLETE or PRUNED: with a pruner the budget counts proposals, as the paper's trial counts do;
  only COMPLETE trials ran the full ``inner_steps`` and only they are selected from) and tags every trial
  it runs with its index. A worker that starts again (after ``kill -9``, a crash, or KFP retrying its
  pod) first fails the trials its previous process left RUNNING (``study.tell(..., FAIL,
  skip_if_finished=True)``; also an untagged one, killed between Optuna creating it and the worker
  tagging it, when no other worker is alive), then runs only what its quota still lacks.
  No worker ever waits for another, so nothing can hang; the total is exact once every worker finishes
  (a worker that is lost for good fails its pipeline step, and with it the run).
- Failures (a NaN loss, an error in the objective) are FAIL, never counted; the worker proposes another
  trial until ``search.max_failed_trials`` genuine failures stop the search with a clear error.
- Leases (:mod:`autoft.search.lease`): a worker holds its index while it runs, so a second live process
  with the same index (a pod and its KFP retry, both alive) exits with one line instead of running the
  share twice.
- Heartbeats (RDB only, ``search.heartbeat_interval``): Optuna fails the trial of a worker that went
  silent, so dashboards and other workers see it as failed before that worker starts again.
"""

from __future__ import annotations

import errno
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from autoft.config import SearchConfig
from autoft.errors import ConfigError, NonFiniteLossError, SearchFailed, disk_error_behind
from autoft.hparams import Hyperparams
from autoft.search.journal import SafeJournalFileBackend
from autoft.search.lease import TTL_S as LEASE_TTL_S
from autoft.search.lease import WorkerConflict, WorkerLease, live_lease_holders
from autoft.search.space import trial_hparams
from autoft.urls import check_study_storage, database_url, is_rdb_url, redact_url

log = logging.getLogger(__name__)

COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ATTR = "worker"  # user attr: the index of the worker that ran the trial
ERROR_ATTR = "error"  # user attr: the objective failed (a genuine failure, not a killed worker's trial)
BUDGET_ATTRS = ("n_trials", "workers")  # study user attrs fixed when the study is created


def worker_quota(n_trials: int, workers: int, worker_index: int) -> int:
    """The counted trials worker ``worker_index`` of ``workers`` owns; the quotas sum to ``n_trials``."""
    if workers < 1 or not 0 <= worker_index < workers:
        if workers < 1:
            raise ConfigError(f"--workers {workers}: at least one worker is needed (--workers 1 or more)")
        raise ConfigError(f"worker index {worker_index} is not in 0..{workers - 1} (workers: {workers})")
    return n_trials // workers + (1 if worker_index < n_trials % workers else 0)


def open_storage(storage: str, config: SearchConfig) -> BaseStorage:
    """A journal file for a ``*.journal`` path, an RDBStorage for a database URL."""
    check_study_storage(storage, "the study storage")
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
                    engine_kwargs={"pool_pre_ping": True} if storage.startswith("postgresql") else None,
                )
        except Exception as error:
            raise ConnectionError(f"cannot open Optuna storage {redact_url(storage)}: {error}") from None
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(SafeJournalFileBackend(str(path)))  # torn tails repaired, failed appends rolled back


def make_sampler(config: SearchConfig, worker_index: int = 0) -> optuna.samplers.TPESampler:
    # Workers get distinct seeds, or they would propose the same points in lockstep.
    return optuna.samplers.TPESampler(
        seed=(config.seed or 0) + worker_index,  # None (derive from the root seed) is resolved by search_for
        multivariate=config.multivariate,
        constant_liar=config.constant_liar,
    )


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``search.pruner``; the trial reports at ``config.report_steps()`` (its rungs).

    Successive halving is Optuna's asynchronous variant (ASHA): at each rung a trial goes on when its
    OOD-val score is in the top 1/factor of the scores recorded at that rung so far, so workers never wait.
    """
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if config.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.rung_min_steps, reduction_factor=config.pruner_reduction_factor
        )
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=config.rung_min_steps,
            max_resource=config.inner_steps,
            reduction_factor=config.pruner_reduction_factor,
        )
    return optuna.pruners.NopPruner()


def create_or_load_study(storage: str, config: SearchConfig, worker_index: int = 0) -> optuna.Study:
    """Create the study (or load it to resume); a study created with another budget is refused."""
    study = optuna.create_study(
        study_name=config.study_name,
        storage=open_storage(storage, config),
        sampler=make_sampler(config, worker_index),
        pruner=make_pruner(config),
        direction="maximize",
        load_if_exists=True,
    )
    recorded = study.user_attrs.get("n_trials")
    if recorded is None:
        study.set_user_attr("n_trials", config.n_trials)
    elif recorded != config.n_trials:
        raise ConfigError(
            f"study {config.study_name!r} in {redact_url(storage)} was created for search.n_trials={recorded}, "
            f"not {config.n_trials}; use the same budget to resume it, or another search.study_name / storage"
        )
    return study


def load_existing_study(storage: str, config: SearchConfig) -> optuna.Study:
    """The study a search created, or a clear error: reading one must never create an empty study."""
    check_study_storage(storage, "the study storage")
    if not is_rdb_url(storage) and not Path(storage).is_file():
        raise SearchFailed(f"no study at {storage}: the journal file does not exist; check the storage path")
    try:
        return optuna.load_study(study_name=config.study_name, storage=open_storage(storage, config))
    except KeyError:
        raise SearchFailed(
            f"no study named {config.study_name!r} in {redact_url(storage)}; check the storage and the study name"
        ) from None


def prepare_study(storage: str, config: SearchConfig, workers: int = 1) -> optuna.Study:
    """Create or resume the study BEFORE any worker starts (the pipeline's create-study step).

    Records how many workers share the budget (a worker started with another count is refused, since
    its quota would be wrong) and fails every trial still RUNNING: no worker runs at this moment, so
    such a trial was left by a killed one.
    """
    study = create_or_load_study(storage, config)
    recorded = study.user_attrs.get("workers")
    if recorded is not None and recorded != workers:
        raise ConfigError(
            f"study {config.study_name!r} was started with {recorded} search workers, not {workers}; resume it "
            "with the same number (the budget is split between them)"
        )
    study.set_user_attr("workers", workers)
    fail_orphaned_trials(study)
    return study


def fail_orphaned_trials(study: optuna.Study, worker_index: int | None = None, *, untagged: bool = False) -> list[int]:
    """Mark FAIL the trials left RUNNING (by one worker, or by any when ``worker_index`` is None).

    Only for a moment when that worker (or every worker) is known not to run: at its start, before the
    workers start, or after the run ended. A worker tags its trial just after Optuna creates it, so a
    worker killed in between leaves an untagged RUNNING trial. With ``untagged`` (workers hold leases,
    :mod:`autoft.search.lease`) a restarted worker fails those too, unless another worker holds a live
    lease (the trial may be that worker's, a moment before its tag) and the trial is younger than a
    lease's lifetime. Returns the trial numbers.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    # Leases read AFTER the trials: a worker leases its index before it creates a trial, so the creator of
    # any trial in `running` is already visible here.
    others_alive = worker_index is not None and bool(set(live_lease_holders(study)) - {worker_index})
    cutoff = datetime.now() - timedelta(seconds=LEASE_TTL_S)  # Optuna stores naive local times

    def orphaned(trial: FrozenTrial) -> bool:
        owner = trial.user_attrs.get(WORKER_ATTR)
        if worker_index is None or owner == worker_index:
            return True
        if owner is not None or not untagged:
            return False
        return not others_alive or (trial.datetime_start is not None and trial.datetime_start < cutoff)

    orphans = [t for t in running if orphaned(t)]
    for trial in orphans:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        log.warning("trial %d was left RUNNING by a stopped worker: marked FAIL", trial.number)
    return [trial.number for trial in orphans]


def count_trials(study: optuna.Study) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    return counts


def genuine_failures(study: optuna.Study) -> list[FrozenTrial]:
    """Trials whose objective failed (not those a killed worker left behind)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if ERROR_ATTR in t.user_attrs]


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: int,
    *,
    worker_index: int = 0,
    workers: int = 1,
    max_failed_trials: int = 0,
    show_progress: bool = False,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    storage: str | None = None,
) -> int:
    """Run this worker's share of the TOTAL budget on the shared study; returns its counted trials.

    ``callbacks`` run after every trial (Optuna's callback signature), e.g. to track it in MLflow.
    With ``storage`` (where ``study`` lives) the worker holds a lease on its index while it runs
    (:mod:`autoft.search.lease`): a second live process with the same index exits with one line.
    """
    with WorkerLease(study, storage, worker_index) if storage else nullcontext() as lease:
        try:
            return _run_worker(
                study, objective, budget, worker_index, workers, max_failed_trials, show_progress, callbacks, lease
            )
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM between Optuna creating a trial and running it leaves the trial RUNNING (Optuna
            # tells FAIL only around the objective): this process stops, so its trials are orphans now.
            with suppress(Exception):
                fail_orphaned_trials(study, worker_index, untagged=lease is not None)
            raise
        except Exception as error:
            # A full disk inside Optuna's bookkeeping ends in Optuna's "Should not reach" assertion with the
            # OSError as its context: raise the OSError, which the entry points report in one line.
            disk = disk_error_behind(error, frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}))
            if disk is not None and disk is not error:
                raise disk from None
            conflict = error.__context__
            while conflict is not None and not isinstance(conflict, WorkerConflict):
                conflict = conflict.__context__
            if conflict is not None:  # Optuna could not tell the trial a newer process already failed
                raise conflict from None
            raise


def _run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    budget: int,
    worker_index: int,
    workers: int,
    max_failed_trials: int,
    show_progress: bool,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
    lease: WorkerLease | None,
) -> int:
    if budget < 1:
        raise ConfigError(f"the trial budget must be >= 1, got {budget}")
    recorded = study.user_attrs.get("workers")
    if recorded is not None and recorded != workers:
        raise ConfigError(
            f"study {study.study_name!r} is shared by {recorded} workers, but this one was told {workers}"
        )
    quota = worker_quota(budget, workers, worker_index)
    fail_orphaned_trials(study, worker_index, untagged=lease is not None)  # its previous process's, killed mid-trial

    def mine() -> int:
        return sum(1 for t in study.get_trials(deepcopy=False, states=COUNTED_STATES) if _owner(t) == worker_index)

    done = mine()
    if done >= quota:
        return done
    limit = max_failed_trials or budget

    def tagged(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_index)
        if lease is not None:
            lease.check()  # a process that lost its index to another must not run (or count) a trial
        try:
            value = objective(trial)
            if lease is not None:
                lease.check()
        except (optuna.TrialPruned, KeyboardInterrupt, WorkerConflict):
            raise  # pruned, or stopped from outside: not a failure of these hyperparameters
        except BaseException as error:
            trial.set_user_attr(ERROR_ATTR, type(error).__name__)
            raise
        if not math.isfinite(value):
            trial.set_user_attr(ERROR_ATTR, "non-finite objective")
        return value

    tripped = False
    bar = tqdm(
        total=quota, initial=done, desc=f"search {study.study_name} (worker {worker_index})", disable=not show_progress
    )

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal tripped
        if trial.state == TrialState.FAIL:
            # One line instead of Optuna's warning with a traceback: a failed trial is an expected event.
            log.warning("trial %d failed (%s); the search goes on", trial.number, trial.user_attrs.get(ERROR_ATTR))
        bar.n = mine()
        if trial.value is not None and study.best_trials:
            bar.set_postfix(last=f"{trial.value:.4f}", best=f"{study.best_value:.4f}")
        bar.refresh()
        if len(genuine_failures(study)) >= limit:
            tripped = True
            study.stop()
        elif bar.n >= quota:
            study.stop()

    verbosity = optuna.logging.get_verbosity()
    # Quiet: the bar and after_trial report each trial; Optuna would add an INFO line per trial and a
    # traceback per failure (also for Ctrl-C, which the CLI reports in one line).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study.optimize(tagged, catch=(NonFiniteLossError,), callbacks=[*callbacks, after_trial], gc_after_trial=False)
    finally:
        optuna.logging.set_verbosity(verbosity)
        bar.close()
    if tripped:
        raise SearchFailed(
            f"{limit} trials failed (e.g. NaN losses); check the search bounds "
            "(search.base_lr, search.weight_bounds) or raise search.max_failed_trials"
        )
    return mine()


def _owner(trial: FrozenTrial) -> int | None:
    return trial.user_attrs.get(WORKER_ATTR)


def best_hparams(study: optuna.Study) -> tuple[Hyperparams, FrozenTrial]:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise SearchFailed(f"study {study.study_name!r} has no completed trial to select from")
    best = study.best_trial
    return trial_hparams(best), best
