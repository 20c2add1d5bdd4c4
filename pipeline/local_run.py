"""`autoft run`: the compiled pipeline, executed on this machine by kfp.local (each step a subprocess).

The run folder receives what the in-process runner writes (config.yaml, results.json, report.md/.html,
plots/, per-stage JSON) plus ``kfp/outputs`` (every artifact, models included), ``studies/`` (Optuna
journals), ``mlflow.db``, ``logs/kfp_local.log`` (kfp.local's whole stream) and ``logs/<task>.log`` (each
task's). The console shows one line per task and progress bars. A failing step raises
:class:`PipelineRunError` with that step's own log tail, not just kfp.local's "Inner task failed".
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from components.runtime import PROGRESS_MARK, STUDY_STORAGE_ENV, url_has_password
from kfp import local
from kfp.dsl.graph_component import GraphComponent
from tqdm.auto import tqdm

from autoft.config import AutoFTConfig, save_config
from autoft.contracts import Results
from autoft.errors import AutoFTError
from autoft.threads import PARALLEL_TASKS_ENV
from pipeline.autoft_pipeline import DEFAULT_SEARCH_WORKERS, build_pipeline, config_parameter
from pipeline.cluster import ClusterSettings

TAIL_LINES = 40
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own log lines (kfp==2.17.3, kfp/local/task_dispatcher.py), logged from the thread that
# runs the task; tests/test_pipeline_local.py fails if a kfp upgrade changes them.
TASK_START = re.compile(r"Executing task '([^']+)'")
TASK_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
TASK_SKIPPED = re.compile(r"Skipping (?:conditional )?task (\S+?):? \(?(?:upstream|condition)")
# kfp.local runs at most this many loop iterations at once (kfp/local/orchestrator/enhanced_dag_orchestrator.py,
# ParallelExecutor.conservative_max); the steps split the machine's cores between them.
KFP_LOCAL_MAX_PARALLEL = 2
# The orchestrator's own errors (e.g. resolving a loop's inputs), logged before any step output exists.
ORCHESTRATION_FAILED = re.compile(r"Task (\S+) failed with exception: (.*)")


class PipelineRunError(AutoFTError, RuntimeError):
    """A step of a kfp.local run failed; the one-line message names it, its error and its log file."""

    exit_code = 1  # what went wrong is in the step's log: its input, or the environment it met


# The line of a step's log that says what failed: a Python exception's last line ("pkg.mod.SomeError: ...").
EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*(\w+(?:Error|Exception|Failed|NotFound|Interrupt)):\s*(.*)$")


def step_error_line(tail: list[str]) -> str:
    """The cause of a step's failure in one line: its last exception line, else its last log line."""
    lines = [ANSI_ESCAPE.sub("", line).strip() for line in tail if line.strip()]
    for line in reversed(lines):
        match = EXCEPTION_LINE.match(line)
        if match:
            return f"{match.group(1)}: {match.group(2)}" if match.group(2) else match.group(1)
    return lines[-1] if lines else "(no output)"


ITERATION = re.compile(r"^(.*)-iteration-(\d+)$")
LOOP_ITERATION = re.compile(r"for-loop-\d+-iteration-(\d+)")
SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class TaskRecord:
    """One task as the local runner saw it: wall seconds from its start to its end (process start-up,
    imports and kfp.local's own work on its inputs and outputs included)."""

    name: str
    started: float
    seconds: float | None = None
    state: str = "RUNNING"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def task_display_names(pipeline: GraphComponent) -> dict[str, str]:
    """kfp.local's task names (the IR's task keys) mapped to the readable names the Kubeflow UI shows."""
    spec = pipeline.pipeline_spec
    names: dict[str, str] = {}
    for dag in [spec.root.dag, *(component.dag for component in spec.components.values())]:
        for key, task in dag.tasks.items():
            names[key] = task.task_info.name or key
    return names


def _base_name(task: str) -> str:
    return task.partition("#")[0]


