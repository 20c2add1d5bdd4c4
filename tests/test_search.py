"""The search: the space as data, effective hparams on trials, budget, resume, workers and NaN trials."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autoft.config import Bounds, SearchConfig
from autoft.data.images import ArrayImages
from autoft.data.loaders import BatchStream, ImageBatches
from autoft.errors import ConfigError, NonFiniteLossError, SearchFailed
from autoft.evaluate import accuracy, predict
from autoft.hparams import LOSS_NAMES, Hyperparams
from autoft.models.classifier import CLIPClassifier
from autoft.search.objective import OOD_VAL_ATTR, TrialObjective
from autoft.search.space import HPARAMS_ATTR, SEED_RANGE, SearchSpace, trial_hparams
from autoft.search.study import (
    best_hparams,
    count_trials,
    create_or_load_study,
    make_sampler,
    open_storage,
    prepare_study,
    run_worker,
    worker_quota,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
CPU = torch.device("cpu")


def _states(study: optuna.Study) -> dict[str, int]:
    counts = count_trials(study)
    return {name: counts[name] for name in ("complete", "fail", "running", "pruned") if counts[name]}


def _cheap_objective(space: SearchSpace) -> Callable[[optuna.Trial], float]:
    """Samples the real space; the value prefers lr near 1e-5 (no training)."""

    def objective(trial: optuna.Trial) -> float:
        hparams = space.sample(trial)
        return -abs(math.log10(hparams.lr) + 5)

    return objective


# ---------------------------------------------------------------------------------------------
# Space
# ---------------------------------------------------------------------------------------------


def test_space_from_config_is_the_papers_default() -> None:
    space = SearchSpace.from_config(SearchConfig(base_lr=1e-5))
    dims = {d.name: d for d in space.dimensions}
    assert set(dims) == {f"w_{t}" for t in LOSS_NAMES if t != "ce"} | {"lr", "weight_decay"}
    assert all(
        (dims[f"w_{t}"].low, dims[f"w_{t}"].high, dims[f"w_{t}"].log) == (1e-4, 10.0, True) for t in LOSS_NAMES[1:]
    )
    assert dims["lr"].low == pytest.approx(1e-7) and dims["lr"].high == pytest.approx(1e-3) and dims["lr"].log
    assert (dims["weight_decay"].low, dims["weight_decay"].high, dims["weight_decay"].log) == (0.0, 1.0, False)


def test_space_follows_per_term_bounds_anchor_and_seed_options() -> None:
    config = SearchConfig(
        losses=["ce", "hinge", "l2init"],
        anchor="hinge",
        weight_bounds_per_term={"l2init": Bounds(low=0.01, high=0.5)},
        base_lr=1e-3,
        lr_factor=10,
        search_seed=True,
    )
    dims = {d.name: d for d in SearchSpace.from_config(config).dimensions}
    assert set(dims) == {"w_ce", "w_l2init", "lr", "weight_decay", "seed"}
    assert (dims["w_l2init"].low, dims["w_l2init"].high) == (0.01, 0.5)
    assert (dims["w_ce"].low, dims["w_ce"].high) == (1e-4, 10.0)
    assert dims["lr"].low == pytest.approx(1e-4) and dims["lr"].high == pytest.approx(1e-2)
    assert dims["seed"].integer and (dims["seed"].low, dims["seed"].high) == SEED_RANGE


@pytest.mark.parametrize("search_seed", [False, True])
def test_sampling_stays_in_bounds_and_the_anchor_is_fixed(search_seed: bool) -> None:
    config = SearchConfig(
        losses=["ce", "hinge", "entropy", "l2init"],
        weight_bounds_per_term={"entropy": Bounds(low=0.1, high=0.2)},
        base_lr=1e-5,
        search_seed=search_seed,
    )
    space = SearchSpace.from_config(config)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config))
    sampled: list[Hyperparams] = []

    def objective(trial: optuna.Trial) -> float:
        sampled.append(space.sample(trial))
        return -abs(math.log10(sampled[-1].lr) + 4)  # something for TPE to chase toward a bound

    study.optimize(objective, n_trials=40)
    assert len(sampled) == 40
    for hp, trial in zip(sampled, study.trials, strict=True):
        assert hp.weights["ce"] == 1.0
        assert "w_ce" not in trial.params and "ce" not in trial.params
        assert set(hp.weights) == {"ce", "hinge", "entropy", "l2init"}
        assert 1e-4 <= hp.weights["hinge"] <= 10.0 and 1e-4 <= hp.weights["l2init"] <= 10.0
        assert 0.1 <= hp.weights["entropy"] <= 0.2
        assert 1e-7 <= hp.lr <= 1e-3
        assert 0.0 <= hp.weight_decay <= 1.0
        if search_seed:
            assert isinstance(hp.seed, int) and SEED_RANGE[0] <= hp.seed <= SEED_RANGE[1]
        else:
            assert hp.seed is None and "seed" not in trial.params
    assert len({hp.lr for hp in sampled}) == 40  # actually sampled, not a constant


def test_effective_hparams_are_stored_on_the_trial_and_read_back() -> None:
    config = SearchConfig(losses=["ce", "flyp", "l1init"])
    space = SearchSpace.from_config(config)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(config))
    sampled: dict[int, Hyperparams] = {}

    def objective(trial: optuna.Trial) -> float:
        sampled[trial.number] = space.sample(trial)
        return sampled[trial.number].weights["flyp"]

    study.optimize(objective, n_trials=6)
    for trial in study.trials:
        stored = trial.user_attrs[HPARAMS_ATTR]
        assert stored["weights"]["ce"] == 1.0  # the EFFECTIVE weights, anchor included
        assert trial_hparams(trial) == sampled[trial.number]
    hparams, best = best_hparams(study)
    assert best.number == max(sampled, key=lambda n: sampled[n].weights["flyp"])
    assert hparams == sampled[best.number]


def test_trials_without_hparams_and_empty_studies_are_rejected() -> None:
    study = optuna.create_study(direction="maximize")
    with pytest.raises(SearchFailed, match="has no completed trial"):
        best_hparams(study)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ValueError, match="no 'hparams' user attr: not an AutoFT trial"):
        trial_hparams(study.trials[0])


# ---------------------------------------------------------------------------------------------
# Study, budget and resume
# ---------------------------------------------------------------------------------------------


def test_bad_budget_and_storage_are_rejected(tmp_path: Path) -> None:
    config = SearchConfig(losses=["ce", "hinge"])
    study = create_or_load_study(str(tmp_path / "study.journal"), config)
    with pytest.raises(ConfigError, match="the trial budget must be >= 1, got 0"):
        run_worker(study, _cheap_objective(SearchSpace.from_config(config)), 0)
    assert study.trials == []
    with pytest.raises(ConfigError, match="the study storage is empty"):
        open_storage("", config)
    with pytest.raises(ConfigError, match="redis:// is not a database Optuna can use"):
        open_storage("redis://host/0", config)
    with pytest.raises(ConfigError, match="looks like a mistyped database URL"):
        open_storage("postgres//user@host/db", config)
    with pytest.raises(ConfigError, match=r"ends in \.journal"):
        open_storage(str(tmp_path / "study.log"), config)
    assert not (tmp_path / "study.log").exists()
    with pytest.raises(ConfigError, match=r"worker index 2 is not in 0\.\.1"):
        worker_quota(10, 2, 2)
    assert [worker_quota(10, 3, i) for i in range(3)] == [4, 3, 3]
    assert [worker_quota(2, 3, i) for i in range(3)] == [1, 1, 0]


def test_stopped_study_resumes_to_exactly_the_budget(tmp_path: Path) -> None:
    journal = str(tmp_path / "study.journal")
    config = SearchConfig(losses=["ce", "hinge"], n_trials=7, study_name="resume")
    space = SearchSpace.from_config(config)
    first = create_or_load_study(journal, config)
    run_worker(first, _cheap_objective(space), 3)  # stopped after 3 trials
    before = {t.number: (t.params, t.value) for t in first.get_trials(states=(TrialState.COMPLETE,))}
    assert len(before) == 3

    resumed = create_or_load_study(journal, config)  # a fresh process would do exactly this
    assert resumed.user_attrs["n_trials"] == 7
    assert run_worker(resumed, _cheap_objective(space), config.n_trials) == 7
    assert _states(resumed) == {"complete": 7}
    after = {t.number: (t.params, t.value) for t in resumed.get_trials(states=(TrialState.COMPLETE,))}
    assert {n: after[n] for n in before} == before  # nothing lost or redone
    run_worker(resumed, _cheap_objective(space), config.n_trials)  # already complete: no extra trials
    assert _states(create_or_load_study(journal, config)) == {"complete": 7}
    with pytest.raises(ConfigError, match=r"created for search\.n_trials=7, not 8"):
        create_or_load_study(journal, config.model_copy(update={"n_trials": 8}))


def test_interrupted_study_resumes_to_exactly_the_budget(tmp_path: Path) -> None:
    journal = str(tmp_path / "study.journal")
    config = SearchConfig(losses=["ce", "entropy"], n_trials=6, study_name="interrupted")
    space = SearchSpace.from_config(config)
    calls = []

    def interrupted(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C during the fourth trial
        return _cheap_objective(space)(trial)

    with pytest.raises(KeyboardInterrupt):
        run_worker(create_or_load_study(journal, config), interrupted, config.n_trials)
    assert _states(create_or_load_study(journal, config)) == {"complete": 3, "fail": 1}
    resumed = create_or_load_study(journal, config)
    run_worker(resumed, _cheap_objective(space), config.n_trials)
    assert _states(resumed) == {"complete": 6, "fail": 1}


def test_a_worker_started_again_fails_its_own_orphan_and_finishes_its_share(tmp_path: Path) -> None:
    """A journal has no heartbeat: a worker that starts again fails the trial its killed process left."""
    journal = str(tmp_path / "study.journal")
    config = SearchConfig(losses=["ce", "hinge"], n_trials=4, study_name="orphan")
    space = SearchSpace.from_config(config)
    study = prepare_study(journal, config, workers=2)
    run_worker(study, _cheap_objective(space), 4, worker_index=1, workers=2)
    orphan = study.ask()  # worker 0 was SIGKILLed here: the trial stays RUNNING in the journal
    orphan.set_user_attr("worker", 0)
    other = study.ask()  # a RUNNING trial of a live worker 1 must be left alone
    other.set_user_attr("worker", 1)
    assert run_worker(create_or_load_study(journal, config), _cheap_objective(space), 4, workers=2) == 2
    assert study.trials[orphan.number].state == TrialState.FAIL
    assert study.trials[other.number].state == TrialState.RUNNING
    assert count_trials(study)["complete"] == config.n_trials
    with pytest.raises(ConfigError, match="shared by 2 workers, but this one was told 3"):
        run_worker(study, _cheap_objective(space), 4, workers=3)
    with pytest.raises(ConfigError, match="started with 2 search workers, not 3"):
        prepare_study(journal, config, workers=3)


WORKER_SCRIPT = textwrap.dedent(
    """
    import math
    import sys
    import time
    from pathlib import Path

    from autoft.config import SearchConfig
    from autoft.search.space import SearchSpace
    from autoft.search.study import create_or_load_study, run_worker

    journal, index, sync, hang_at = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    config = SearchConfig(losses=["ce", "hinge"], n_trials=12, study_name="shared")
    space = SearchSpace.from_config(config)
    study = create_or_load_study(journal, config, worker_index=index)
    (sync / f"ready-{index}").touch()


    def objective(trial):
        hparams = space.sample(trial)
        (sync / f"trial-{index}-{trial.number}").touch()
        time.sleep(3600 if len(list(sync.glob(f"trial-{index}-*"))) == hang_at else 0.1)
        return -abs(math.log10(hparams.lr) + 5)


    run_worker(study, objective, config.n_trials, worker_index=index, workers=2)
    """
)


def _worker(journal: str, index: int, sync: Path, hang_at: int = 0) -> subprocess.Popen[str]:
    script = sync.parent / "worker.py"
    script.write_text(WORKER_SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), journal, str(index), str(sync), str(hang_at)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_worker_processes_share_the_budget_and_a_killed_one_finishes_after_a_restart(tmp_path: Path) -> None:
    """kill -9 worker 0 in its third trial; worker 1 finishes its six without waiting; worker 0, started
    again, fails its orphan and runs only the four it still owes: exactly 12 complete trials."""
    journal = str(tmp_path / "study.journal")
    config = SearchConfig(losses=["ce", "hinge"], n_trials=12, study_name="shared")
    prepare_study(journal, config, workers=2)
    sync = tmp_path / "sync"
    sync.mkdir()
    zero, one = _worker(journal, 0, sync, hang_at=3), _worker(journal, 1, sync)
    try:
        deadline = time.monotonic() + 120
        while len(list(sync.glob("trial-0-*"))) < 3:
            assert zero.poll() is None, zero.stderr.read()
            assert time.monotonic() < deadline, "worker 0 did not reach its third trial within 120 s"
            time.sleep(0.05)
        zero.send_signal(signal.SIGKILL)
        assert zero.wait(timeout=30) == -signal.SIGKILL
        assert one.wait(timeout=120) == 0, one.stderr.read()
        study = create_or_load_study(journal, config)
        assert count_trials(study)["running"] == 1 and count_trials(study)["complete"] == 8
        again = _worker(journal, 0, sync, hang_at=0)
        assert again.wait(timeout=120) == 0, again.stderr.read()
    finally:
        for process in (zero, one):
            if process.poll() is None:
                process.kill()
    study = create_or_load_study(journal, config)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12
    assert count_trials(study)["running"] == 0 and count_trials(study)["fail"] == 1
    assert sorted(t.user_attrs["worker"] for t in complete) == [0] * 6 + [1] * 6
    assert all(HPARAMS_ATTR in t.user_attrs for t in complete)


def test_nan_trials_fail_alone_and_the_study_finishes(tmp_path: Path) -> None:
    config = SearchConfig(losses=["ce", "hinge"], n_trials=6, study_name="nan")
    space = SearchSpace.from_config(config)
    study = create_or_load_study(str(tmp_path / "study.journal"), config)

    def objective(trial: optuna.Trial) -> float:
        value = _cheap_objective(space)(trial)
        if trial.number in (1, 4):
            raise NonFiniteLossError("loss is nan at step 3")
        return value

    run_worker(study, objective, config.n_trials)
    states = {t.number: t.state for t in study.trials}
    assert states[1] == states[4] == TrialState.FAIL
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 6
    assert [n for n, s in states.items() if s == TrialState.FAIL] == [1, 4]
    assert best_hparams(study)[1].state == TrialState.COMPLETE


def test_too_many_failures_stop_the_search_with_a_clear_error(tmp_path: Path) -> None:
    config = SearchConfig(losses=["ce", "hinge"], n_trials=5, study_name="diverges")
    study = create_or_load_study(str(tmp_path / "study.journal"), config)

    def diverging(trial: optuna.Trial) -> float:
        SearchSpace.from_config(config).sample(trial)
        raise NonFiniteLossError("loss is nan at step 0")

    with pytest.raises(SearchFailed, match=r"3 trials failed .*search\.max_failed_trials"):
        run_worker(study, diverging, config.n_trials, max_failed_trials=3)
    assert _states(study) == {"fail": 3}


# ---------------------------------------------------------------------------------------------
# The trial objective (real inner loop on the tiny model)
# ---------------------------------------------------------------------------------------------


class PoisonableStream:
    """The real batch stream; while ``poison`` is set its images are NaN."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream
        self.poison = False

    def next(self):
        images, labels, groups = self.stream.next()
        if self.poison:
            images = torch.full_like(images, math.nan)
        return images, labels, groups


