"""Nothing lost, nothing silently wrong: torn journals, duplicate workers, SIGTERM, full disks.

- A journal whose last record a crash or a full disk cut short is repaired on open (the torn bytes kept
  in a backup, a warning naming them), so no command reads past it silently and no worker appends to it.
- A full disk during a search is one line and exit 1, and leaves a journal every reader accepts.
- A second LIVE worker with a worker index already running exits with one line; the budget holds.
- SIGTERM (how Kubernetes stops a pod) ends every command like Ctrl-C: one line, exit 143, the folder
  marked ``terminated``, the last checkpoint intact and resumable.
- A full disk during a checkpoint write is the one-line disk error, exit 1, the previous checkpoint intact.

Every signal or kill here waits on an event (a line, a file, a study state), never on a sleep.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from autoft.cli import EXIT_FAILURE, EXIT_USER_ERROR, main
from autoft.config import SearchConfig, config_to_dict, resolve_config
from autoft.search import lease as lease_module
from autoft.search.journal import TORN_SUFFIX
from autoft.search.lease import WorkerConflict, WorkerLease, read_lease
from autoft.search.space import SearchSpace
from autoft.search.study import create_or_load_study, load_existing_study, prepare_study, run_worker
from autoft.stages import stage_prepare, stage_search, stage_zeroshot
from autoft.study_stages import stage_create_study, stage_select_best
from autoft.termination import EXIT_TERMINATED
from conftest import tiny_pipeline_config

EVENT_TIMEOUT = 300  # generous: these tests must hold while other processes load every core


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Prepared data, a zero-shot model and a finished search (for the fine-tuning tests)."""
    root = tmp_path_factory.mktemp("crash")
    config = tiny_pipeline_config("crash", ["autoft"])
    (root / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    torch.set_num_threads(1)
    stage_prepare(config, root / "data")
    stage_zeroshot(config, root / "data", root / "zeroshot")
    journal = str(root / "studies" / "autoft.journal")
    stage_create_study(config, "autoft", journal)
    stage_search(config, root / "data", root / "zeroshot", "autoft", journal, progress=False)
    stage_select_best(config, "autoft", journal, root / "search" / "autoft.json")
    return {
        "config": str(root / "config.yaml"),
        "data": str(root / "data"),
        "zeroshot": str(root / "zeroshot"),
        "search": str(root / "search" / "autoft.json"),
    }


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell may have started pytest with it ignored


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "autoft.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str] | None, what: str) -> None:
    """Poll ``condition`` (an event: a file, a study state) until it holds; fail if ``process`` ends first."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended before {what}: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {EVENT_TIMEOUT} s"
        time.sleep(0.05)


def _read_line_with(process: subprocess.Popen[str], text: str) -> None:
    while True:
        line = process.stdout.readline()
        if text in line:
            return
        if not line and process.poll() is not None:
            pytest.fail(f"no line with {text!r}: {process.communicate()[1][-3000:]}")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def _journal_lines_are_records(journal: Path) -> int:
    """Every line of the journal is one complete JSON record (what Optuna's reader needs); their count."""
    data = journal.read_bytes()
    assert data.endswith(b"\n"), "the journal ends in a torn record"
    lines = data.split(b"\n")[:-1]
    for number, line in enumerate(lines):
        json.loads(line), number
    return len(lines)


# ------------------------------------------------------------------------------------------------
# Torn journals
# ------------------------------------------------------------------------------------------------

SEARCH = SearchConfig(losses=["ce", "hinge"], n_trials=4, study_name="torn-autoft")  # config "torn", method autoft


def _valued_objective(values: list[float]) -> Callable[[optuna.Trial], float]:
    """Samples the real space (select-best reads the effective hyperparameters back) and returns
    ``values[trial.number]``."""
    space = SearchSpace.from_config(SEARCH)

    def objective(trial: optuna.Trial) -> float:
        space.sample(trial)
        return values[trial.number]

    return objective


def _torn_study(tmp_path: Path, values: list[float]) -> tuple[Path, bytes]:
    """A finished study whose last record (the last trial's COMPLETE) a crash cut short; the cut bytes."""
    journal = tmp_path / "studies" / "torn.journal"
    run_worker(create_or_load_study(str(journal), SEARCH), _valued_objective(values), SEARCH.n_trials)
    data = journal.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    assert b'"state":1' in data[last_start:], "the last record completes the last trial"
    cut = data.index(b'"state":1', last_start)  # after the trial id, before the state and the value
    journal.write_bytes(data[:cut])
    return journal, data[last_start:cut]


def test_a_torn_journal_is_repaired_with_a_warning_and_select_best_reads_the_complete_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    journal, torn = _torn_study(tmp_path, [0.2, 0.7, 0.5, 0.9])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"search": {"study_name": "torn", "n_trials": 4, "losses": ["ce", "hinge"]}}))
    out = tmp_path / "best.json"
    with caplog.at_level(logging.WARNING, logger="autoft"):
        code = main(["step", "select-best", "--config", str(config), "--storage", str(journal), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    warning = next(r.getMessage() for r in caplog.records if "torn record" in r.getMessage())
    assert f"dropped a 'set trial state/values' record of trial id 3, {len(torn)} bytes" in warning, warning
    backups = list(journal.parent.glob(f"{journal.name}{TORN_SUFFIX}*"))
    assert [b.read_bytes() for b in backups] == [torn], "the dropped bytes are kept"
    _journal_lines_are_records(journal)
    result = json.loads(out.read_text())
    # Trial 3's result never became durable: the best of the recorded results is trial 1, and the user was told.
    assert (result["best_trial"], result["best_value"]) == (1, 0.7)
    assert [t["state"] for t in result["trials"]] == ["COMPLETE", "COMPLETE", "COMPLETE", "RUNNING"]


def test_a_worker_restarted_on_a_torn_journal_appends_only_complete_records(tmp_path: Path) -> None:
    journal, _ = _torn_study(tmp_path, [0.2, 0.7, 0.5, 0.9])
    before = len(journal.read_bytes().split(b"\n")) - 1
    # The worker started again: the torn trial is its orphan (RUNNING), its quota lacks one trial.
    done = run_worker(
        create_or_load_study(str(journal), SEARCH),
        _valued_objective([0.2, 0.7, 0.5, 0.9, 0.3]),
        SEARCH.n_trials,
        storage=str(journal),
    )
    assert done == SEARCH.n_trials
    assert _journal_lines_are_records(journal) > before
    study = load_existing_study(str(journal), SEARCH)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert study.best_trial.number == 1


def test_a_corrupt_record_inside_a_journal_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal, _ = _torn_study(tmp_path, [0.2, 0.7, 0.5, 0.9])
    lines = journal.read_bytes().split(b"\n")
    lines[3] = b'{"op_code":5,"worker_id"'  # a record damaged in place, complete lines after it
    journal.write_bytes(b"\n".join(lines))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"search": {"study_name": "torn"}}))
    out = tmp_path / "best.json"
    code = main(["step", "select-best", "--config", str(config), "--storage", str(journal), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert f"study journal {journal} is corrupt after record" in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_failed_append_leaves_no_torn_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the disk cuts short (half the bytes, then ENOSPC) is rolled back to the last record."""
    import autoft.search.journal as journal_module

    journal = tmp_path / "s.journal"
    study = create_or_load_study(str(journal), SEARCH)
    size = journal.stat().st_size
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_module.os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        study.set_user_attr("note", "x" * 500)
    monkeypatch.undo()
    assert journal.stat().st_size == size
    _journal_lines_are_records(journal)


def test_a_full_disk_inside_a_trial_is_one_line_and_a_restart_finishes_the_budget(
    ws: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC as Optuna records a trial's result (where Optuna itself ends in 'Should not reach')."""
    import autoft.search.journal as journal_module

    journal = tmp_path / "full.journal"
    argv = ["step", "search", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--storage", str(journal), "--set", "search.n_trials=3"]
    real_write = os.write
    fired = []

    def full_on_first_result(fd: int, data: bytes) -> int:
        if not fired and b'"state":1' in bytes(data):
            fired.append(True)
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", full_on_first_result)
    code = main(argv)
    err = capsys.readouterr().err
    assert fired and code == EXIT_FAILURE, err
    assert "No space left on device" in err and "free space" in err, err
    assert "Traceback" not in err and "Should not reach" not in err, err
    _journal_lines_are_records(journal)
    monkeypatch.undo()
    assert main(argv) == 0, capsys.readouterr().err
    study = load_existing_study(str(journal), resolve_config(config_file=ws["config"]).search_for("autoft"))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and states.count("RUNNING") == 0, states
    assert states[0] == "FAIL", "the trial whose result the full disk lost was failed on restart"


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tiny tmpfs (root only), unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); needs root")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def _fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its file system is full; the file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_search_on_a_really_full_disk_is_one_line_and_leaves_a_readable_journal(
    ws: dict[str, str], small_mount: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = small_mount("256k")
    journal = folder / "s.journal"
    argv = ["step", "search", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--storage", str(journal), "--set", "search.n_trials=6"]
    config = resolve_config(config_file=ws["config"], overrides=["search.n_trials=6"])
    stage_create_study(config, "autoft", str(journal))
    filler = _fill(folder)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE, err
    assert "No space left on device" in err and "Traceback" not in err, err
    _journal_lines_are_records(journal)
    filler.unlink()
    assert main(argv) == 0, capsys.readouterr().err
    study = load_existing_study(str(journal), config.search_for("autoft"))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 6 and states.count("RUNNING") == 0, states


# ------------------------------------------------------------------------------------------------
# Worker leases
# ------------------------------------------------------------------------------------------------


def test_an_untagged_orphan_is_failed_when_its_worker_starts_again(tmp_path: Path) -> None:
    """A worker killed between Optuna creating its trial and tagging it left a RUNNING trial without owner."""
    journal = str(tmp_path / "s.journal")
    study = prepare_study(journal, SEARCH)
    orphan = study.ask()  # created, never tagged: the process died here
    done = run_worker(
        create_or_load_study(journal, SEARCH), _valued_objective([0.0] * 9), SEARCH.n_trials, storage=journal
    )
    assert done == SEARCH.n_trials
    states = {t.number: t.state for t in load_existing_study(journal, SEARCH).trials}
    assert states[orphan.number] == TrialState.FAIL
    assert list(states.values()).count(TrialState.COMPLETE) == SEARCH.n_trials


def test_a_second_live_worker_with_the_same_index_exits_with_one_line(
    ws: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pod and its KFP retry, both alive: the second exits; the study never exceeds n_trials."""
    journal = tmp_path / "dup.journal"
    overrides = ["--set", "search.n_trials=3", "--set", "search.inner_steps=10"]
    argv = ["step", "search", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--storage", str(journal), *overrides]
    search = resolve_config(config_file=ws["config"], overrides=overrides[1::2]).search_for("autoft")
    first = _cli(*argv)
    try:

        def holds_its_lease_mid_trial() -> bool:
            if not journal.exists():
                return False
            study = load_existing_study(str(journal), search)
            return read_lease(study, 0) is not None and any(t.state == TrialState.RUNNING for t in study.trials)

        _wait_for(holds_its_lease_mid_trial, first, "the first worker running a trial")
        _freeze_outside_its_locks(first, journal)  # alive but frozen: it cannot finish before the second checks
        try:
            code = main(argv)
        finally:
            first.send_signal(signal.SIGCONT)
        err = capsys.readouterr().err
        assert code == EXIT_USER_ERROR, err
        assert f"search worker 0 of study {search.study_name!r}" in err and "is already running" in err, err
        assert f"pid {first.pid}" in err and len(err.strip().splitlines()) == 1, err
        _, first_err = first.communicate(timeout=EVENT_TIMEOUT)
        assert first.returncode == 0, first_err
    finally:
        _stop(first)
    study = load_existing_study(str(journal), search)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def _freeze_outside_its_locks(process: subprocess.Popen[str], journal: Path) -> None:
    """SIGSTOP ``process`` at a moment it holds neither Optuna's journal lock (a ``.lock`` file, broken by
    others after 30 s) nor the lease mutex (an ``flock``): frozen inside one, it would block the other worker."""
    import fcntl

    while True:
        process.send_signal(signal.SIGSTOP)
        with open(journal.with_name(journal.name + ".lease-lock"), "a") as mutex:
            try:
                fcntl.flock(mutex, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                free = False
            else:
                fcntl.flock(mutex, fcntl.LOCK_UN)
                free = not journal.with_name(journal.name + ".lock").exists()
        if free:
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.01)  # let it leave the lock it held, then freeze it again


def test_a_lease_of_another_host_is_waited_for_refused_while_renewed_and_taken_over_once_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lease_module, "TTL_S", 2.0)
    monkeypatch.setattr(lease_module, "RENEW_S", 0.2)
    journal = str(tmp_path / "s.journal")
    study = create_or_load_study(journal, SEARCH)
    holder = WorkerLease(study, journal, 1)
    holder.mine = replace(holder.mine, host="pod-a")  # a process on another machine: its pid means nothing here
    holder.acquire()
    try:
        with pytest.raises(WorkerConflict, match=r"search worker 1 .* is already running \(pid \d+ on pod-a\)"):
            WorkerLease(create_or_load_study(journal, SEARCH), journal, 1).acquire()
    finally:
        holder._stop.set()  # it dies without releasing: its lease stops being renewed
        holder._thread.join()
    retry = WorkerLease(create_or_load_study(journal, SEARCH), journal, 1)
    with caplog.at_level(logging.WARNING, logger="autoft"):
        retry.acquire()  # returns once the dead holder's lease expired
    try:
        assert read_lease(study, 1).token == retry.mine.token
        with pytest.raises(WorkerConflict, match="lost its lease"):
            holder.check()  # had the old holder only stalled, it stops before its next trial counts
    finally:
        retry.release()
    assert read_lease(study, 1).expires == 0.0, "a released lease frees the index at once"


def test_leases_on_postgresql_exclude_a_second_live_worker() -> None:
    url = os.environ.get("AUTOFT_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("AUTOFT_TEST_POSTGRES_URL is not set")
    config = SearchConfig(losses=["ce"], n_trials=2, study_name=f"lease-{os.getpid()}-{time.time_ns()}")
    study = create_or_load_study(url, config)
    with WorkerLease(study, url, 0):
        with pytest.raises(WorkerConflict, match="is already running"):
            WorkerLease(create_or_load_study(url, config), url, 0).acquire()
        WorkerLease(create_or_load_study(url, config), url, 1).release()  # another index is free
    with WorkerLease(create_or_load_study(url, config), url, 0):  # released: free again
        pass
    optuna.delete_study(study_name=config.study_name, storage=url.replace("postgresql://", "postgresql+psycopg2://"))


# ------------------------------------------------------------------------------------------------
# SIGTERM
# ------------------------------------------------------------------------------------------------


def _assert_terminated(err: str, code: int) -> None:
    assert code == EXIT_TERMINATED, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err, err


def test_sigterm_during_fine_tuning_is_one_line_143_marked_and_resumable(ws: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "ft"
    argv = ["step", "finetune", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--hparams", f"autoft={ws['search']}", "--method", "autoft", "--set", "finetune.epochs=3"]
    argv += ["--out", str(out), "--checkpoint-root", str(tmp_path / "durable")]
    victim = _cli(*argv)
    try:
        _read_line_with(victim, "durable checkpoint of autoft: epoch 1/3")
        victim.send_signal(signal.SIGTERM)
        _, err = victim.communicate(timeout=60)
    finally:
        _stop(victim)
    _assert_terminated(err, victim.returncode)
    assert json.loads((out / "run_status.json").read_text())["state"] == "terminated"
    state = torch.load(out / "train" / "checkpoint" / "train_state.pt", map_location="cpu", weights_only=True)
    assert 0 <= state["epoch"] < 2, "the last complete checkpoint is intact"
    assert not list(out.rglob(".*.tmp")) and not (out / "train" / "checkpoint.new").exists()
    again = _cli(*argv, "--resume")
    _, err = again.communicate(timeout=EVENT_TIMEOUT)
    assert again.returncode == 0, err
    assert json.loads((out / "run_status.json").read_text())["state"] == "succeeded"
    assert len(json.loads((out / "finetune.json").read_text())["history"]) == 3


def test_sigterm_during_a_search_fails_the_running_trial_and_frees_the_index(
    ws: dict[str, str], tmp_path: Path
) -> None:
    journal = tmp_path / "term.journal"
    overrides = ["--set", "search.n_trials=50", "--set", "search.inner_steps=20"]
    argv = ["step", "search", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--storage", str(journal), *overrides]
    search = resolve_config(config_file=ws["config"], overrides=overrides[1::2]).search_for("autoft")
    victim = _cli(*argv)
    try:
        _wait_for(
            lambda: (
                journal.exists()
                and any(t.state == TrialState.COMPLETE for t in load_existing_study(str(journal), search).trials)
            ),
            victim,
            "a completed trial",
        )
        victim.send_signal(signal.SIGTERM)
        _, err = victim.communicate(timeout=60)
    finally:
        _stop(victim)
    _assert_terminated(err, victim.returncode)
    study = load_existing_study(str(journal), search)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING], "the interrupted trial was told FAIL"
    assert read_lease(study, 0).expires == 0.0, "the lease was released: a restart need not wait"


def test_sigterm_on_autoft_run_marks_the_run_terminated(ws: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    victim = _cli(
        "run", "--runner", "inprocess", "--config", ws["config"], "--out", str(run_dir), "--set", "search.n_trials=200"
    )
    journal = run_dir / "studies" / "autoft.journal"
    search = resolve_config(config_file=ws["config"], overrides=["search.n_trials=200"]).search_for("autoft")
    try:
        _wait_for(
            lambda: journal.exists() and bool(load_existing_study(str(journal), search).trials),
            victim,
            "the search's first trial",
        )
        victim.send_signal(signal.SIGTERM)
        _, err = victim.communicate(timeout=60)
    finally:
        _stop(victim)
    _assert_terminated(err, victim.returncode)
    status = json.loads((run_dir / "run_status.json").read_text())
    assert status["state"] == "terminated" and "SIGTERM" in status["error"], status


# ------------------------------------------------------------------------------------------------
# A full disk during a checkpoint write
# ------------------------------------------------------------------------------------------------


def test_checkpoint_writes_on_a_full_disk_raise_enospc_not_torch_errors(small_mount: Callable[[str], Path]) -> None:
    from autoft.models.checkpoint import save_state_dict, save_torch_state

    folder = small_mount("64k")
    tensors = {"w": torch.zeros(100_000)}
    for save, name in ((save_torch_state, "state.pt"), (save_state_dict, "model.safetensors")):
        with pytest.raises(OSError) as raised:
            save(tensors, folder / name)
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(folder / name)
    assert not list(folder.iterdir()), "no partial file left behind"


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_resumes(
    ws: dict[str, str],
    small_mount: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import autoft.train as train

    folder = small_mount("160m")  # one epoch: ~55 MB (best weights + checkpoint)
    out = folder / "ft"
    argv = ["step", "finetune", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--hparams", f"autoft={ws['search']}", "--method", "autoft", "--set", "finetune.epochs=2"]
    argv += ["--out", str(out)]
    real_save = train._save_checkpoint
    fillers: list[Path] = []

    def disk_fills_before_the_second(*args: object, **kwargs: object) -> None:
        if (out / "train" / "checkpoint").is_dir() and not fillers:
            fillers.append(_fill(folder))  # the disk is full when epoch 2's checkpoint is written
        real_save(*args, **kwargs)

    monkeypatch.setattr(train, "_save_checkpoint", disk_fills_before_the_second)
    code = main(argv)
    err = capsys.readouterr().err
    assert fillers and code == EXIT_FAILURE, err
    assert "No space left on device" in err and "free space or pick a writable folder" in err, err
    assert "Traceback" not in err and "RuntimeError" not in err, err
    assert [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]], err
    state = torch.load(out / "train" / "checkpoint" / "train_state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0, "epoch 1's checkpoint is intact"
    assert not (out / "train" / "checkpoint.new").exists() and not list(out.rglob(".*.tmp"))
    fillers[0].unlink()
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert len(json.loads((out / "finetune.json").read_text())["history"]) == 2
    assert math.isfinite(json.loads((out / "finetune.json").read_text())["best_id_val"])


def test_no_thread_or_child_is_left_behind() -> None:
    """The lease threads of the tests above stopped (a renewal thread left running would write forever)."""
    assert not [t for t in threading.enumerate() if t.name.startswith("lease-worker-")]