def display_name(task: str, names: dict[str, str]) -> str:
    base, _, number = task.partition("#")
    if number:
        return f"{names.get(base, base)} #{number}"
    looped = ITERATION.match(task)
    if looped:
        return f"{names.get(looped.group(1), looped.group(1))} #{looped.group(2)}"
    return names.get(task, task)


class TaskLogCapture:
    """Stands in for ``sys.stdout`` during a kfp.local run.

    Everything goes to the run's full log; each task's lines also go to ``logs/<task>.log`` (when
    ``task_logs`` is a folder). The console (when given) gets a compact view: one line per finished
    task (name, state, seconds) and progress bars for the search and fine-tuning, drawn from the
    ``autoft-progress`` lines the steps print. ``verbose`` also echoes the full stream to the console.

    kfp.local prints a task's streamed output and its "Executing task" line from the thread that runs
    the task (parallel loop iterations run in a thread pool), so a thread's lines since its latest
    "Executing task" belong to that task.
    """

    def __init__(
        self,
        log_file: TextIO,
        console: TextIO | None,
        tail_lines: int = TAIL_LINES,
        *,
        task_logs: Path | None = None,
        names: dict[str, str] | None = None,
        verbose: bool = False,
        bars: bool | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._log = log_file
        self._console = console
        self._verbose = verbose
        # Progress bars on a terminal (None: when the console is one); a log file or pipe gets the task lines.
        self._show_bars = console is not None and not verbose and (_is_terminal(console) if bars is None else bars)
        self._task_logs = task_logs
        self._names = names or {}
        self._clock = clock
        self._lock = threading.Lock()
        self._partial: dict[int, str] = collections.defaultdict(str)
        self._task: dict[int, str] = {}
        self._task_files: dict[str, TextIO] = {}
        self._tails: dict[int, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=tail_lines)
        )
        self._bars: dict[str, tqdm] = {}
        self.failures: list[tuple[str, list[str]]] = []
        self.tasks: dict[str, TaskRecord] = {}
        self._launched = False  # the launcher reports tasks (begin/end); else kfp.local's log lines do

    def write(self, text: str) -> int:
        thread = threading.get_ident()
        with self._lock:
            self._log.write(text)
            if self._verbose and self._console is not None:
                self._console.write(text)
            pending = self._partial[thread] + text
            *lines, self._partial[thread] = pending.split("\n")
            for line in lines:
                self._take(thread, ANSI_ESCAPE.sub("", line))
        return len(text)

    def begin(self, task: str) -> None:
        """The launcher starts ``task`` in this thread (more reliable than kfp.local's log lines, which it
        loses for parallel tasks: each resets the root logger's handlers and level when it ends)."""
        with self._lock:
            self._launched = True
            self._start(threading.get_ident(), task)

    def end(self, task: str, exit_code: int) -> None:
        with self._lock:
            self._finish(task, "SUCCESS" if exit_code == 0 else "FAILURE", threading.get_ident())

    def _start(self, thread: int, task: str) -> None:
        self._task[thread] = task
        self._tails[thread].clear()
        self.tasks[task] = TaskRecord(task, self._clock())
        self._open_task_log(task)

    def _take(self, thread: int, line: str) -> None:
        started = TASK_START.search(line)
        if started and not self._launched:
            task = self._unique(started.group(1))
            self._start(thread, task)
            self._task_line(task, line)
            return
        task = self._task.get(thread)
        if task is not None:
            self._task_line(task, line)
        finished = TASK_FINISHED.search(line)
        if finished and self._launched:
            return
        if finished:
            # kfp.local logs a loop's iterations under the task's name: this thread's task is the one.
            name = task if task is not None and _base_name(task) == finished.group(1) else finished.group(1)
            self._finish(name, finished.group(2), thread)
            return
        skipped = TASK_SKIPPED.search(line)
        if skipped:
            self._say(f"{'skipped':>7}  {display_name(skipped.group(1), self._names)}")
            return
        orchestration = ORCHESTRATION_FAILED.search(line)
        if orchestration:
            self.failures.append((orchestration.group(1), [orchestration.group(2)]))
            return
        stripped = line.strip()
        if stripped.startswith(PROGRESS_MARK):
            self._progress(stripped.removeprefix(PROGRESS_MARK))
        elif stripped:
            self._tails[thread].append(stripped)

    def _unique(self, name: str) -> str:
        """``name``, or ``name#N`` for its N-th run (kfp.local names every loop iteration alike)."""
        if name not in self.tasks:
            return name
        count = sum(1 for key in self.tasks if _base_name(key) == name)
        return f"{name}#{count}"

    def task_log(self, task: str) -> Path | None:
        return None if self._task_logs is None else self._task_logs / f"{SAFE_NAME.sub('_', task)}.log"

    def _open_task_log(self, task: str) -> None:
        path = self.task_log(task)
        if path is None:
            return
        previous = self._task_files.pop(task, None)
        if previous is not None:
            previous.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._task_files[task] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _task_line(self, task: str, line: str) -> None:
        handle = self._task_files.get(task)
        if handle is not None:
            handle.write(line + "\n")

    def _finish(self, task: str, state: str, thread: int | None) -> None:
        record = self.tasks.setdefault(task, TaskRecord(task, self._clock()))
        if record.seconds is None:
            record.seconds = round(self._clock() - record.started, 3)
        record.state = state
        if state != "SUCCESS" and thread is not None:
            self.failures.append((task, list(self._tails[thread])))
        shown = "ok" if state == "SUCCESS" else state
        self._say(f"{shown:>7}  {display_name(task, self._names):<44} {record.seconds:7.1f} s")
        handle = self._task_files.get(task)
        if handle is not None:
            handle.flush()

    def _progress(self, payload: str) -> None:
        try:
            item = json.loads(payload)
            bar_name, total, advance = str(item["bar"]), int(item["total"]), int(item.get("advance", 1))
        except (ValueError, KeyError, TypeError):
            return
        if not self._show_bars:
            return
        bar = self._bars.get(bar_name)
        if bar is None:
            bar = self._bars[bar_name] = tqdm(
                total=total, desc=f"{bar_name:<24}", unit="it", file=self._console, leave=False, dynamic_ncols=True
            )
        bar.update(advance)
        bar.refresh()
        if bar.n >= bar.total:
            bar.close()
            self._bars.pop(bar_name)

    def _say(self, line: str) -> None:
        if self._console is not None and not self._verbose:
            tqdm.write(line, file=self._console)

    def close(self) -> None:
        """End the view: unfinished tasks are marked (a failed run stops them), bars and task logs closed."""
        with self._lock:
            for record in self.tasks.values():
                if record.seconds is None:
                    record.seconds = round(self._clock() - record.started, 3)
                    record.state = "STOPPED"
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            for handle in self._task_files.values():
                handle.close()
            self._task_files.clear()

    def timing(self) -> dict[str, float]:
        """Wall seconds of every task, as ``kfp/<task>`` keys for results.json."""
        return {f"kfp/{name}": record.seconds or 0.0 for name, record in self.tasks.items()}

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
        own = self.task_log(task)
        where = own if own is not None and own.is_file() else log_path
        return f"pipeline step {task!r} failed{also}: {step_error_line(tail)}; full log: {where}"


