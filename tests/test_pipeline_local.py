"""The whole pipeline through kfp.local: artifacts flow through every step into results.json; a failing step
fails the run with that step's own log; the log capture attributes parallel output to the right task."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from pipeline.local_run import PipelineRunError, TaskLogCapture, local_arguments, run_with_kfp_local

from autoft.config import AutoFTConfig
from autoft.contracts import Results
from conftest import tiny_pipeline_config

METHODS = ["zeroshot", "autoft", "autoft_wiseft"]


def tiny_config(**changes: object) -> AutoFTConfig:
    tracking = {"experiment": "kfp-local", "registered_model": "kfp-local-clip"}
    return tiny_pipeline_config("kfp-local-test", METHODS, **{"tracking": tracking, **changes})


@pytest.mark.slow
def test_a_whole_run_passes_artifacts_between_all_steps(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # gate_min_gain -1: the gate passes whatever the tiny model scores, so register runs too.
    results = run_with_kfp_local(
        tiny_config(), run_dir, search_workers=2, parameters={"gate_min_gain": -1.0}, echo=False
    )

    assert results == Results.load(run_dir / "results.json") and results.preset == "kfp-local-test"
    assert list(results.methods) == METHODS
    for row in results.methods.values():
        assert list(row.ood) == ["invert"]
        assert 0.0 <= row.ood_avg <= 1.0
    assert results.methods["autoft_wiseft"].wiseft_alpha in (0.0, 1.0)
    assert results.search["autoft"].trials_complete == 2
    assert set(results.wiseft_curves["autoft"]) == {"0.00", "1.00"}
    assert {"prepare", "search_autoft", "finetune_autoft", "evaluate"} <= set(results.timing_s)
    for name in ("report.md", "report.html", "plots/id_vs_ood.png", "plots/search_history.png", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["methods"] == METHODS

    status = json.loads((run_dir / "pipeline_status.json").read_text())
    assert status["state"] == "SUCCEEDED" and status["problems"] == []
    assert list((run_dir / "studies").glob("autoft.journal"))
    # Every step's artifacts stay in the run folder; kfp.local's scratch folders do not.
    outputs = next((run_dir / "kfp" / "outputs").iterdir())
    assert (outputs / "finetune" / "model" / "model.safetensors").is_file()
    assert {p.name for p in outputs.iterdir()} >= {"prepare-data", "build-zeroshot", "report", "gate", "register"}
    assert not (run_dir / "kfp" / "tmp").exists() and not (run_dir / "kfp" / "workspace").exists()

    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("kfp-local-clip", "champion")
    assert float(champion.tags["ood_avg"]) == pytest.approx(results.methods["autoft"].ood_avg)
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"  # ended by the exit handler
    assert run.data.tags["autoft.gate_passed"] == "true"


@pytest.mark.slow
def test_a_failing_step_fails_the_run_with_its_own_log(tmp_path: Path) -> None:
    config = tiny_config(data={"dataset": "folder", "root": str(tmp_path / "no-such-folder")})
    with pytest.raises(PipelineRunError) as failure:
        run_with_kfp_local(config, tmp_path / "run", echo=False)
    message = str(failure.value)
    assert "pipeline step 'prepare-data' failed" in message
    assert "no-such-folder" in message and "is not a folder" in message  # the step's own error, from its log
    status = json.loads((tmp_path / "run" / "pipeline_status.json").read_text())
    assert status["state"] == "FAILED"  # the exit handler still ran
    assert not (tmp_path / "run" / "results.json").exists()


def test_run_parameters_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_such_parameter"):
        run_with_kfp_local(tiny_config(), tmp_path / "a", parameters={"no_such_parameter": 1}, echo=False)
    with pytest.raises(ValueError, match="config_yaml"):
        run_with_kfp_local(tiny_config(), tmp_path / "b", parameters={"config_yaml": "{}"}, echo=False)
    with pytest.raises(ValueError, match="search_workers"):
        run_with_kfp_local(tiny_config(), tmp_path / "c", search_workers=0, echo=False)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_local_arguments_keep_passwords_out_of_parameters(tmp_path: Path) -> None:
    plain, env = local_arguments(tiny_config(), tmp_path, 2)
    assert plain["study_storage"] == str(tmp_path / "studies") and env == {}
    assert plain["mlflow_tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    secret_url = "postgresql://optuna:hunter2@db:5432/optuna"
    arguments, env = local_arguments(tiny_config(search={"n_trials": 2, "storage": secret_url}), tmp_path, 2)
    assert env == {"AUTOFT_OPTUNA_STORAGE": secret_url}
    assert "hunter2" not in json.dumps(arguments)


def test_task_log_capture_attributes_parallel_output_to_each_task() -> None:
    log = io.StringIO()
    capture = TaskLogCapture(log, console=None, tail_lines=3)
    started = threading.Barrier(2)

    def task(name: str, fail: bool) -> None:
        capture.write(f"12:00:00.000 - INFO - Executing task \x1b[96m'{name}'\x1b[0m\n")
        started.wait()
        for i in range(5):
            capture.write(f"    {name} line {i}\n")
        capture.write(f"    {name} partial")  # a line completed by the next write
        capture.write(" end\n")
        if fail:
            capture.write(f"12:00:01.000 - ERROR - Task \x1b[96m'{name}'\x1b[0m finished with status FAILURE\n")

    threads = [threading.Thread(target=task, args=("worker-a", False)), threading.Thread(target=task, args=("b", True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert capture.failures == [("b", ["b line 3", "b line 4", "b partial end"])]
    report = capture.failure_report("Pipeline failed", Path("/run/logs/kfp_local.log"))
    assert "pipeline step 'b' failed" in report and "worker-a" not in report
    assert "worker-a line 4" in log.getvalue()  # the full log keeps everything


def test_orchestration_errors_are_reported_as_failures() -> None:
    capture = TaskLogCapture(io.StringIO(), console=None)
    capture.write("ERROR Task for-loop-2-iteration-0 failed with exception: Parent input 'x' not found.\n")
    assert capture.failures == [("for-loop-2-iteration-0", ["Parent input 'x' not found."])]
