"""The whole pipeline through kfp.local: artifacts flow through every step into results.json; a failing step
fails the run with that step's own log; the log capture attributes parallel output to the right task."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image
from pipeline.local_run import (
    INPROCESS_STEPS,
    PipelineRunError,
    TaskLogCapture,
    fork_steps,
    lightweight_call,
    local_arguments,
    run_step_forked,
    run_with_kfp_local,
    task_key,
)

import browser
from autoft.config import AutoFTConfig
from autoft.contracts import Results
from conftest import tiny_pipeline_config
from servers import start_mlflow_server

METHODS = ["zeroshot", "ft", "autoft", "ft_wiseft", "autoft_wiseft"]
LR_GRID = [1e-4, 3e-4]  # ft: two full (1-epoch) fine-tunes side by side, then the best ID-val one


def tiny_config(**changes: object) -> AutoFTConfig:
    tracking = {"experiment": "kfp-local", "registered_model": "kfp-local-clip"}
    baselines = {"lr_grid": LR_GRID}
    return tiny_pipeline_config("kfp-local-test", METHODS, **{"tracking": tracking, "baselines": baselines, **changes})


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Results]:
    """One tiny run of the whole pipeline through kfp.local (several tests read it)."""
    run_dir = tmp_path_factory.mktemp("kfp-local") / "run"
    # gate_min_gain -1: the gate passes whatever the tiny model scores, so register runs too.
    results = run_with_kfp_local(
        tiny_config(), run_dir, search_workers=2, parameters={"gate_min_gain": -1.0}, echo=False
    )
    return run_dir, results


@pytest.mark.slow
def test_a_whole_run_passes_artifacts_between_all_steps(whole_run: tuple[Path, Results]) -> None:
    run_dir, results = whole_run
    assert results == Results.load(run_dir / "results.json") and results.preset == "kfp-local-test"
    assert list(results.methods) == METHODS
    for row in results.methods.values():
        assert list(row.ood) == ["invert"]
        assert 0.0 <= row.ood_avg <= 1.0
    assert results.methods["autoft_wiseft"].wiseft_alpha in (0.0, 1.0)
    assert results.wiseft_select_on == "ood_val"
    # ft: one fine-tune per lr of the grid, the best ID-val point kept (ties: the smaller lr).
    grid = results.methods["ft"].lr_grid
    assert [p.lr for p in grid] == LR_GRID and sum(p.chosen for p in grid) == 1
    best = max(grid, key=lambda p: (p.best_id_val, -p.lr))
    assert best.chosen and results.methods["ft"].hparams.lr == best.lr
    assert results.methods["ft"].id_val == pytest.approx(best.best_id_val)
    assert results.search["autoft"].trials_complete == 2
    assert set(results.wiseft_curves["autoft"]) == {"0.00", "1.00"}
    assert {"prepare", "search_autoft", "finetune_autoft", "evaluate"} <= set(results.timing_s)
    # Every task's wall time as the runner saw it (start-up included), and the whole run's.
    tasks = {key.removeprefix("kfp/") for key in results.timing_s if key.startswith("kfp/")}
    assert {"prepare-data", "build-zeroshot", "create-study", "select-best", "finetune", "report", "gate"} <= tasks
    # Loop iterations are told apart by their index; the evaluate loop runs in two shards.
    assert {"search-worker#0", "search-worker#1", "evaluate#0", "evaluate#1", "register", "finalize"} <= tasks
    assert {"grid-points", "finetune-grid-point#0", "finetune-grid-point#1", "select-grid"} <= tasks
    assert results.timing_s["kfp_total"] > sum(results.timing_s[f"kfp/{t}"] for t in ("prepare-data", "finetune"))
    for task in tasks:  # each task's own log
        assert (run_dir / "logs" / f"{task.replace('#', '_')}.log").read_text().strip(), task
    assert "study trials" in (run_dir / "logs" / "search-worker_1.log").read_text()
    for name in ("report.md", "report.html", "plots/id_vs_ood.png", "config.yaml"):
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


def _runs(run_dir: Path):
    mlflow.set_tracking_uri(f"sqlite:///{run_dir / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["kfp-local"])


@pytest.mark.slow
def test_mlflow_holds_the_run_tree(whole_run: tuple[Path, Results]) -> None:
    run_dir, results = whole_run
    runs = _runs(run_dir)
    pipeline = runs[runs["tags.autoft.role"] == "pipeline"]
    assert len(pipeline) == 1 and pipeline["status"].iloc[0] == "FINISHED"  # ended by the exit handler
    parent = pipeline["run_id"].iloc[0]
    assert pipeline["tags.autoft.gate_passed"].iloc[0] == "true"
    methods = runs[runs["tags.autoft.role"] == "method"].set_index("tags.autoft.method")
    assert sorted(methods.index) == sorted(METHODS)
    assert set(methods["tags.mlflow.parentRunId"]) == {parent}
    for method in METHODS:
        assert methods.loc[method, "metrics.ood/invert"] == pytest.approx(results.methods[method].ood["invert"])
        assert methods.loc[method, "metrics.id_test"] == pytest.approx(results.methods[method].id_test)
    trials = runs[runs["tags.autoft.role"] == "trial"]
    assert len(trials) == 2 and set(trials["tags.mlflow.parentRunId"]) == {methods.loc["autoft", "run_id"]}
    # Each lr of ft's grid is a nested run of ft's run, holding that point's curves and outcome.
    points = runs[(runs["tags.autoft.role"] == "grid_point") & (runs["tags.autoft.method"] == "ft")]
    assert set(points["tags.mlflow.parentRunId"]) == {methods.loc["ft", "run_id"]}
    assert sorted(points["params.lr"].astype(float)) == sorted(p.lr for p in results.methods["ft"].lr_grid)
    assert set(points["status"]) == {"FINISHED"} and points["metrics.best_id_val"].notna().all()
    epoch_curves = [column for column in points.columns if column.startswith("metrics.epoch/")]
    assert epoch_curves and points[epoch_curves].notna().any(axis=1).all(), "each point holds its epoch curves"
    ft_metrics = [k for k, v in methods.loc["ft"].items() if k.startswith("metrics.") and not pd.isna(v)]
    assert not [k for k in ft_metrics if re.match(r"metrics\.(epoch|train)/lr\d", k)], "no grid curves in ft's run"
    # Each method run spans its own steps (zero-shot model; create study to fine-tune), not the whole pipeline.
    assert methods.loc["zeroshot", "end_time"] <= methods.loc["autoft", "start_time"]
    assert methods.loc["autoft", "end_time"] == methods.loc["autoft_wiseft", "end_time"] < pipeline["end_time"].iloc[0]
    # The pipeline run spans the pipeline: it started in the first step and ended in the last.
    stages = [seconds for key, seconds in results.timing_s.items() if not key.startswith("kfp")]
    assert (pipeline["end_time"].iloc[0] - pipeline["start_time"].iloc[0]).total_seconds() > max(stages)


@pytest.mark.slow
def test_the_registered_champion_serves_a_folder_of_digit_images(whole_run: tuple[Path, Results]) -> None:
    run_dir, _ = whole_run
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/kfp-local-clip@champion")
    images = np.load(next((run_dir / "kfp" / "outputs").iterdir()) / "prepare-data" / "prepared" / "id_test.npz")
    folder = run_dir / "some-digits"
    folder.mkdir()
    for index, image in enumerate(images["images"][:5]):
        Image.fromarray(image).save(folder / f"{index}.png")
    frame = pd.DataFrame({"image": [path.read_bytes() for path in sorted(folder.glob("*.png"))]})
    predicted = model.predict(frame)
    digits = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    assert len(predicted) == 5 and set(predicted["label"]) <= digits
    assert predicted["probability"].between(0, 1).all()


@pytest.mark.slow
def test_the_mlflow_ui_shows_the_run_in_a_real_browser(whole_run: tuple[Path, Results], tmp_path: Path) -> None:
    """Headless Chromium on `mlflow server` over the run's database: the pipeline run with its dataset
    inputs, its method children side by side in the compare view, and the champion in the registry."""
    browser.require_chromium()
    run_dir, _ = whole_run
    server = start_mlflow_server(f"sqlite:///{run_dir / 'mlflow.db'}", str(run_dir / "mlartifacts"), tmp_path)
    try:
        check_mlflow_ui(server.url, "kfp-local", "kfp-local-clip", tmp_path)
    finally:
        server.stop()


def check_mlflow_ui(url: str, experiment: str, registered_model: str | None, shots: Path) -> Path:
    """What a user sees in the MLflow UI after a run; returns the screenshot of the compare view.

    ``registered_model`` None: the run's gate promoted nothing, so there is no champion to find."""
    client = MlflowClient(url)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get("autoft.role") == "pipeline")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]

    listing = browser.page_text(browser.mlflow_page(url, f"/experiments/{experiment_id}"))
    assert "Runs" in listing and parent.info.run_name in listing, listing[:2000]
    assert "digits/id_train" in listing and "training" in listing, "the Dataset column is filled"
    assert "Overview Usage Quality" not in listing, "opened in the GenAI view"

    route = browser.compare_route([c.info.run_id for c in children], experiment_id)
    compared = browser.page_text(browser.mlflow_page(url, route))
    assert f"Comparing {len(children)} Runs" in compared
    for child in children:
        assert child.info.run_name in compared
    # The metrics table is a scrolling box: with a fine-tune's epoch/* curves, ood_avg sorts below its fold.
    assert "id_test" in compared and re.search(r"\bood/\w+", compared), "the same metric names, side by side"
    shot = browser.screenshot(browser.mlflow_page(url, route), shots / "mlflow-compare-methods.png")
    assert shot.stat().st_size > 20_000

    if registered_model is None:
        return shot
    registry = browser.page_text(browser.mlflow_page(url, f"/models/{registered_model}"))
    assert "champion" in registry and "Version 1" in registry, registry[:2000]
    return shot


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