@contextmanager
def _captured_output(
    log_path: Path, echo: bool, names: dict[str, str] | None = None, verbose: bool = False
) -> Iterator[TaskLogCapture]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    original_stdout, original_print = sys.stdout, builtins.print
    root = logging.getLogger()
    with open(log_path, "w", encoding="utf-8") as log_file:
        capture = TaskLogCapture(
            log_file,
            original_stdout if echo else None,
            task_logs=log_path.parent,
            names=names,
            verbose=verbose,
        )
        # kfp.local logs its orchestration errors through the root logger, outside any task's handler.
        handler = logging.StreamHandler(capture)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        sys.stdout = capture  # type: ignore[assignment]
        root.addHandler(handler)
        try:
            yield capture
        finally:
            capture.close()
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


# Steps whose work is far below their process start-up (Python, kfp and the config: ~3 s): a local run
# executes them in this process, through kfp's own executor with the same executor input, instead of a
# subprocess. The DAG, the components and their inputs and outputs are the same; a cluster runs each in a pod.
INPROCESS_STEPS = ("create_study", "select_best", "grid_points")
EXECUTOR_MODULE = "kfp.dsl.executor_main"
# How the other steps start: "fork" (default where fork exists and the steps run on the CPU) forks each from
# this process after importing what they import once; "subprocess" starts a new interpreter, as kfp.local does.
LAUNCH_ENV = "AUTOFT_LOCAL_LAUNCH"
PRELOADED_MODULES = (
    "kfp.dsl.executor",
    "torch",
    "autoft.stages",
    "autoft.study_stages",
    "autoft.report",
    "components.runtime",
    "components.tracking",
    "sklearn.metrics",
    "mlflow",
    "mlflow.pyfunc",
)
BUILTIN_PRINT = builtins.print
_FORK_LOCK = threading.Lock()


