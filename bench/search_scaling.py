"""Search scaling: trials per minute with 1, 2 and N worker processes on one study (journal and PostgreSQL).

For each storage and worker count: a fresh study with a TOTAL budget of ``--trials``, that many
``autoft step search`` processes (what the pipeline's search workers run; each with cores / workers torch
threads), then the study is read back: the exact COMPLETE count (it must equal the budget) and the span
from the first trial's start to the last trial's end. Process start-up (imports, loading the data and
the zero-shot model) is paid once per worker, not per trial, so it is reported apart. Data: the built-in
digits with the tiny CLIP (random weights), the search's OOD-val subset, all nine terms.

    PYTHONPATH=src python bench/search_scaling.py --workers 1 2 --trials 12 \\
        --postgres postgresql://postgres@127.0.0.1:5432/test --json /tmp/scaling.json

``--postgres`` is an admin URL: the benchmark creates a scratch database there and drops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna

from autoft.bench_cli import bench_main, bench_parser
from autoft.config import AutoFTConfig, save_config, validate_config
from autoft.distributed import available_cpus
from autoft.search.space import SearchSpace
from autoft.search.study import count_trials, create_or_load_study, load_existing_study, run_worker
from autoft.stages import stage_prepare, stage_zeroshot
from autoft.study_stages import stage_create_study

REPO = Path(__file__).resolve().parents[1]
METHOD = "autoft"


def bench_config(trials: int, inner_steps: int, study_name: str) -> AutoFTConfig:
    return validate_config(
        {
            "preset": "search-scaling",
            "methods": ["zeroshot", METHOD],
            "device": "cpu",
            "model": {"name": "autoft-tiny-vit", "pretrained": ""},
            "data": {"dataset": "digits", "batch_size": 64, "eval_batch_size": 512, "ood_val": {"size": 600}},
            "search": {"n_trials": trials, "inner_steps": inner_steps, "base_lr": 1e-4, "study_name": study_name},
        }
    )


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """CREATE a database of our own on the server, yield its URL, DROP it (sessions included)."""
    import psycopg2
    from psycopg2 import sql

    name = f"autoft_scaling_{secrets.token_hex(4)}"
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.close()


def run_workers(config_file: Path, config: AutoFTConfig, folder: Path, storage: str, workers: int) -> dict:
    stage_create_study(config, METHOD, storage, workers=workers)
    threads = max(1, available_cpus() // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "autoft.cli", "step", "search", "--config", str(config_file)),
                *("--data", str(folder / "data"), "--zeroshot", str(folder / "zeroshot"), "--method", METHOD),
                *("--storage", storage, "--workers", str(workers), "--worker-index", str(index)),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(workers)
    ]
    errors = [process.communicate()[1] for process in processes]
    wall = time.perf_counter() - started
    failed = [error for process, error in zip(processes, errors, strict=True) if process.returncode != 0]
    if failed:
        raise RuntimeError(f"a search worker failed:\n{failed[0][-3000:]}")
    study = load_existing_study(storage, config.search_for(METHOD))
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    first = min(t.datetime_start for t in trials)  # type: ignore[type-var]
    last = max(t.datetime_complete for t in trials)  # type: ignore[type-var]
    span = (last - first).total_seconds()
    complete = count_trials(study)["complete"]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]  # type: ignore[operator]
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "complete": complete,
        "trial_span_s": span,
        "trials_per_minute": 60 * complete / span,
        "median_trial_s": statistics.median(durations),
        "startup_and_wait_s": wall - span,
    }


def storage_overhead(config: AutoFTConfig, storage: str, trials: int) -> float:
    """Seconds per trial of the study alone: TPE sampling the real space and recording, no training."""
    search = config.search_for(METHOD)
    space = SearchSpace.from_config(search)
    study = create_or_load_study(storage, search)
    started = time.perf_counter()
    run_worker(study, lambda trial: space.sample(trial).lr, trials)
    return (time.perf_counter() - started) / trials


def run(args: argparse.Namespace) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker_counts = sorted(set(args.workers or [1, 2, available_cpus()]))
    storages = ["journal"] + (["postgresql"] if args.postgres else [])
    results = []
    overhead: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="autoft-scaling-") as tmp:
        folder = Path(tmp)
        base = bench_config(args.trials, args.inner_steps, "scaling")
        stage_prepare(base, folder / "data")
        stage_zeroshot(base, folder / "data", folder / "zeroshot")
        with contextlib.ExitStack() as stack:
            database = stack.enter_context(scratch_database(args.postgres)) if args.postgres else ""
            for kind in storages:
                config = bench_config(args.trials, args.inner_steps, f"overhead-{kind}")
                storage = database if kind == "postgresql" else str(folder / f"overhead-{kind}.journal")
                overhead[kind] = storage_overhead(config, storage, args.trials)
                print(f"{kind:10s} study alone: {1e3 * overhead[kind]:.0f} ms per trial", flush=True)
                for workers in worker_counts:
                    config = bench_config(args.trials, args.inner_steps, f"scaling-{kind}-{workers}")
                    config_file = save_config(config, folder / f"{kind}-{workers}.yaml")
                    storage = database if kind == "postgresql" else str(folder / f"{kind}-{workers}.journal")
                    row = run_workers(config_file, config, folder, storage, workers)
                    results.append({"storage": kind, **row})
                    print(
                        f"{kind:10s} {workers} worker(s): {row['complete']} COMPLETE in {row['trial_span_s']:.1f} s = "
                        f"{row['trials_per_minute']:.1f} trials/min",
                        flush=True,
                    )
    return {
        "cpus": available_cpus(),
        "trials": args.trials,
        "inner_steps": args.inner_steps,
        "model": "autoft-tiny-vit (random weights), digits, all nine terms, OOD-val 600",
        "study_overhead_s_per_trial": overhead,
        "runs": results,
    }


def report(result: dict) -> str:
    lines = [
        f"search scaling: {result['trials']} trials x {result['inner_steps']} inner steps, {result['model']}, "
        f"{result['cpus']} CPUs",
        f"{'storage':10s} {'workers':>7s} {'COMPLETE':>8s} {'span s':>8s} {'trials/min':>10s} {'median trial s':>14s} "
        f"{'start-up s':>10s}",
    ]
    for kind, seconds in result["study_overhead_s_per_trial"].items():
        lines.append(
            f"{kind:10s} the study alone (TPE sampling + storage, no training): {1e3 * seconds:.0f} ms per trial"
        )
    for row in result["runs"]:
        lines.append(
            f"{row['storage']:10s} {row['workers']:7d} {row['complete']:8d} {row['trial_span_s']:8.1f} "
            f"{row['trials_per_minute']:10.1f} {row['median_trial_s']:14.2f} {row['startup_and_wait_s']:10.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1, 2 and the CPU count)")
    parser.add_argument("--trials", type=int, default=12, help="the study's TOTAL budget in each run")
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--postgres", default=os.environ.get("AUTOFT_TEST_POSTGRES_URL", ""), help="admin URL")
    return bench_main(parser, argv, run, report)


if __name__ == "__main__":
    sys.exit(main())
