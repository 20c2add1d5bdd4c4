"""The stages that only touch a method's Optuna study: create it, read the best back, close it.

Free of torch, so these steps start in about a second instead of five (each pipeline run has several
of them); ``autoft.stages`` holds the other stages.
"""

from __future__ import annotations

from pathlib import Path

from optuna.distributions import distribution_to_json

from autoft.config import AutoFTConfig
from autoft.contracts import SearchResult, TrialRecord
from autoft.errors import SearchFailed
from autoft.search.attrs import HOLDOUT_ATTR, HOLDOUT_SE_ATTR, SE_ATTR
from autoft.search.space import HPARAMS_ATTR
from autoft.search.study import (
    COUNTED_STATES,
    best_hparams,
    count_trials,
    fail_orphaned_trials,
    load_existing_study,
    open_storage,
    prepare_study,
)
from autoft.search.winner import check_winner
from autoft.urls import redact_url


def default_storage(run_dir: Path, method: str) -> str:
    return str(Path(run_dir) / "studies" / f"{method}.journal")


def stage_create_study(config: AutoFTConfig, method: str, storage: str, workers: int = 1) -> dict[str, int]:
    """Create (or resume) ``method``'s study for ``workers`` workers before they start; orphans are failed."""
    study = prepare_study(storage, config.search_for(method), workers)
    return count_trials(study)


def stage_select_best(config: AutoFTConfig, method: str, storage: str, out_path: Path) -> SearchResult:
    """Read the best trial's effective hyperparameters (user attrs) and every trial back from the study."""
    search = config.search_for(method)
    study = load_existing_study(storage, search)
    hparams, best = best_hparams(study)
    trials = study.get_trials(deepcopy=False)
    timed = [t for t in trials if t.datetime_start and t.datetime_complete]
    seconds = 0.0
    if timed:
        first = min(t.datetime_start for t in timed)  # type: ignore[type-var]
        last = max(t.datetime_complete for t in timed)  # type: ignore[type-var]
        seconds = round((last - first).total_seconds(), 3)
    result = SearchResult(
        method=method,
        hparams=hparams,
        best_value=float(best.value),  # type: ignore[arg-type]
        best_trial=best.number,
        trials_complete=len(study.get_trials(deepcopy=False, states=COUNTED_STATES)),
        storage=redact_url(storage),
        study_name=study.study_name,
        seconds=seconds,
        study_id=open_storage(storage, search).get_study_id_from_name(study.study_name),
        trials=[
            TrialRecord(
                number=t.number,
                state=t.state.name,
                value=t.value,
                params=t.params,
                distributions={k: distribution_to_json(d) for k, d in t.distributions.items()},
                intermediate=dict(t.intermediate_values),
                hparams=t.user_attrs.get(HPARAMS_ATTR, {}),
                start=t.datetime_start.timestamp() if t.datetime_start else None,
                seconds=t.duration.total_seconds() if t.duration else None,
                se=t.user_attrs.get(SE_ATTR),
                holdout=t.user_attrs.get(HOLDOUT_ATTR),
                holdout_se=t.user_attrs.get(HOLDOUT_SE_ATTR),
            )
            for t in trials
        ],
    )
    result.winner = check_winner(result.trials, config.data.ood_val.rescore_top_k)
    result.save(out_path)
    return result


def stage_close_study(config: AutoFTConfig, method: str, storage: str) -> list[int]:
    """After every worker is gone: fail the trials still RUNNING (they can never finish); their numbers.

    Left alone they would count against a resumed study's budget and show as running in the dashboard.
    A study that was never created has nothing to close.
    """
    search = config.search_for(method)
    if "://" not in storage and not Path(storage).exists():
        return []
    try:
        study = load_existing_study(storage, search)
    except SearchFailed:
        return []
    return fail_orphaned_trials(study)
