"""components/tracking.py against REAL MLflow: an ``mlflow server`` with a PostgreSQL backend and proxied
artifacts in gs:// on fake-gcs-server, a local SQLite store, and an unreachable server."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import optuna
import pandas as pd
import pytest
from components.tracking import PipelineRuns, TrackingError
from mlflow import MlflowClient
from PIL import Image

from autoft import storage
from autoft.contracts import SearchResult, TrialRecord
from autoft.search.space import SearchSpace, trial_hparams
from conftest import build_tiny_classifier
from conftest_servers import MLFLOW_ARTIFACT_BUCKET
from servers import ServerProcess, free_port

if TYPE_CHECKING:
    from conftest_servers import GcsEmulator

pytest_plugins = ["conftest_servers"]


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow's default tracking URI is ./mlflow.db; never let a test fall back to it or to the user's.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "AUTOFT_GIT_SHA"):
        monkeypatch.delenv(name, raising=False)


def _finished_trials(count: int) -> optuna.Study:
    from autoft.config import SearchConfig

    space = SearchSpace.from_config(SearchConfig(losses=["ce", "l2init"]))
    study = optuna.create_study(direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        hparams = space.sample(trial)
        trial.report(0.2, 1)
        return 0.5 + hparams.weight_decay / 10

    study.optimize(objective, n_trials=count)
    return study


def _search_result(study: optuna.Study) -> SearchResult:
    """The select-best step's record of ``study`` (autoft.study_stages builds the same from storage)."""
    from optuna.distributions import distribution_to_json

    best = study.best_trial
    return SearchResult(
        method="autoft",
        hparams=trial_hparams(best),
        best_value=best.value,
        best_trial=best.number,
        trials_complete=len(study.trials),
        storage="memory",
        study_name=study.study_name,
        trials=[
            TrialRecord(
                number=t.number,
                state=t.state.name,
                value=t.value,
                params=t.params,
                distributions={k: distribution_to_json(d) for k, d in t.distributions.items()},
                intermediate=dict(t.intermediate_values),
                hparams=t.user_attrs["hparams"],
                start=t.datetime_start.timestamp(),
                seconds=t.duration.total_seconds(),
            )
            for t in study.trials
        ],
    )


def test_the_run_tree_registry_and_a_servable_champion_on_postgres_and_gs(
    mlflow_server: ServerProcess, gcs: GcsEmulator, tmp_path: Path
) -> None:
    runs = PipelineRuns.open(mlflow_server.url, "tree", "kfp-run-1", start=True, tags={"autoft.preset": "p"})
    again = PipelineRuns.open(mlflow_server.url, "tree", "kfp-run-1")  # a later step, in another pod
    assert again.parent_id == runs.parent_id and again.experiment_id == runs.experiment_id
    client = MlflowClient(mlflow_server.url)
    assert client.get_experiment(runs.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    method = runs.method_run("autoft", start=True)
    assert runs.method_run("autoft") == method  # found, not created twice
    log_trial = runs.trial_logger("autoft")
    study = _finished_trials(3)
    for trial in study.trials:
        log_trial(study, trial)
    assert not client.search_runs([runs.experiment_id], filter_string="tags.`autoft.role` = 'trial'")
    live = client.get_metric_history(method, "search/trial_value")
    assert [(m.step, m.value) for m in live] == [(t.number, t.value) for t in study.trials], "a point per trial"
    assert client.get_metric_history(method, "search/best_value")[-1].value == study.best_value

    # The finished search: one table of every trial, the best two as nested runs over their own times.
    result = _search_result(study)
    nested = runs.log_search("autoft", result, nested=2)
    table = client.download_artifacts(method, "search/trials.csv", str(tmp_path))
    rows = pd.read_csv(table)
    assert list(rows["number"]) == [0, 1, 2] and set(rows["state"]) == {"COMPLETE"}
    assert {"value", "seconds", "pruned_step", "start_utc", "lr", "weight_decay", "w_l2init"} <= set(rows.columns)
    assert list(rows["value"]) == pytest.approx([t.value for t in study.trials])
    ranked = sorted(study.trials, key=lambda t: (-t.value, t.number))[:2]
    trials = [client.get_run(run_id) for run_id in nested]
    assert [t.data.tags["autoft.trial"] for t in trials] == [str(t.number) for t in ranked]
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {method}
    assert all({"lr", "weight_decay", "w_l2init", "w_ce"} <= set(t.data.params) for t in trials)
    history = client.get_metric_history(trials[0].info.run_id, "ood_val_objective")
    assert [m.step for m in history] == [1, 2], "the pruning report, then the final score"
    assert abs(trials[0].info.start_time - ranked[0].datetime_start.timestamp() * 1000) <= 1
    assert abs(trials[0].info.end_time - ranked[0].datetime_complete.timestamp() * 1000) <= 1
    assert client.get_run(method).data.metrics["search/trials_complete"] == 3
    assert runs.log_search("autoft", result, nested=2) == nested, "a retried report adds no second trial runs"

    curves = runs.training_observer("autoft")
    for step in range(1, 4):
        curves.on_step(step, {"loss": 1.0 / step, "ce": 0.5, "lr": 1e-4})
    curves.on_epoch(0, {"train_loss": 0.6, "id_val": 0.7, "lr": 1e-4})
    assert [m.value for m in client.get_metric_history(method, "train/loss")] == pytest.approx([1.0, 0.5, 1 / 3])

    folder = tmp_path / "classifier"
    build_tiny_classifier().save(folder)
    uri = runs.log_model("autoft", folder, {"preset": "p"})
    version = runs.register("tree-clip", uri, {"ood_avg": "0.5"})
    runs.promote("tree-clip", str(version.version))
    assert runs.champion("tree-clip").version == version.version

    # The model's files went through the server's proxy into the bucket, and the champion serves.
    stored = [o.relative for o in storage.list_objects(f"gs://{MLFLOW_ARTIFACT_BUCKET}/artifacts")]
    assert any(name.endswith("classifier/model.safetensors") for name in stored)
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_registry_uri(mlflow_server.url)
    served = mlflow.pyfunc.load_model("models:/tree-clip@champion")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (250, 10, 10)).save(buffer, format="PNG")
    predicted = served.predict(pd.DataFrame({"image": [buffer.getvalue()]}))
    assert predicted["label"][0] in ("red", "green", "blue")

    ended = runs.finish(succeeded=True)
    assert set(ended) == {method, runs.parent_id}
    assert client.get_run(runs.parent_id).info.status == "FINISHED"