def lightweight_call(full_command: list[str]) -> tuple[str, str, str] | None:
    """(function name, component source, executor input JSON) of a lightweight Python component's command
    (kfp/dsl/component_factory.py: ``sh -ec <script> <source> --executor_input X --function_to_execute F``)."""
    if len(full_command) < 4 or full_command[0] != "sh" or EXECUTOR_MODULE not in full_command[2]:
        return None
    source, args = full_command[3], full_command[4:]
    try:
        executor_input = args[args.index("--executor_input") + 1]
        function = args[args.index("--function_to_execute") + 1]
    except (ValueError, IndexError):
        return None
    return function, source, executor_input


def run_step_inprocess(function_name: str, source: str, executor_input: str) -> int:
    """Run a component as kfp's executor_main would, in this process; 0 on success, 1 (traceback printed) else."""
    import traceback
    import types

    from kfp.dsl import executor as component_executor

    try:
        module = types.ModuleType(f"autoft_inprocess_{function_name}")
        # dont_inherit: this module's `from __future__ import annotations` would turn the step's annotations, which
        # kfp's executor reads, into strings.
        exec(compile(source, f"<component {function_name}>", "exec", dont_inherit=True), module.__dict__)
        executor = component_executor.Executor(
            executor_input=json.loads(executor_input), function_to_execute=getattr(module, function_name)
        )
        executor.execute()
    except BaseException as error:  # a step's failure, as a subprocess's exit status
        if isinstance(error, KeyboardInterrupt):
            raise
        print("".join(traceback.format_exception(error)), end="")
        return 1
    return 0


def preload_step_modules() -> None:
    """Import what the steps import (torch, open_clip, MLflow, Optuna, sklearn...) once, before any fork."""
    import importlib

    for name in PRELOADED_MODULES:
        importlib.import_module(name)


def _reset_after_fork(env_vars: dict[str, str]) -> None:
    """In a forked step: its own stdout/stderr (the pipe), print, logging and tqdm's lock, as in a new process."""
    import io

    from tqdm import std as tqdm_std

    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True
    )
    builtins.print = BUILTIN_PRINT
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(getattr(handler, "stream", None), TaskLogCapture):
                # Not setStream: it flushes the capture, whose lock another thread may have held at the fork.
                handler.stream = sys.stdout
    # kfp's executor_main logs to stdout at INFO (kfp/dsl/executor_main.py, _setup_logging).
    logging.basicConfig(
        stream=sys.stdout,
        format="[KFP Executor %(asctime)s %(levelname)s]: %(message)s",
        level=logging.INFO,
        force=True,
    )
    # Another thread may have held tqdm's lock when this process forked; a disabled bar takes it too.
    tqdm_std.tqdm.set_lock(tqdm_std.TqdmDefaultWriteLock())
    tqdm.set_lock(tqdm_std.TqdmDefaultWriteLock())
    os.environ.update(env_vars)
    os.environ["_KFP_RUNTIME"] = "true"


