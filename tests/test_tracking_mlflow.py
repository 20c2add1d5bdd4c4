"""autoft.tracking against REAL MLflow: a local SQLite store, an ``mlflow server`` (SQLite backend,
artifacts proxied to gs:// on fake-gcs-server), the same server with a PostgreSQL backend, an
unreachable server, and an outage in the middle of a run (through a proxy that fails on demand).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from safetensors.numpy import save_file

from autoft import storage
from autoft.config import AutoFTConfig, TrackingConfig
from autoft.tracking import (
    CANDIDATE_ALIAS,
    CHAMPION_ALIAS,
    PENDING_FILE,
    TAG_GIT_COMMIT,
    TAG_KFP_RUN_ID,
    TAG_PARENT,
    TAG_PIPELINE_VERSION,
    TAG_ROLE,
    Tracker,
    TrackingUnavailable,
    flatten_hparams,
)
from servers import FlakyProxy, ServerProcess, free_port

if TYPE_CHECKING:
    from conftest_servers import GcsEmulator

pytest_plugins = ["conftest_servers"]

MODEL_NAME = "autoft-clip-test"
METRIC = "ood_test_accuracy"


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow's default tracking URI is ./mlflow.db; never let a test fall back to it or to the user's.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "KFP_RUN_ID", "AUTOFT_GIT_SHA", "AUTOFT_PIPELINE_VERSION"):
        monkeypatch.delenv(name, raising=False)


def _hparams(i: int) -> dict:
    return {"weights": {"ce": 1.0, "l2init": 0.01 * (i + 1)}, "lr": 1e-5 * (i + 1), "weight_decay": 0.1, "seed": None}


def _model_folder(root: Path, tag: str) -> Path:
    folder = root / f"model-{tag}"
    folder.mkdir(parents=True)
    save_file({"head.weight": np.full((3, 4), float(len(tag)), dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "model_card.json").write_text(json.dumps({"run": tag, "model": "autoft-tiny-vit"}))
    return folder


def _fake_pipeline(tracker: Tracker, root: Path, tag: str, test_accuracy: float) -> tuple[str, object]:
    """What a pipeline run logs: config, a search with trials, best phi, fine-tuning, report, model."""
    parent = tracker.start_pipeline_run()
    tracker.log_config(AutoFTConfig())
    with tracker.step("search") as search_run:
        for i in range(3):
            tracker.log_trial(i, _hparams(i), 0.5 + 0.1 * i)
    with tracker.step("select_best"):
        tracker.log_best_hparams(_hparams(2), value=0.7)
    with tracker.step("finetune"):
        for epoch in range(2):
            tracker.log_metrics({"id_val_accuracy": 0.6 + 0.1 * epoch}, step=epoch)
    with tracker.step("report"):
        report = root / f"report-{tag}"
        report.mkdir(parents=True)
        (report / "report.md").write_text(f"# AutoFT run {tag}\n")
        plot = root / f"wiseft-{tag}.png"
        plot.write_bytes(b"\x89PNG fake plot")
        tracker.log_report(report)
        tracker.log_plots([plot])
        tracker.log_metrics({METRIC: test_accuracy}, run_id=parent)
    with tracker.step("register"):
        version = tracker.log_model(_model_folder(root, tag), name=MODEL_NAME)
        assert version is not None
        decision = tracker.promote_if_better(version.name, version.version, METRIC, test_accuracy)
    tracker.finish_pipeline_run()
    assert search_run is not None
    return parent, (version, decision)


def _children(client: MlflowClient, experiment_id: str, parent: str) -> dict[str, object]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")
    return {run.info.run_name: run for run in runs}


def test_pipeline_run_tree_registry_and_gs_artifacts(
    mlflow_server: ServerProcess, gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-1")
    monkeypatch.setenv("AUTOFT_GIT_SHA", "0123abcd")
    config = TrackingConfig(mlflow_uri=mlflow_server.url, experiment="tree", registered_model=MODEL_NAME)
    tracker = Tracker.from_config(config, tmp_path / "run1")
    parent, (v1, decision1) = _fake_pipeline(tracker, tmp_path, "one", test_accuracy=0.70)
    assert tracker.pending_count == 0 and not (tmp_path / "run1" / PENDING_FILE).exists()

    client = MlflowClient(mlflow_server.url)
    run = client.get_run(parent)
    assert run.data.tags[TAG_KFP_RUN_ID] == "kfp-run-1"
    assert run.data.tags[TAG_GIT_COMMIT] == "0123abcd"
    assert run.data.tags[TAG_PIPELINE_VERSION]
    assert run.data.tags[TAG_ROLE] == "pipeline" and run.info.status == "FINISHED"
    assert run.data.params["config.search.n_trials"] == "100"
    assert run.data.metrics[METRIC] == pytest.approx(0.70)

    # The tree: steps under the pipeline run, trials under the search step.
    steps = _children(client, tracker.experiment_id, parent)
    assert set(steps) == {"search", "select_best", "finetune", "report", "register"}
    assert all(step.info.status == "FINISHED" for step in steps.values())
    trials = _children(client, tracker.experiment_id, steps["search"].info.run_id)
    assert set(trials) == {"trial-0", "trial-1", "trial-2"}
    trial = trials["trial-2"]
    assert trial.data.params == {k: str(v) for k, v in flatten_hparams(_hparams(2)).items()}
    assert set(trial.data.params) == {"w_ce", "w_l2init", "lr", "weight_decay"}
    assert trial.data.metrics["ood_val_objective"] == pytest.approx(0.7)
    best = steps["select_best"].data
    assert best.params["best.w_l2init"] == "0.03" and best.metrics["best_ood_val_objective"] == pytest.approx(0.7)
    history = client.get_metric_history(steps["finetune"].info.run_id, "id_val_accuracy")
    assert [m.step for m in history] == [0, 1]

    # Artifacts went through the server into gs:// (the server's --artifacts-destination).
    report_run = steps["report"].info.run_id
    assert {a.path for a in client.list_artifacts(report_run)} == {"report", "plots"}
    gs_files = [o.relative for o in storage.list_objects("gs://autoft-mlflow/artifacts")]
    assert any(f.endswith(f"{report_run}/artifacts/report/report.md") for f in gs_files), gs_files
    assert any(f.endswith("/artifacts/model/model.safetensors") for f in gs_files), gs_files
    assert any(f.endswith("/artifacts/config/resolved_config.yaml") for f in gs_files)

    # Registry: version 1 is candidate and, with no champion before, champion.
    assert decision1.promoted and decision1.reason == "no champion yet"
    assert client.get_model_version_by_alias(MODEL_NAME, CANDIDATE_ALIAS).version == v1.version
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version == v1.version

    # Another step of the SAME pipeline run (a new process in KFP) finds the same parent run.
    same = Tracker.from_config(config, tmp_path / "run1-step")
    assert same.start_pipeline_run() == parent

    # A worse second run becomes candidate but not champion; a better third run becomes champion.
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-2")
    parent2, (v2, decision2) = _fake_pipeline(Tracker.from_config(config, tmp_path / "run2"), tmp_path, "two", 0.65)
    assert parent2 != parent
    assert not decision2.promoted and decision2.champion_version == v1.version, decision2
    assert client.get_model_version_by_alias(MODEL_NAME, CANDIDATE_ALIAS).version == v2.version
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version == v1.version
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-3")
    _, (v3, decision3) = _fake_pipeline(Tracker.from_config(config, tmp_path / "run3"), tmp_path, "three", 0.80)
    assert decision3.promoted and decision3.champion_value == pytest.approx(0.70), decision3
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version == v3.version

    # The champion resolves to the right files (downloaded through the server from gs://).
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        champion_uri = f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"
        local = mlflow.artifacts.download_artifacts(champion_uri, dst_path=str(tmp_path / "dl"))
        assert json.loads((Path(local) / "model_card.json").read_text())["run"] == "three"

        # Users compare runs in MLflow: the pipeline runs side by side, with their metrics.
        table = mlflow.search_runs(
            experiment_ids=[tracker.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = 'pipeline'",
            order_by=[f"metrics.{METRIC} DESC"],
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert list(table[f"metrics.{METRIC}"]) == pytest.approx([0.80, 0.70, 0.65])
    assert list(table[f"tags.{TAG_KFP_RUN_ID}"]) == ["kfp-run-3", "kfp-run-1", "kfp-run-2"]


def test_injected_mlflow_run_id_is_reused(
    mlflow_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment(f"kfp-injected-{time.time_ns()}")
    injected = client.create_run(experiment_id, run_name="kfp-made-this").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", injected)
    tracker = Tracker(mlflow_server.url, "some-other-experiment", run_root=tmp_path)
    with tracker:
        assert tracker.parent_run_id == injected
        with tracker.step("prepare_data") as step_run:
            tracker.log_metrics({"n_train": 123})
    # Nested runs follow the injected run into its experiment; the run stays open for KFP to close.
    assert client.get_run(step_run).info.experiment_id == experiment_id
    assert client.get_run(step_run).data.tags[TAG_PARENT] == injected
    assert client.get_run(injected).info.status == "RUNNING"
    assert client.get_run(injected).data.tags[TAG_ROLE] == "pipeline"


def test_unreachable_server_fails_fast_naming_the_uri(tmp_path: Path) -> None:
    uri = f"http://autoft:s3cret@127.0.0.1:{free_port()}"
    tracker = Tracker(uri, "x", run_root=tmp_path)
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as caught:
        tracker.start_pipeline_run()
    elapsed = time.monotonic() - start
    message = str(caught.value)
    assert f"http://autoft:***@127.0.0.1:{uri.rsplit(':', 1)[1]}" in message
    assert "s3cret" not in message
    assert elapsed < 30, f"took {elapsed:.1f}s: retries are not bounded"


def test_outage_mid_run_loses_nothing(mlflow_server: ServerProcess, tmp_path: Path) -> None:
    with FlakyProxy(mlflow_server.url, failures=0) as proxy:
        tracker = Tracker(proxy.url, "outage", run_root=tmp_path / "run")
        parent = tracker.start_pipeline_run()
        proxy.go_down()
        start = time.monotonic()
        # Hours of search and fine-tuning are done; the server is down while we record them.
        with tracker.step("search"):
            for i in range(3):
                tracker.log_trial(i, _hparams(i), 0.4 + 0.1 * i)
        tracker.log_metrics({METRIC: 0.61}, run_id=parent)
        version = tracker.log_model(_model_folder(tmp_path, "outage"), name=f"{MODEL_NAME}-outage")
        decision = tracker.promote_if_better(f"{MODEL_NAME}-outage", "1", METRIC, 0.61)
        tracker.finish_pipeline_run()
        assert time.monotonic() - start < 30, "after the first failure, calls are journaled without more retries"
        assert version is None and not decision.promoted
        journal = tmp_path / "run" / PENDING_FILE
        assert journal.exists() and tracker.pending_count >= 10

        proxy.heal()
        replayed = tracker.replay_pending()
    assert replayed >= 10 and tracker.pending_count == 0 and not journal.exists()

    client = MlflowClient(mlflow_server.url)
    assert client.get_run(parent).data.metrics[METRIC] == pytest.approx(0.61)
    assert client.get_run(parent).info.status == "FINISHED"
    steps = _children(client, tracker.experiment_id, parent)
    trials = _children(client, tracker.experiment_id, steps["search"].info.run_id)
    assert trials["trial-1"].data.metrics["ood_val_objective"] == pytest.approx(0.5)
    assert trials["trial-1"].data.params["w_l2init"] == "0.02"
    champion = client.get_model_version_by_alias(f"{MODEL_NAME}-outage", CHAMPION_ALIAS)
    assert champion.version == "1" and champion.tags[METRIC] == "0.61"


def test_local_default_is_sqlite_in_the_run_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_root = tmp_path / "runs" / "r1"
    tracker = Tracker.from_config(TrackingConfig(registered_model=MODEL_NAME), run_root)
    assert tracker.tracking_uri == f"sqlite:///{run_root.resolve()}/mlflow.db"
    with tracker, tracker.step("finetune"):
        tracker.log_metrics({"id_val_accuracy": 0.9})
        version = tracker.log_model(_model_folder(tmp_path, "local"))
    assert version is not None and version.version == "1"
    assert (run_root / "mlflow.db").is_file()
    # Artifacts stay in the run folder, not in ./mlruns of whatever directory the process ran in.
    assert list((run_root / "mlartifacts").rglob("model.safetensors"))
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    client = MlflowClient(tracker.tracking_uri)
    assert str(client.get_model_version_by_alias(MODEL_NAME, CANDIDATE_ALIAS).version) == "1"


def test_client_side_gs_artifact_location(gcs: GcsEmulator, tmp_path: Path) -> None:
    """MLflow's own GCS artifact repository (client side) honours STORAGE_EMULATOR_HOST."""
    bucket = gcs.new_bucket("autoft-artifacts")
    tracker = Tracker(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "gs-client",
        run_root=tmp_path,
        registered_model=MODEL_NAME,
        artifact_location=f"gs://{bucket}/mlruns",
    )
    with tracker, tracker.step("register"):
        version = tracker.log_model(_model_folder(tmp_path, "gs"))
    assert version is not None and tracker.pending_count == 0
    files = [o.relative for o in storage.list_objects(f"gs://{bucket}/mlruns")]
    assert any(f.endswith("artifacts/model/model_card.json") for f in files), files
    local = MlflowClient(tracker.tracking_uri).download_artifacts(version.run_id, "model", str(tmp_path / "back"))
    assert json.loads((Path(local) / "model_card.json").read_text())["run"] == "gs"


