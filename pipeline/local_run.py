"""`autoft run`: the compiled pipeline, executed on this machine by kfp.local (each step a subprocess).

The run folder receives what the in-process runner writes (config.yaml, results.json, report.md/.html,
plots/, per-stage JSON) plus ``kfp/outputs`` (every artifact, models included), ``studies/`` (Optuna
journals), ``mlflow.db`` and ``logs/kfp_local.log``. A failing step raises :class:`PipelineRunError`
with that step's own log tail, not just kfp.local's "Inner task failed".
"""

from __future__ import annotations

import builtins
import collections
import json
import logging
import os
import re
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from components.runtime import STUDY_STORAGE_ENV, url_has_password
from kfp import local

from autoft.config import AutoFTConfig, save_config
from autoft.contracts import Results
from pipeline.autoft_pipeline import DEFAULT_SEARCH_WORKERS, build_pipeline, config_parameter
from pipeline.cluster import ClusterSettings

TAIL_LINES = 40
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own log lines (kfp==2.17.3, kfp/local/task_dispatcher.py), logged from the thread that
# runs the task; tests/test_pipeline_local.py fails if a kfp upgrade changes them.
TASK_START = re.compile(r"Executing task '([^']+)'")
TASK_FAILED = re.compile(r"Task '([^']+)' finished with status FAILURE")
# The orchestrator's own errors (e.g. resolving a loop's inputs), logged before any step output exists.
ORCHESTRATION_FAILED = re.compile(r"Task (\S+) failed with exception: (.*)")


class PipelineRunError(RuntimeError):
    """A step of a kfp.local run failed; the message names it and shows the end of its log."""


class TaskLogCapture:
    """Stands in for ``sys.stdout`` during a kfp.local run: writes everything to the log file (and the
    console when ``echo``), and keeps the last lines of each running task, per thread.

    kfp.local prints a task's streamed output and its "Executing task" line from the thread that runs
    the task (parallel loop iterations run in a thread pool), so a thread's lines since its latest
    "Executing task" belong to that task.
    """

    def __init__(self, log_file: TextIO, console: TextIO | None, tail_lines: int = TAIL_LINES) -> None:
        self._log = log_file
        self._console = console
        self._lock = threading.Lock()
        self._partial: dict[int, str] = collections.defaultdict(str)
        self._task: dict[int, str] = {}
        self._tails: dict[int, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=tail_lines)
        )
        self.failures: list[tuple[str, list[str]]] = []

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self._lock:
            self._log.write(text)
            if self._console is not None:
                self._console.write(text)
            pending = self._partial[thread] + text
            *lines, self._partial[thread] = pending.split("\n")
            for line in lines:
                self._take(thread, ANSI_ESCAPE.sub("", line))
        return len(text)

    def _take(self, thread: int, line: str) -> None:
        started = TASK_START.search(line)
        if started:
            self._task[thread] = started.group(1)
            self._tails[thread].clear()
            return
        failed = TASK_FAILED.search(line)
        if failed:
            self.failures.append((failed.group(1), list(self._tails[thread])))
            return
        orchestration = ORCHESTRATION_FAILED.search(line)
        if orchestration:
            self.failures.append((orchestration.group(1), [orchestration.group(2)]))
            return
        if line.strip():
            self._tails[thread].append(line.strip())

    def flush(self) -> None:
        with self._lock:
            self._log.flush()
            if self._console is not None:
                self._console.flush()

    def isatty(self) -> bool:
        return False

    def failure_report(self, kfp_message: str, log_path: Path) -> str:
        if not self.failures:
            return f"{ANSI_ESCAPE.sub('', kfp_message)} (no step log was captured; see {log_path})"
        task, tail = self.failures[0]
        others = sorted({name for name, _ in self.failures[1:]} - {task})
        also = f" (also failed: {', '.join(others)})" if others else ""
        body = "\n".join(f"    {line.strip()}" for line in tail)
        return f"pipeline step {task!r} failed{also}; the end of its log:\n{body}\nfull log: {log_path}"


@contextmanager
def _captured_output(log_path: Path, echo: bool) -> Iterator[TaskLogCapture]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    original_stdout, original_print = sys.stdout, builtins.print
    root = logging.getLogger()
    with open(log_path, "w", encoding="utf-8") as log_file:
        capture = TaskLogCapture(log_file, original_stdout if echo else None)
        # kfp.local logs its orchestration errors through the root logger, outside any task's handler.
        handler = logging.StreamHandler(capture)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        sys.stdout = capture  # type: ignore[assignment]
        root.addHandler(handler)
        try:
            yield capture
        finally:
            root.removeHandler(handler)
            # kfp.local's own loggers bound sys.stdout (the capture) while it was swapped in; the log file
            # closes below, so they would fail on every later record ("I/O operation on closed file").
            for logger in [root, *logging.Logger.manager.loggerDict.values()]:
                for stale in list(getattr(logger, "handlers", [])):
                    if getattr(stale, "stream", None) is capture:
                        logger.removeHandler(stale)
            sys.stdout = original_stdout
            # kfp.local indents task output by swapping builtins.print per task; two parallel tasks can
            # restore each other's replacement, leaving print indented for good. Put the original back.
            builtins.print = original_print


