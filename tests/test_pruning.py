"""Multi-fidelity search: the pruner keys, the rungs a trial reports at, pruned trials in the budget and in
the selection of the best trial."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import autoft.stages as stages
from autoft.config import SearchConfig, resolve_config, validate_config
from autoft.data.images import ArrayImages
from autoft.data.loaders import BatchStream, ImageBatches
from autoft.errors import ConfigError
from autoft.evaluate import accuracy, predict
from autoft.models.classifier import CLIPClassifier
from autoft.search.objective import TrialObjective
from autoft.search.space import SearchSpace
from autoft.search.study import (
    best_hparams,
    count_trials,
    create_or_load_study,
    load_existing_study,
    make_pruner,
    run_worker,
)
from autoft.study_stages import stage_create_study, stage_select_best
from conftest import tiny_pipeline_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
CPU = torch.device("cpu")


def _config_error(**search: object) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config({"search": search})
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_rungs_follow_the_pruner_settings() -> None:
    assert SearchConfig().report_steps() == []  # no pruner, no intermediate OOD-val pass
    sha = SearchConfig(pruner="successive_halving", inner_steps=30, pruner_min_steps=10)
    assert sha.report_steps() == [10]  # 30 = 10 x 3: one rung, then the full budget
    assert SearchConfig(pruner="hyperband", inner_steps=100, pruner_min_steps=4).report_steps() == [4, 12]
    # 0 = inner_steps // factor^2: two rungs below the full budget.
    assert SearchConfig(pruner="successive_halving", inner_steps=30).report_steps() == [3, 9]
    assert SearchConfig(pruner="successive_halving", inner_steps=30, pruner_reduction_factor=2).report_steps() == [
        7,
        14,
    ]
    assert SearchConfig(pruner="median", inner_steps=10, prune_reports=4).report_steps() == [2, 4, 6, 8]
    assert isinstance(make_pruner(sha), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner(SearchConfig(pruner="hyperband")), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(SearchConfig(pruner="median")), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(SearchConfig()), optuna.pruners.NopPruner)


def test_the_old_pruning_switch_still_means_the_median_pruner() -> None:
    config = validate_config({"search": {"pruning": True}})
    assert config.search.pruner == "median" and config.search.pruning is False
    assert validate_config({"search": {"pruning": False}}).search.pruner == "none"
    message = _config_error(pruning=True, pruner="hyperband")
    assert "pruning: true is the old spelling of pruner: median" in message and "'hyperband'" in message


def test_bad_pruner_settings_fail_with_the_field_and_the_fix() -> None:
    message = _config_error(pruner="asha")
    assert "search.pruner" in message and "successive_halving" in message and "'asha'" in message
    assert "search.pruner_reduction_factor" in _config_error(pruner_reduction_factor=1)
    assert "search.pruner_min_steps" in _config_error(pruner_min_steps=-1)
    message = _config_error(pruner="successive_halving", inner_steps=10, pruner_min_steps=5)
    assert "pruner 'successive_halving' has no rung below inner_steps=10" in message
    assert "lower pruner_min_steps" in message
    with pytest.raises(ConfigError, match=r"search\.pruner"):
        resolve_config(preset="smoke", overrides=["search.pruner=halving"])


def test_the_digits_preset_searches_at_least_100_trials_with_successive_halving() -> None:
    config = resolve_config(preset="digits")
    assert config.search.n_trials >= 100
    assert config.search.pruner == "successive_halving" and config.search.report_steps()
    for method in config.methods:
        if method in ("autoft", "ft_oodval"):
            assert config.search_for(method).report_steps() == config.search.report_steps()


# ---------------------------------------------------------------------------------------------
# Pruned trials in the study: budget and selection
# ---------------------------------------------------------------------------------------------


def _rung_objective(space: SearchSpace, config: SearchConfig, log: list[int]) -> Callable[[optuna.Trial], float]:
    """Samples the real space and reports at the config's rungs like TrialObjective; the score grows with
    the steps and prefers lr near 1e-5 (no training). ``log`` collects the steps each trial ran."""

    def objective(trial: optuna.Trial) -> float:
        hparams = space.sample(trial)
        quality = -abs(math.log10(hparams.lr) + 5)

        def score(step: int) -> float:
            return quality + step / config.inner_steps

        for step in config.report_steps():
            trial.report(score(step), step)
            if trial.should_prune():
                log.append(step)
                raise optuna.TrialPruned()
        log.append(config.inner_steps)
        return score(config.inner_steps)

    return objective


@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_pruned_trials_count_in_the_exact_total_budget_of_two_workers(tmp_path: Path, pruner: str) -> None:
    config = SearchConfig(
        losses=["ce", "l2init"], n_trials=24, inner_steps=9, pruner=pruner, pruner_min_steps=1, study_name=pruner
    )
    assert config.report_steps() == [1, 3]
    storage = str(tmp_path / "study.journal")
    steps: list[int] = []
    for worker in (0, 1):
        study = create_or_load_study(storage, config, worker)
        run_worker(
            study, _rung_objective(SearchSpace.from_config(config), config, steps), 24, worker_index=worker, workers=2
        )
    counts = count_trials(study)
    assert counts["complete"] + counts["pruned"] == 24 and counts["fail"] == counts["running"] == 0
    assert counts["pruned"] >= 8, counts  # a factor of 3: most trials stop at a rung
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert all(t.last_step in (1, 3) for t in pruned)
    assert sorted(steps) == sorted([t.last_step for t in pruned] + [9] * counts["complete"])
    # Each trial ran only up to where it stopped: the search cost less than 24 full trials.
    assert sum(steps) < 24 * 9
    _, best = best_hparams(study)
    assert best.state == TrialState.COMPLETE and best.value == max(
        t.value for t in study.get_trials(states=(TrialState.COMPLETE,))
    )


def test_select_best_ignores_pruned_trials_even_with_a_higher_score(tmp_path: Path) -> None:
    config = resolve_config(
        preset="smoke", overrides=["search.pruner=successive_halving", "search.inner_steps=9", "search.n_trials=3"]
    )
    search = config.search_for("autoft")
    storage = str(tmp_path / "autoft.journal")
    study = create_or_load_study(storage, search)
    space = SearchSpace.from_config(search)
    for value, state in ((0.40, TrialState.COMPLETE), (0.95, TrialState.PRUNED), (0.55, TrialState.COMPLETE)):
        trial = study.ask()
        space.sample(trial)
        trial.report(value, 1)
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    pruned = study.get_trials(states=(TrialState.PRUNED,))[0]
    assert pruned.value == 0.95  # Optuna keeps a pruned trial's last report as its value
    result = stage_select_best(config, "autoft", storage, tmp_path / "best.json")
    assert result.best_trial == 2 and result.best_value == 0.55
    assert result.trials_complete == 3  # the budget counts the pruned trial
    assert [t.state for t in result.trials] == ["COMPLETE", "PRUNED", "COMPLETE"]


# ---------------------------------------------------------------------------------------------
# The real trial objective at a rung
# ---------------------------------------------------------------------------------------------


class CountingStream:
    def __init__(self, stream: BatchStream) -> None:
        self.stream, self.batches = stream, 0

    def next(self):
        self.batches += 1
        return self.stream.next()


def test_trial_objective_reports_at_its_rungs_and_stops_when_pruned(
    tiny_classifier: CLIPClassifier, train_images: ArrayImages, val_images: ArrayImages, eval_tf: Callable
) -> None:
    search = SearchConfig(losses=["ce", "l2init"], base_lr=1e-4, inner_steps=6, pruner="median", prune_reports=3)
    stream = CountingStream(BatchStream(ImageBatches(train_images, eval_tf), 12, seed=0))
    objective = TrialObjective(
        tiny_classifier,
        SearchSpace.from_config(search),
        stream,  # type: ignore[arg-type]
        val_images,
        eval_tf,
        metric="accuracy",
        inner_steps=6,
        device=CPU,
        report_steps=search.report_steps(),
    )
    assert search.report_steps() == [2, 4]
    # Never prunes: the trial reports at both rungs and completes all 6 steps.
    keep = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    keep.optimize(objective, n_trials=1)
    assert keep.trials[0].state == TrialState.COMPLETE and stream.batches == 6
    assert sorted(keep.trials[0].intermediate_values) == [2, 4]
    # Prunes every trial at its first report (accuracy < 2): it stops after the first rung's 2 steps.
    stream.batches = 0
    prune = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    prune.optimize(objective, n_trials=1)
    trial = prune.trials[0]
    assert trial.state == TrialState.PRUNED and stream.batches == 2
    assert list(trial.intermediate_values) == [2]
    # The report is the OOD-val accuracy of the model after those 2 steps (it still holds them).
    assert trial.intermediate_values[2] == pytest.approx(accuracy(predict(tiny_classifier, val_images, eval_tf)))


# ---------------------------------------------------------------------------------------------
# The search stage: pruner and the trials' token embedding from the config
# ---------------------------------------------------------------------------------------------


def test_the_search_stage_prunes_at_its_rungs_and_freezes_the_embedding_for_trials_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    search = {
        "n_trials": 6,
        "inner_steps": 4,
        "base_lr": 1e-4,
        "losses": ["ce", "flyp"],
        "pruner": "successive_halving",
        "pruner_min_steps": 1,
        "pruner_reduction_factor": 2,
        "train_token_embedding": False,
    }
    config = tiny_pipeline_config("pruned", ["zeroshot", "autoft"], search=search)
    assert config.model.train_token_embedding is True and config.search.report_steps() == [1, 2]
    stages.stage_prepare(config, tmp_path / "data")
    stages.stage_zeroshot(config, tmp_path / "data", tmp_path / "zeroshot")
    seen: list[bool] = []

    class Recording(TrialObjective):
        def __init__(self, *args, **kwargs) -> None:
            seen.append(kwargs["train_token_embedding"])
            assert kwargs["report_steps"] == [1, 2]
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(stages, "TrialObjective", Recording)
    storage = str(tmp_path / "autoft.journal")
    stage_create_study(config, "autoft", storage)
    counts = stages.stage_search(config, tmp_path / "data", tmp_path / "zeroshot", "autoft", storage, progress=False)
    assert seen == [False]
    assert counts["complete"] + counts["pruned"] == 6 and counts["fail"] == 0
    study = load_existing_study(storage, config.search_for("autoft"))
    assert all(set(t.intermediate_values) <= {1, 2} for t in study.trials)
    assert all(t.last_step in (1, 2) for t in study.get_trials(states=(TrialState.PRUNED,)))
