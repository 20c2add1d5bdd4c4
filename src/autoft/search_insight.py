"""What a search found, with Optuna's own tools: history, parameter importances, parallel coordinates;
and its trials as one table (a row per trial), which tracking stores instead of a run per trial.

The report step has the select-best outputs (autoft.contracts.SearchResult), not the study's database,
so each study is rebuilt in memory from its trials (params, their distributions, values, pruning
reports) and handed to ``optuna.visualization.matplotlib`` and ``optuna.importance``.
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState, create_trial

from autoft.atomic import atomic_path
from autoft.contracts import SearchResult, TrialRecord

log = logging.getLogger(__name__)
COUNTED = {"COMPLETE", "PRUNED"}
# The fixed columns of a trial table; each searched parameter follows as a column of its own name.
FORMAT = "%Y-%m-%d %H:%M:%S"  # the start's form: MLflow's CSV viewer leaves ISO's T...Z blank
TRIAL_COLUMNS = ("number", "state", "value", "seconds", "pruned_step", "last_report", "start_utc")


def trial_table(trials: list[TrialRecord]) -> list[dict[str, Any]]:
    """One row per trial: number, state, objective value, duration, the inner step a pruned trial stopped
    at and its last report there, its start (UTC), then the sampled parameters."""
    rows = []
    for record in sorted(trials, key=lambda r: r.number):
        last_step = max(record.intermediate, default=None)
        row: dict[str, Any] = {
            "number": record.number,
            "state": record.state,
            "value": record.value,
            "seconds": None if record.seconds is None else round(record.seconds, 3),
            "pruned_step": last_step if record.state == "PRUNED" else None,
            "last_report": None if last_step is None else record.intermediate[last_step],
            "start_utc": None if record.start is None else datetime.fromtimestamp(record.start, UTC).strftime(FORMAT),
        }
        row.update(record.params)
        rows.append({key: "" if value is None else value for key, value in row.items()})
    return rows


def best_trials(trials: list[TrialRecord], count: int) -> list[TrialRecord]:
    """The ``count`` complete trials with the highest objective (ties: the earlier trial); -1: every trial."""
    if count < 0:
        return sorted(trials, key=lambda r: r.number)
    complete = [r for r in trials if r.state == "COMPLETE" and r.value is not None]
    return sorted(complete, key=lambda r: (-r.value, r.number))[:count]  # type: ignore[operator]


def rebuild_study(result: SearchResult) -> optuna.Study:
    """The study's finished trials in an in-memory study (Optuna's plots and importances read studies)."""
    study = optuna.create_study(direction="maximize", study_name=result.study_name)
    for record in result.trials:
        if record.state not in COUNTED or not record.distributions:
            continue
        study.add_trial(
            create_trial(
                params=record.params,
                distributions={name: json_to_distribution(text) for name, text in record.distributions.items()},
                value=record.value if record.state == "COMPLETE" else None,
                intermediate_values=record.intermediate,
                state=TrialState[record.state],
            )
        )
    return study


def importances(result: SearchResult) -> dict[str, float]:
    """fANOVA importance of each searched hyperparameter (sums to 1); empty when too few trials vary."""
    study = rebuild_study(result)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as error:  # fewer than 2 complete trials, or nothing varies
        log.info("no parameter importances for %s: %s", result.method, error)
        return {}


def plot_search(result: SearchResult, folder: Path) -> dict[str, Path]:
    """Optimization history, parameter importances and (for 3+ parameters) parallel coordinates."""
    from optuna.visualization import matplotlib as optuna_plots

    study = rebuild_study(result)
    if not study.get_trials(states=(TrialState.COMPLETE,)):
        return {}
    charts = {"history": optuna_plots.plot_optimization_history}
    if len(importances(result)) >= 2:
        charts["importances"] = optuna_plots.plot_param_importances
    if len(study.best_trial.params) >= 3:
        charts["parallel coordinates"] = optuna_plots.plot_parallel_coordinate
    paths = {}
    for title, chart in charts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib backend is "experimental"
            axes = chart(study)
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(7, 4.5)
        figure.suptitle(f"{result.method}: {title}")
        path = folder / f"search_{result.method}_{title.replace(' ', '_')}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths[f"{result.method}: {title}"] = path
    return paths
