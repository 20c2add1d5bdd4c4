"""The paper's trial budget on digits: wall time of N AutoFT trials with 2 workers x 1 thread.

The digits preset's search section as `make run` uses it (the shipped foundation model, the preset's OOD-val
subset, all nine terms, its inner steps and pruner), ``--trials`` as the TOTAL budget (the paper's 500 by
default), a journal-file study, ``--workers`` ``autoft step search`` processes (what the pipeline's
search workers run) with one torch thread each. Read back from the study: the exact COMPLETE and PRUNED
counts (they must sum to the budget), the span from the first trial's start to the last trial's end,
trials per minute, the pruned fraction, the median seconds of a complete and of a pruned trial, and the
wall time of the whole search including process start-up. ``--extrapolate-to`` also states the wall time
of a larger budget at the measured rate, labelled as an extrapolation.

    PYTHONPATH=src:. python bench/search_budget.py --trials 500 --out docs/results/search_budget
    PYTHONPATH=src:. python bench/search_budget.py --trials 100 --extrapolate-to 500 --out docs/results/search_budget

Cost: the search itself (about 8 min for 500 trials on the shared 2-core machine, more under load) plus
~15 s to prepare the data and the zero-shot model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoft.atomic import atomic_write_text
from autoft.config import AutoFTConfig, resolve_config, save_config
from autoft.search.study import count_trials, load_existing_study
from autoft.stages import stage_prepare, stage_zeroshot
from autoft.study_stages import stage_create_study

METHOD = "autoft"


def budget_config(trials: int, overrides: list[str]) -> AutoFTConfig:
    return resolve_config(
        preset="digits",
        overrides=[
            "methods=[zeroshot, autoft]",
            "device=cpu",
            f"search.n_trials={trials}",
            "search.study_name=budget",
            *overrides,
        ],
    )


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_search(config: AutoFTConfig, folder: Path, workers: int) -> dict[str, Any]:
    config_file = save_config(config, folder / "config.yaml")
    storage = str(folder / "budget.journal")
    stage_create_study(config, METHOD, storage, workers=workers)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOFT_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    load_before = load_average()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    failed = [error for process, error in zip(processes, errors, strict=True) if process.returncode != 0]
    if failed:
        raise RuntimeError(f"a search worker failed:\n{failed[0][-3000:]}")
    study = load_existing_study(storage, config.search_for(METHOD))
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    first = min(t.datetime_start for t in trials)  # type: ignore[type-var]
    last = max(t.datetime_complete for t in trials)  # type: ignore[type-var]
    span = (last - first).total_seconds()
    counts = count_trials(study)

    def median_seconds(state: TrialState) -> float | None:
        durations = [
            (t.datetime_complete - t.datetime_start).total_seconds()  # type: ignore[operator]
            for t in trials
            if t.state == state
        ]
        return statistics.median(durations) if durations else None

    counted = counts["complete"] + counts["pruned"]
    return {
        "complete": counts["complete"],
        "pruned": counts["pruned"],
        "failed": counts["fail"],
        "counted": counted,
        "pruned_fraction": counts["pruned"] / counted if counted else 0.0,
        "trial_span_s": span,
        "wall_s": wall,
        "startup_and_wait_s": wall - span,
        "trials_per_minute": 60 * counted / span,
        "median_complete_trial_s": median_seconds(TrialState.COMPLETE),
        "median_pruned_trial_s": median_seconds(TrialState.PRUNED),
        "best_value": study.best_value,
        # CPU seconds the workers used (start-up included): on a shared machine the wall time is the load's,
        # this is the work; with one idle core per worker the search would take about cpu / workers.
        "worker_cpu_s": worker_cpu,
        "cpu_s_per_trial": worker_cpu / counted if counted else None,
        "idle_machine_estimate_wall_s": worker_cpu / len(processes),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = budget_config(args.trials, args.overrides)
    search = config.search_for(METHOD)
    with tempfile.TemporaryDirectory(prefix="autoft-budget-") as tmp:
        folder = Path(tmp)
        stage_prepare(config, folder / "data")
        stage_zeroshot(config, folder / "data", folder / "zeroshot")
        row = run_search(config, folder, args.workers)
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "preset": "digits",
        "trials": args.trials,
        "workers": args.workers,
        "threads_per_worker": 1,
        "inner_steps": search.inner_steps,
        "pruner": search.pruner,
        "rungs": search.report_steps(),
        "reduction_factor": search.pruner_reduction_factor,
        "ood_val_size": config.data.ood_val.size,
        "storage": "journal file",
        **row,
    }
    if args.extrapolate_to:
        # The measured rate over the span, plus the measured start-up; TPE's sampling grows with the
        # number of trials, so a larger budget is likely slower per trial than this.
        result["extrapolation"] = {
            "trials": args.extrapolate_to,
            "wall_s": row["startup_and_wait_s"] + 60 * args.extrapolate_to / row["trials_per_minute"],
            "idle_machine_wall_s": row["idle_machine_estimate_wall_s"] * args.extrapolate_to / row["counted"],
            "note": f"EXTRAPOLATED from {args.trials} measured trials at their rate, on a shared, loaded machine",
        }
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# {result['trials']} AutoFT trials on digits (`bench/search_budget.py`)",
        "",
        f"{result['workers']} workers x {result['threads_per_worker']} thread, {result['storage']}, "
        f"{result['inner_steps']} inner steps, pruner `{result['pruner']}` (rungs {result['rungs']}, factor "
        f"{result['reduction_factor']}), OOD-val {result['ood_val_size']}; {result['machine']}, shared with other "
        f"jobs (load average {result['load_average_before']:.1f} before, {result['load_average_after']:.1f} after).",
        "",
        "| trials (COMPLETE + PRUNED) | COMPLETE | PRUNED | pruned | wall s (start-up included) | trial span s | "
        "trials / min | median complete trial s | median pruned trial s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['counted']} | {result['complete']} | {result['pruned']} | {100 * result['pruned_fraction']:.0f}% | "
        f"{result['wall_s']:.0f} | {result['trial_span_s']:.0f} | {result['trials_per_minute']:.1f} | "
        f"{result['median_complete_trial_s'] or 0:.2f} | {result['median_pruned_trial_s'] or 0:.2f} |",
    ]
    lines += [
        "",
        f"The workers used {result['worker_cpu_s']:.0f} CPU s ({result['cpu_s_per_trial']:.2f} per trial, start-up "
        f"included): with one idle core per worker about {result['idle_machine_estimate_wall_s'] / 60:.1f} min "
        "(an ESTIMATE from CPU time, not a measured wall time).",
    ]
    if "extrapolation" in result:
        e = result["extrapolation"]
        lines += [
            "",
            f"**{e['note']}**: {e['trials']} trials would take about {e['wall_s'] / 60:.1f} min at this load, about "
            f"{e['idle_machine_wall_s'] / 60:.1f} min with one idle core per worker (from CPU time).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=500, help="the study's TOTAL budget")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--extrapolate-to", type=int, default=0, help="also state this budget's time at the rate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    result = run(args)
    report = markdown(result)
    if args.out:
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1))
        atomic_write_text(args.out.with_suffix(".md"), report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