def run_step_forked(call: tuple[str, str, str], env_vars: dict[str, str]) -> int:
    """Run a step in a child forked from this process (its modules already imported), streaming its output
    like kfp.local streams a subprocess's; the child's exit status."""
    with _FORK_LOCK:  # no other step forks while this pipe's write end is open here (it would inherit it)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid != 0:
            os.close(write_fd)
    if pid == 0:  # the step's own process
        code = 1
        try:
            os.close(read_fd)
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            os.close(write_fd)
            _reset_after_fork(env_vars)
            code = run_step_inprocess(*call)
        finally:
            # Not logging.shutdown(): it flushes every handler ever made, the runner's capture among them.
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    with open(read_fd, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            print(line, end="")
    _, status = os.waitpid(pid, 0)
    print("\n")  # as kfp.local ends a subprocess's output
    return os.waitstatus_to_exitcode(status)


def task_key(executor_input: str) -> str:
    """A task's name from its executor input (kfp.local writes each task's output file in a folder named after
    it, inside ``for-loop-N-iteration-I`` for a loop iteration): ``search-worker`` or ``search-worker#1``."""
    try:
        output_file = Path(json.loads(executor_input)["outputs"]["outputFile"])
    except (ValueError, KeyError, TypeError):
        return "step"
    looped = LOOP_ITERATION.fullmatch(output_file.parent.parent.name)
    return f"{output_file.parent.name}#{looped.group(1)}" if looped else output_file.parent.name


@contextmanager
def _local_launcher(capture: TaskLogCapture, inprocess_steps: tuple[str, ...], fork: bool) -> Iterator[None]:
    """kfp.local's subprocess launcher, with ``inprocess_steps`` (component function names) run in this
    process and, with ``fork``, every other step in a child forked from it (no interpreter start-up, no
    imports: ~3-6 s a step) instead of a new interpreter."""
    from kfp.local import subprocess_task_handler

    original = subprocess_task_handler.run_local_subprocess

    def launch(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        call = lightweight_call(full_command)
        if call is None:
            return original(full_command=full_command, env_vars=env_vars)
        task = task_key(call[2])
        capture.begin(task)
        code = 1
        try:
            if call[0] in inprocess_steps:
                with _child_environment(dict(env_vars or {})), _stderr_logs_to(sys.stdout):
                    code = run_step_inprocess(*call)
                print("\n")  # as kfp.local ends a subprocess's output
            elif fork:
                code = run_step_forked(call, dict(env_vars or {}))
            else:
                code = original(full_command=full_command, env_vars=env_vars)
        finally:
            capture.end(task, code)
        return code

    subprocess_task_handler.run_local_subprocess = launch
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = original


@contextmanager
def _stderr_logs_to(stream: TextIO) -> Iterator[None]:
    """Loggers that write to stderr (Optuna's) write to ``stream`` (the capture) while an in-process step runs,
    as a subprocess step's stderr is part of its log."""
    moved = []
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__):
                moved.append((handler, handler.stream))
                handler.stream = stream
    try:
        yield
    finally:
        for handler, original in moved:
            handler.stream = original


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
        # One evaluate task per loop slot instead of one per eval set: the same work, fewer process start-ups.
        "eval_shards": local_parallel_tasks(),
    }
    return arguments, env


def _results_artifact(pipeline_root: Path, log_path: Path, timing: dict[str, float]) -> Results:
    """results.json as the report step's output artifact (``<root>/<run>/report/results``), copied here."""
    found = sorted(path for path in pipeline_root.rglob("results") if path.parent.name == "report" and path.is_file())
    if len(found) != 1:
        raise PipelineRunError(f"expected one report/results artifact under {pipeline_root}, found {found}; {log_path}")
    results = Results.load(found[0])
    results.timing_s.update(timing)
    results.save(pipeline_root.parent.parent / "results.json")
    return results