def _trial_objective(
    model: CLIPClassifier, train: ArrayImages, ood_val: ArrayImages, tf: Callable, stream=None
) -> TrialObjective:
    space = SearchSpace.from_config(SearchConfig(losses=["ce", "l2init"], base_lr=1e-4))
    stream = stream or BatchStream(ImageBatches(train, tf), 12, seed=0)
    return TrialObjective(model, space, stream, ood_val, tf, metric="accuracy", inner_steps=2, device=CPU)


def test_trial_objective_scores_the_whole_ood_val_subset(
    tiny_classifier: CLIPClassifier, train_images: ArrayImages, val_images: ArrayImages, eval_tf: Callable
) -> None:
    objective = _trial_objective(tiny_classifier, train_images, val_images, eval_tf)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    # The model still holds the trial's weights: its accuracy on all of OOD-val is the trial value.
    expected = accuracy(predict(tiny_classifier, val_images, eval_tf))
    assert trial.value == pytest.approx(expected) and trial.user_attrs[OOD_VAL_ATTR] == trial.value
    assert trial_hparams(trial).weights["ce"] == 1.0
    assert not torch.equal(tiny_classifier.head.weight, objective.zeroshot_state["head.weight"])


def test_a_diverging_trial_fails_alone_through_the_real_objective(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    val_images: ArrayImages,
    eval_tf: Callable,
    tmp_path: Path,
) -> None:
    stream = PoisonableStream(BatchStream(ImageBatches(train_images, eval_tf), 12, seed=0))
    objective = _trial_objective(tiny_classifier, train_images, val_images.subset(range(9)), eval_tf, stream)

    def poisoned_second_trial(trial: optuna.Trial) -> float:
        stream.poison = trial.number == 1
        return objective(trial)

    config = SearchConfig(losses=["ce", "l2init"], n_trials=3, study_name="poison")
    study = create_or_load_study(str(tmp_path / "study.journal"), config)
    run_worker(study, poisoned_second_trial, config.n_trials)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert all(0.0 <= t.value <= 1.0 for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_trial_objective_rejects_an_empty_ood_val_and_a_class_mismatch(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    make_images: Callable[..., ArrayImages],
    eval_tf: Callable,
) -> None:
    with pytest.raises(ValueError, match="the OOD-val subset is empty"):
        _trial_objective(tiny_classifier, train_images, train_images.subset([]), eval_tf)
    four_classes = make_images(8, class_names=["red", "green", "blue", "gray"])
    with pytest.raises(ValueError, match="class mismatch: the head has 3 classes, OOD-val 4"):
        _trial_objective(tiny_classifier, train_images, four_classes, eval_tf)