def test_a_later_step_without_the_pipeline_run_is_refused(mlflow_server: ServerProcess) -> None:
    with pytest.raises(TrackingError, match="no MLflow pipeline run for KFP run never-started"):
        PipelineRuns.open(mlflow_server.url, "tree", "never-started")


def test_unreachable_server_fails_fast_naming_the_uri() -> None:
    uri = f"http://user:secret-pw@127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        PipelineRuns.open(uri, "x", "kfp-run", start=True)
    assert time.monotonic() - start < 60
    assert "unreachable or failing" in str(caught.value) and "user:***@127.0.0.1" in str(caught.value)
    assert "secret-pw" not in str(caught.value)


def test_local_sqlite_keeps_artifacts_beside_the_database(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    (tmp_path / "runs").mkdir()
    runs = PipelineRuns.open(uri, "local", "kfp-local", start=True)
    location = MlflowClient(uri).get_experiment(runs.experiment_id).artifact_location
    assert location == (tmp_path / "runs" / "mlartifacts").as_uri()


def test_a_step_shorter_than_one_sampling_interval_still_records_system_metrics(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = PipelineRuns.open(uri, "short", "kfp-short", start=True)
    method = runs.method_run("ft", start=True)
    with runs.system_metrics("ft"):
        pass  # far under MLflow's 5 s sampling interval
    metrics = MlflowClient(uri).get_run(method).data.metrics
    assert any(key.startswith("system/cpu") for key in metrics)
    assert any(key.startswith("system/system_memory") for key in metrics)


def test_a_method_run_spans_its_own_steps(tmp_path: Path) -> None:
    """Created when the method's first step starts, ended when its last one ends; a retried step re-opens it."""
    from mlflow.entities import Dataset, DatasetInput

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = PipelineRuns.open(uri, "spans", "kfp-spans", start=True)
    client = MlflowClient(uri)
    split = Dataset(name="digits/id_train", digest="d1", source_type="code", source="{}")
    client.log_inputs(runs.parent_id, datasets=[DatasetInput(split)])
    with pytest.raises(TrackingError, match="no MLflow run for method 'ft'"):
        runs.method_run("ft")  # nothing before the method's first step
    before = int(time.time() * 1000)
    [ft] = runs.start_methods(["ft"])
    first = client.get_run(ft)
    assert first.info.status == "RUNNING" and first.info.start_time >= before
    assert [d.dataset.name for d in first.inputs.dataset_inputs] == ["digits/id_train"], "the pipeline's splits"
    assert runs.start_methods(["ft"]) == [ft]  # a later step of the same method finds it
    runs.end_methods(["ft"])
    ended = client.get_run(ft).info
    assert ended.status == "FINISHED" and ended.end_time >= ended.start_time
    # Another method's run starts later, when its own first step does, and ending the tree leaves ft alone.
    [zeroshot] = runs.start_methods(["zeroshot"])
    assert client.get_run(zeroshot).info.start_time >= ended.start_time
    assert runs.finish(succeeded=False) == [zeroshot, runs.parent_id]
    assert client.get_run(ft).info.status == "FINISHED" and client.get_run(zeroshot).info.status == "FAILED"
    runs.start_methods(["ft"])  # KFP retried ft's step
    assert client.get_run(ft).info.status == "RUNNING"


def test_two_steps_creating_one_method_run_at_once_keep_one(tmp_path: Path) -> None:
    """Parallel tasks of one method may start together: the later creator finds the earlier run and drops its own."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = PipelineRuns.open(uri, "race", "kfp-race", start=True)
    other = PipelineRuns.open(uri, "race", "kfp-race")  # the other task, in another pod
    create = runs.client.create_run
    rival: list[str] = []

    def create_after_the_rival(*args: object, **kwargs: object) -> object:
        rival.extend(other.start_methods(["ft"]))  # the other task got there between our search and our create
        return create(*args, **kwargs)

    runs.client.create_run = create_after_the_rival  # type: ignore[method-assign]
    assert runs.method_run("ft", start=True) == rival[0]
    active = MlflowClient(uri).search_runs([runs.experiment_id], filter_string="tags.`autoft.method` = 'ft'")
    assert [r.info.run_id for r in active] == rival