def fork_steps(config: AutoFTConfig, default: str = "subprocess") -> bool:
    """Whether the local steps are forked from the runner (``$AUTOFT_LOCAL_LAUNCH``, else ``default``); only
    on the CPU (a process that touched CUDA cannot be forked safely).

    Forking is safe only from a process that has not yet run a parallel torch op: libgomp's thread pool
    does not survive ``fork``, and a forked step's first parallel op then waits forever at the pool's
    barrier (seen when a test process that had trained models forked a step). ``autoft run`` only imports
    before it forks, so it defaults to ``fork`` (:func:`run_from_cli`); other callers (tests, benchmarks,
    notebooks) start new interpreters unless they ask.
    """
    choice = os.environ.get(LAUNCH_ENV, "").strip().lower() or default
    if choice not in ("fork", "subprocess"):
        raise ValueError(f"${LAUNCH_ENV} must be fork or subprocess, got {choice!r}")
    if choice == "subprocess" or not hasattr(os, "fork"):
        return False
    from autoft.stages import resolve_device

    return resolve_device(config).type == "cpu"


def run_from_cli(config: AutoFTConfig, run_dir: Path) -> Results:
    """``autoft run`` (its ``kfp`` runner): :func:`run_with_kfp_local`, steps forked from this process on
    the CPU (it has imported the steps' libraries but run no torch op, see :func:`fork_steps`)."""
    return run_with_kfp_local(config, run_dir, fork=fork_steps(config, default="fork"))


def local_parallel_tasks() -> int:
    """How many tasks kfp.local runs at once (loop iterations; everything else runs one at a time)."""
    try:
        from kfp.local.orchestrator.enhanced_dag_orchestrator import ParallelExecutor

        return max(1, int(ParallelExecutor().conservative_max))
    except (ImportError, AttributeError, TypeError, ValueError):
        return KFP_LOCAL_MAX_PARALLEL


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
    verbose: bool = False,
    inprocess_steps: tuple[str, ...] = INPROCESS_STEPS,
    fork: bool | None = None,
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

    ``echo`` shows a compact view (a line per finished task with its wall seconds, bars for the search
    and fine-tuning; ``verbose`` shows kfp.local's whole stream instead). Every task's full log lands in
    ``logs/<task>.log``, the whole stream in ``logs/kfp_local.log``. results.json's ``timing_s`` gains
    ``kfp/<task>`` (each task's wall seconds as this runner saw it: process start, imports, the step, and
    kfp.local's handling of its inputs and outputs) and ``kfp_total`` (the whole kfp.local run).
    """
    started = time.perf_counter()
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
    # AUTOFT_PARALLEL_TASKS: the steps of a parallel loop share this machine's cores (autoft.threads).
    child_env = {"TMPDIR": str(tmp), PARALLEL_TASKS_ENV: str(local_parallel_tasks()), **env}
    names = task_display_names(pipeline)
    fork = fork_steps(config) if fork is None else fork
    local_steps = isinstance(runner, local.SubprocessRunner | None)
    if local_steps and fork:
        preload_step_modules()
    with (
        _child_environment(child_env),
        _captured_output(log_path, echo, names, verbose) as capture,
        _local_launcher(capture, inprocess_steps, fork) if local_steps else contextlib.nullcontext(),
    ):
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
    timing = {**capture.timing(), "kfp_total": round(time.perf_counter() - started, 3)}
    if not shared_run_folder:
        return _results_artifact(pipeline_root, log_path, timing)
    status_path = run_dir / "pipeline_status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    if status.get("state") != "SUCCEEDED":
        raise PipelineRunError(f"the pipeline ended in state {status.get('state')!r}: {status}; full log: {log_path}")
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise PipelineRunError(f"the pipeline succeeded but wrote no {results_path}; full log: {log_path}")
    shutil.rmtree(tmp, ignore_errors=True)
    results = Results.load(results_path)
    results.timing_s.update(timing)
    results.save(results_path)
    return results
