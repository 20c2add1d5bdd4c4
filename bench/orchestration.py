"""Orchestration overhead: `autoft run` through kfp.local against `autoft run --runner inprocess`.

The same preset both ways, on the same machine, alternating (kfp.local first in even rounds, in-process
first in odd ones), each run a fresh `autoft` process timed from the outside (interpreter start-up,
imports and the results table included). Per round the ratio kfp.local / in-process; the summary gives
the median ratio and the ratio of the fastest run of each ("best rounds": the least disturbed by other
load). Each run's results.json ``timing_s`` is kept: per stage, and for kfp.local every task's wall time.

    PYTHONPATH=src:. python bench/orchestration.py --preset digits --repeats 2 \\
        --json docs/results/orchestration.json --markdown docs/results/orchestration.md

A shorter check: ``--preset smoke --repeats 1``; extra config changes: ``--set search.n_trials=4``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNERS = ("kfp", "inprocess")


def run_once(runner: str, preset: str, sets: list[str], folder: Path, env: dict[str, str]) -> dict:
    """One `autoft run` in a fresh process; its wall seconds, exit status and results.json timing."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "autoft.cli", "run", "--preset", preset, "--runner", runner, "--out", str(folder)]
    for item in sets:
        command += ["--set", item]
    log = folder.parent / f"{folder.name}.out"
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    results = folder / "results.json"
    timing = json.loads(results.read_text()).get("timing_s", {}) if results.is_file() else {}
    return {
        "runner": runner,
        "seconds": round(seconds, 2),
        "exit_code": code,
        "timing_s": timing,
        "console_lines": len(log.read_text(encoding="utf-8", errors="replace").splitlines()),
        "log": str(log),
    }


def summarize(rounds: list[dict]) -> dict:
    ok = [r for r in rounds if all(r[runner]["exit_code"] == 0 for runner in RUNNERS)]
    if not ok:
        return {"ratio_median": None, "ratio_best_rounds": None, "rounds_ok": 0}
    ratios = [r["kfp"]["seconds"] / r["inprocess"]["seconds"] for r in ok]
    best = {runner: min(r[runner]["seconds"] for r in ok) for runner in RUNNERS}
    return {
        "rounds_ok": len(ok),
        "kfp_s": [r["kfp"]["seconds"] for r in ok],
        "inprocess_s": [r["inprocess"]["seconds"] for r in ok],
        "ratios": [round(x, 3) for x in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_best_rounds": round(best["kfp"] / best["inprocess"], 3),
        "kfp_median_s": round(statistics.median(r["kfp"]["seconds"] for r in ok), 1),
        "inprocess_median_s": round(statistics.median(r["inprocess"]["seconds"] for r in ok), 1),
    }


def task_breakdown(timing: dict[str, float]) -> list[tuple[str, float]]:
    """kfp.local's tasks by wall seconds, longest first."""
    tasks = [(key.removeprefix("kfp/"), value) for key, value in timing.items() if key.startswith("kfp/")]
    return sorted(tasks, key=lambda item: -item[1])


def markdown(result: dict) -> str:
    summary = result["summary"]
    lines = [
        f"# Orchestration overhead: kfp.local against in-process (`{result['preset']}`)",
        "",
        f"Measured {result['date']} on {result['machine']} ({result['cpus']} cores) by `bench/orchestration.py "
        f"{' '.join(result['argv'])}`; each run a fresh `autoft run` process, timed from outside.",
        "",
        "| round | order | kfp.local s | in-process s | ratio | kfp.local tasks | console lines (kfp / in-process) |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for index, item in enumerate(result["rounds"]):
        kfp, inproc = item["kfp"], item["inprocess"]
        ratio = kfp["seconds"] / inproc["seconds"] if kfp["exit_code"] == 0 == inproc["exit_code"] else float("nan")
        tasks = sum(1 for key in kfp["timing_s"] if key.startswith("kfp/"))
        lines.append(
            f"| {index} | {' then '.join(item['order'])} | {kfp['seconds']:.1f} | {inproc['seconds']:.1f} | "
            f"{ratio:.2f} | {tasks} | {kfp['console_lines']} / {inproc['console_lines']} |"
        )
    if summary.get("ratio_median") is not None:
        lines += [
            "",
            f"**Median ratio {summary['ratio_median']:.2f}** (kfp.local {summary['kfp_median_s']} s, in-process "
            f"{summary['inprocess_median_s']} s, medians of {summary['rounds_ok']} rounds); fastest runs: "
            f"ratio {summary['ratio_best_rounds']:.2f}.",
        ]
    last = next((item["kfp"] for item in reversed(result["rounds"]) if item["kfp"]["exit_code"] == 0), None)
    if last:
        stages = {k: v for k, v in last["timing_s"].items() if not k.startswith("kfp")}
        lines += ["", "Stage seconds inside the steps (last kfp.local run): "]
        lines += [", ".join(f"{key} {value:.1f}" for key, value in stages.items())]
        lines += ["", "| kfp.local task (last run) | wall s |", "|---|---:|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in task_breakdown(last["timing_s"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each runs both ways (default 2)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", default="runs/bench-orchestration", help="folder for the runs (replaced)")
    parser.add_argument("--json", help="write the result as JSON here")
    parser.add_argument("--markdown", help="write the result as a Markdown table here")
    args = parser.parse_args(argv)

    work = Path(args.work).resolve()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # The local steps import the checkout's packages, as `make run` does.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    rounds = []
    for index in range(args.repeats):
        order = RUNNERS if index % 2 == 0 else RUNNERS[::-1]
        item: dict = {"order": list(order)}
        for runner in order:
            item[runner] = run_once(runner, args.preset, args.sets, work / f"{runner}-{index}", env)
            status = "" if item[runner]["exit_code"] == 0 else f"  FAILED ({item[runner]['log']})"
            print(f"round {index} {runner:<9} {item[runner]['seconds']:8.1f} s{status}", flush=True)
        rounds.append(item)

    result = {
        "preset": args.preset,
        "sets": args.sets,
        "argv": ["--preset", args.preset, "--repeats", str(args.repeats), *[f"--set {s}" for s in args.sets]],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "rounds": rounds,
    }
    result["summary"] = summarize(rounds)
    text = markdown(result)
    print()
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0 if result["summary"]["rounds_ok"] == args.repeats else 1


if __name__ == "__main__":
    raise SystemExit(main())