@pytest.mark.postgres
def test_postgres_backed_server(mlflow_server_postgres: ServerProcess, tmp_path: Path) -> None:
    tracker = Tracker(mlflow_server_postgres.url, "pg", run_root=tmp_path, registered_model=MODEL_NAME)
    parent, (version, decision) = _fake_pipeline(tracker, tmp_path, "pg", test_accuracy=0.5)
    assert decision.promoted and tracker.pending_count == 0
    client = MlflowClient(mlflow_server_postgres.url)
    steps = _children(client, tracker.experiment_id, parent)
    assert len(_children(client, tracker.experiment_id, steps["search"].info.run_id)) == 3
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS).version == version.version


def test_disabled_tracker_is_a_real_no_op(tmp_path: Path) -> None:
    tracker = Tracker.disabled()
    with tracker, tracker.step("search") as run_id:
        assert run_id is None
        assert tracker.log_trial(0, _hparams(0), 0.5) is None
        tracker.log_metrics({"x": 1.0})
        tracker.log_config(AutoFTConfig())
        assert tracker.log_model(_model_folder(tmp_path, "off")) is None
    assert not tracker.promote_if_better(MODEL_NAME, "1", METRIC, 1.0)
    assert Tracker.from_config(TrackingConfig(), tmp_path, enabled=False).enabled is False
    # Bad input is still rejected before anything is uploaded.
    with pytest.raises(FileNotFoundError, match=r"model_card\.json"):
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "model.safetensors").write_bytes(b"x")
        tracker.log_model(tmp_path / "half")
