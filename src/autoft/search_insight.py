"""What a search found, with Optuna's own tools: history, parameter importances, parallel coordinates.

The report step has the select-best outputs (autoft.contracts.SearchResult), not the study's database,
so each study is rebuilt in memory from its trials (params, their distributions, values, pruning
reports) and handed to ``optuna.visualization.matplotlib`` and ``optuna.importance``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState, create_trial

from autoft.atomic import atomic_path
from autoft.contracts import SearchResult

log = logging.getLogger(__name__)
COUNTED = {"COMPLETE", "PRUNED"}


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
