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
from autoft.search.space import SearchSpace
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
    study = _finished_trials(2)
    for trial in study.trials:
        log_trial(study, trial)
    trials = client.search_runs([runs.experiment_id], filter_string="tags.`autoft.role` = 'trial'")
    assert len(trials) == 2 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {method}
    assert all({"lr", "weight_decay", "w_l2init"} <= set(t.data.params) for t in trials)
    history = client.get_metric_history(trials[0].info.run_id, "ood_val_objective")
    assert [m.step for m in history] == [1, 2], "the pruning report, then the final score"

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