def test_the_console_gets_one_line_per_task_and_each_task_its_own_log(tmp_path: Path) -> None:
    console, log = io.StringIO(), io.StringIO()
    now = [100.0]
    names = {"search-worker": "search worker: autoft", "prepare-data": "prepare data"}
    capture = TaskLogCapture(log, console, task_logs=tmp_path / "logs", names=names, clock=lambda: now[0])
    capture.write("12:00:00.000 - INFO - Executing task \x1b[96m'prepare-data'\x1b[0m\n")
    capture.write("    Downloading nothing\n")
    now[0] += 4.25
    capture.write("12:00:04.000 - INFO - Task \x1b[96m'prepare-data'\x1b[0m finished with status \x1b[92mSUCCESS\n")
    capture.write("12:00:04.000 - INFO - Executing task \x1b[96m'search-worker-iteration-1'\x1b[0m\n")
    capture.write('    autoft-progress {"bar": "search autoft", "total": 4, "advance": 1}\n')
    capture.write("    a traceback line\n")
    now[0] += 2.0
    capture.write("12:00:06 - ERROR - Task \x1b[96m'search-worker-iteration-1'\x1b[0m finished with status FAILURE\n")
    capture.write("12:00:06.000 - INFO - Skipping conditional task condition-7 (condition evaluated to False)\n")
    capture.close()

    shown = console.getvalue()
    assert "Downloading" not in shown and "Executing" not in shown  # the stream stays in the logs
    assert [line.split() for line in shown.splitlines() if line.strip()] == [
        ["ok", "prepare", "data", "4.2", "s"],
        ["FAILURE", "search", "worker:", "autoft", "#1", "2.0", "s"],
        ["skipped", "condition-7"],
    ]
    assert capture.timing() == {"kfp/prepare-data": 4.25, "kfp/search-worker-iteration-1": 2.0}
    assert "Downloading nothing" in (tmp_path / "logs" / "prepare-data.log").read_text()
    worker_log = (tmp_path / "logs" / "search-worker-iteration-1.log").read_text()
    assert "a traceback line" in worker_log and "Downloading" not in worker_log
    assert capture.failures == [("search-worker-iteration-1", ["a traceback line"])]
    report = capture.failure_report("Pipeline failed", tmp_path / "logs" / "kfp_local.log")
    assert "search-worker-iteration-1.log" in report and "a traceback line" in report
    assert "Downloading nothing" in log.getvalue()  # the full log keeps everything