@contextmanager
def _child_environment(values: dict[str, str]) -> Iterator[None]:
    """Environment the step subprocesses inherit (kfp.local starts them with this process's env)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def local_arguments(config: AutoFTConfig, run_dir: Path, search_workers: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Pipeline arguments for a local run, and extra environment for its steps.

    A study storage URL with a password travels as ``$AUTOFT_OPTUNA_STORAGE``, as on the cluster; the
    steps refuse passwords in parameters, which Kubeflow would show.
    """
    env: dict[str, str] = {}
    storage = config.search.storage.strip()
    if storage and url_has_password(storage):
        env[STUDY_STORAGE_ENV] = storage
        config = config.model_copy(deep=True)
        config.search.storage = ""
        storage = ""
    arguments = {
        "config_yaml": config_parameter(config),
        "config_overrides": [],
        "search_workers": search_workers,
        "study_storage": storage or ("" if env else str(run_dir / "studies")),
        "mlflow_tracking_uri": config.tracking.mlflow_uri or f"sqlite:///{run_dir / 'mlflow.db'}",
        "output_dir": str(run_dir),
    }
    return arguments, env


def _results_artifact(pipeline_root: Path, log_path: Path) -> Results:
    """results.json as the report step's output artifact (``<root>/<run>/report/results``), copied here."""
    found = sorted(path for path in pipeline_root.rglob("results") if path.parent.name == "report" and path.is_file())
    if len(found) != 1:
        raise PipelineRunError(f"expected one report/results artifact under {pipeline_root}, found {found}; {log_path}")
    results = Results.load(found[0])
    results.save(pipeline_root.parent.parent / "results.json")
    return results


def run_with_kfp_local(
    config: AutoFTConfig,
    run_dir: Path,
    *,
    search_workers: int = DEFAULT_SEARCH_WORKERS,
    parameters: dict[str, Any] | None = None,
    echo: bool = True,
    runner: local.SubprocessRunner | local.DockerRunner | None = None,
    retries: bool = False,
    step_image: str | None = None,
    shared_run_folder: bool = True,
) -> Results:
    """Run the whole pipeline through kfp.local into ``run_dir``; returns the results (results.json).

    ``retries`` keeps the cluster's retry policies (kfp.local honours them); off by default, so a failing
    step on one machine fails the run at once instead of repeating after a back-off. ``step_image`` is the
    image the tasks name (DockerRunner runs it). ``shared_run_folder=False`` runs as a cluster does: no
    ``output_dir`` for the steps (the study and MLflow must then be servers), results.json read from the
    report step's output artifact.

    ``parameters`` sets other pipeline parameters (e.g. ``gate_min_gain``); the config, the folders and
    the study/MLflow locations are derived from ``config`` and ``run_dir``. ``runner`` defaults to
    subprocesses in this venv; pipeline/docker_run.py passes a DockerRunner (steps in the step image).
    """
    if search_workers < 1:
        raise ValueError(f"search_workers must be >= 1, got {search_workers}")
    run_dir = Path(run_dir).resolve()
    settings = ClusterSettings(search_parallelism=search_workers, **({"step_image": step_image} if step_image else {}))
    pipeline = build_pipeline(config, settings if retries else settings.without_retries())
    arguments, env = local_arguments(config, run_dir, search_workers)
    extra = dict(parameters or {})
    declared = set(pipeline.component_spec.inputs or {})
    refused = sorted((set(extra) - declared) | (set(extra) & {"config_yaml", "output_dir"}))
    if refused:
        allowed = sorted(declared - {"config_yaml", "output_dir"})
        raise ValueError(f"pipeline parameters {refused} cannot be set here; allowed: {allowed}")
    arguments.update(extra)
    if not shared_run_folder:
        arguments["output_dir"] = ""

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "pipeline_status.json"):
        (run_dir / stale).unlink(missing_ok=True)
    save_config(config, run_dir / "config.yaml")
    kfp_dir = run_dir / "kfp"
    pipeline_root, workspace, tmp = kfp_dir / "outputs", kfp_dir / "workspace", kfp_dir / "tmp"
    for folder in (pipeline_root, workspace, tmp):
        folder.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "logs" / "kfp_local.log"

    failure: RuntimeError | None = None
    # TMPDIR: kfp.local writes each step's program and leftovers to the temp dir; keep them in the run.
    with _child_environment({"TMPDIR": str(tmp), **env}), _captured_output(log_path, echo) as capture:
        local.init(
            runner=runner or local.SubprocessRunner(use_venv=False),
            pipeline_root=str(pipeline_root),
            workspace_root=str(workspace),
            raise_on_error=True,
        )
        with warnings.catch_warnings():
            # The step image is not a "python" image; locally the steps run in this venv anyway.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
            # Kubernetes settings (resources, display names) have no local meaning; kfp.local says so per task.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
            try:
                pipeline(**arguments)
            except RuntimeError as error:
                failure = error
    if failure is not None:
        raise PipelineRunError(capture.failure_report(str(failure), log_path)) from failure
    if not shared_run_folder:
        return _results_artifact(pipeline_root, log_path)
    status_path = run_dir / "pipeline_status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    if status.get("state") != "SUCCEEDED":
        raise PipelineRunError(f"the pipeline ended in state {status.get('state')!r}: {status}; full log: {log_path}")
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise PipelineRunError(f"the pipeline succeeded but wrote no {results_path}; full log: {log_path}")
    shutil.rmtree(tmp, ignore_errors=True)
    return Results.load(results_path)