def test_progress_lines_become_bars_on_a_terminal() -> None:
    console = io.StringIO()
    capture = TaskLogCapture(io.StringIO(), console, bars=True)
    capture.write("12:00:00.000 - INFO - Executing task \x1b[96m'finetune'\x1b[0m\n")
    for _ in range(2):
        capture.write('    autoft-progress {"bar": "fine-tune ft", "total": 3, "advance": 1}\n')
    capture.write("    autoft-progress not json\n")  # a malformed line is ignored
    assert "fine-tune ft" in console.getvalue() and "2/3" in console.getvalue()
    capture.close()


def test_light_steps_are_recognised_in_kfps_own_command() -> None:
    from components.create_study.component import create_study

    container = create_study.component_spec.implementation.container
    command = [*container.command, *[arg.replace("{{$}}", '{"inputs": {}}') for arg in container.args]]
    function, source, executor_input = lightweight_call(command)
    assert function == "create_study" and function in INPROCESS_STEPS
    assert "def create_study(" in source and json.loads(executor_input) == {"inputs": {}}
    assert lightweight_call(["python", "-c", "print(1)"]) is None


def test_a_forked_step_streams_its_output_and_reports_its_exit_status(tmp_path: Path, capsys) -> None:
    ok = "def step():\n    import os\n    print('hello from', os.environ['AUTOFT_FORK_TEST'])\n"
    out = tmp_path / "executor_output.json"
    executor_input = json.dumps({"inputs": {}, "outputs": {"outputFile": str(out)}})
    assert run_step_forked(("step", ok, executor_input), {"AUTOFT_FORK_TEST": "the child"}) == 0
    assert "hello from the child" in capsys.readouterr().out
    assert out.is_file()  # kfp's executor wrote the step's output file
    assert "AUTOFT_FORK_TEST" not in os.environ  # the child's environment only

    failing = "def step():\n    raise RuntimeError('boom in the step')\n"
    assert run_step_forked(("step", failing, executor_input), {}) == 1
    assert "RuntimeError: boom in the step" in capsys.readouterr().out


def test_task_keys_come_from_the_task_output_folder() -> None:
    def executor_input(path: str) -> str:
        return json.dumps({"outputs": {"outputFile": path}})

    assert task_key(executor_input("/r/autoft-1/prepare-data/executor_output.json")) == "prepare-data"
    assert task_key(executor_input("/r/autoft-1/for-loop-2-iteration-1/search-worker/executor_output.json")) == (
        "search-worker#1"
    )
    assert task_key("{}") == "step"


def test_only_the_cli_forks_steps_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that has run parallel torch ops (a test, a notebook) must not fork steps: libgomp's pool
    # does not survive fork and the step hangs; `autoft run` forks (it only imports before it forks).
    monkeypatch.delenv("AUTOFT_LOCAL_LAUNCH", raising=False)
    config = tiny_config()
    assert fork_steps(config) is False
    assert fork_steps(config, default="fork") is True
    monkeypatch.setenv("AUTOFT_LOCAL_LAUNCH", "subprocess")
    assert fork_steps(config, default="fork") is False
    monkeypatch.setenv("AUTOFT_LOCAL_LAUNCH", "spawn")
    with pytest.raises(ValueError, match="must be fork or subprocess"):
        fork_steps(config)
