"""The timings README.md quotes, measured on a fresh clone and recorded with the machine they came from.

One command (`make readme-figures`) clones the repository's committed HEAD into a scratch folder and times, there:

- `make run` as a newcomer types it: set-up included (venv, dependencies, the project) and without it (the
  time after `make setup`'s last line), with the lines printed before the pipeline's first task line and every
  line that mentions a deprecation;
- `autoft run --preset smoke` through kfp.local, then the same with `--runner inprocess`.

It writes docs/results/readme-figures.json (machine: CPU model and cores; UTC date; the clone's git sha; the load
average before and after; each figure) and rewrites README.md's lines that quote them, so the README always
states what was measured and when. tests/test_readme_figures.py fails when the README and the JSON disagree.

    python bench/readme_figures.py --note "quiet machine"   # measure (~10 min on 2 cores), write JSON + README
    python bench/readme_figures.py --readme-only             # README from the committed JSON, no measuring

The clone's set-up installs as `make setup` does (pip's cache, the machine's local wheels, the registry);
`make_run.setup_sources` counts where its packages came from. One measurement per figure: on a busy machine
they are inflated, so say so with --note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from autoft.atomic import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "results" / "readme-figures.json"
README = ROOT / "README.md"

# pipeline/local_run.py's task lines: a right-aligned state (ok, skipped, FAILURE, ...), two spaces, the task.
TASK_LINE = re.compile(r"^ {0,7}(ok|skipped|[A-Z_]{4,})  \S")
SETUP_DONE = re.compile(r"^setup: done in ")
DEPRECATION = re.compile(r"deprecat", re.IGNORECASE)
# Variables of the calling shell or make that would change what the clone's commands do.
SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")


@dataclass(frozen=True)
class Timed:
    seconds: float
    lines: list[tuple[float, str]]  # (seconds since start, line)


def run_timed(command: list[str], cwd: Path, env: dict[str, str]) -> Timed:
    """Run `command`, timestamping each output line as it arrives; exit with its tail when it fails."""
    start = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
            print(f"  | {line}", end="", flush=True)
    seconds = time.monotonic() - start
    if process.returncode != 0:
        tail = "\n".join(line for _, line in lines[-30:])
        sys.exit(f"readme-figures: `{' '.join(command)}` failed (exit {process.returncode}) in {cwd}:\n{tail}")
    return Timed(round(seconds, 1), lines)


def make_run_figures(timed: Timed) -> dict[str, object]:
    """Wall time with and without set-up, and what a newcomer reads before the pipeline's first task."""
    texts = [line for _, line in timed.lines]
    setup_done = next((at for at, line in timed.lines if SETUP_DONE.match(line)), None)
    if setup_done is None:
        sys.exit("readme-figures: `make run` printed no 'setup: done in' line: did the clone skip its set-up?")
    first_task = next((index for index, line in enumerate(texts) if TASK_LINE.match(line)), None)
    if first_task is None:
        sys.exit("readme-figures: `make run` printed no task line; its output format changed (see TASK_LINE)")
    return {
        "wall_s": timed.seconds,
        "setup_s": round(setup_done, 1),
        "without_setup_s": round(timed.seconds - setup_done, 1),
        "lines_before_first_task": first_task,
        "lines_total": len(texts),
        "deprecation_lines": [line for line in texts if DEPRECATION.search(line)],
    }


def setup_sources(setup_log: str) -> dict[str, int]:
    """Where `make setup`'s packages came from (pip's log lines): downloads cost the most on a slow network."""
    return {
        "downloaded": len(re.findall(r"^\s*Downloading ", setup_log, re.MULTILINE)),
        "pip_cache": len(re.findall(r"^\s*Using cached ", setup_log, re.MULTILINE)),
        "local_files": len(re.findall(r"^\s*Processing /", setup_log, re.MULTILINE)),
    }


def machine() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo")
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE) if cpuinfo.exists() else []
    return {
        "cpu_model": models[0].strip() if models else platform.processor() or "unknown",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def measure(repo: Path, note: str, keep: bool) -> dict[str, object]:
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED_ENV}
    scratch = Path(tempfile.mkdtemp(prefix="readme-figures-"))
    clone = scratch / "clone"
    try:
        subprocess.run(["git", "clone", "--quiet", str(repo), str(clone)], check=True)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, check=True, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True)
        load_before = os.getloadavg()
        print(f"readme-figures: fresh clone of {sha.stdout.strip()[:12]} in {clone}; `make run` ...", flush=True)
        make_run = make_run_figures(run_timed(["make", "run"], clone, env))
        make_run["setup_sources"] = setup_sources((clone / ".venv" / "setup.log").read_text(errors="replace"))
        autoft = str(clone / ".venv" / "bin" / "autoft")
        print("readme-figures: `autoft run --preset smoke` (kfp.local) ...", flush=True)
        smoke_kfp = run_timed([autoft, "run", "--preset", "smoke", "--out", "runs/figures-smoke-kfp"], clone, env)
        print("readme-figures: `autoft run --preset smoke --runner inprocess` ...", flush=True)
        smoke_inprocess = run_timed(
            [autoft, "run", "--preset", "smoke", "--runner", "inprocess", "--out", "runs/figures-smoke-inprocess"],
            clone,
            env,
        )
        load_after = os.getloadavg()
    finally:
        if keep:
            print(f"readme-figures: clone kept in {clone}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": sha.stdout.strip(),
        "source_tree_dirty": bool(dirty.stdout.strip()),
        "machine": machine(),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "note": note,
        "make_run": make_run,
        "smoke": {"kfp_local_s": smoke_kfp.seconds, "inprocess_s": smoke_inprocess.seconds},
    }


# README.md lines that quote the figures: each is found by its prefix and replaced whole.
def readme_lines(figures: dict[str, object]) -> dict[str, str]:
    make_run = figures["make_run"]
    smoke = figures["smoke"]
    cores = figures["machine"]["cores"]
    assert isinstance(make_run, dict) and isinstance(smoke, dict)
    return {
        "make run    # ": (
            "make run    # set up .venv, then the whole pipeline locally on the built-in benchmark "
            f"({_minutes(make_run['wall_s'])} on {cores} CPUs, {_minutes(make_run['without_setup_s'])} without set-up)"
        ),
        ".venv/bin/autoft run --preset smoke ": (
            ".venv/bin/autoft run --preset smoke           # every step end to end: "
            f"{smoke['kfp_local_s']:.0f} s via kfp.local, {smoke['inprocess_s']:.0f} s in-process"
        ),
        "Timings measured on ": (
            f"Timings measured on {figures['date']} on a fresh clone (commit {str(figures['git_sha'])[:7]}, "
            f"{cores} x {figures['machine']['cpu_model']}; {figures['note']}): "
            "[docs/results/readme-figures.json](docs/results/readme-figures.json), "
            "re-measured by `make readme-figures`."
        ),
    }


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def readme_mismatches(readme: str, figures: dict[str, object]) -> list[str]:
    """Each expected line the README lacks, as 'expected: ...' (empty when the README quotes the figures)."""
    lines = readme.splitlines()
    return [f"expected: {wanted}" for wanted in readme_lines(figures).values() if wanted not in lines]


def rewrite_readme(readme: str, figures: dict[str, object]) -> str:
    lines = readme.splitlines(keepends=True)
    for prefix, wanted in readme_lines(figures).items():
        found = [index for index, line in enumerate(lines) if line.startswith(prefix)]
        if len(found) != 1:
            sys.exit(f"readme-figures: README.md has {len(found)} lines starting with {prefix!r}; expected exactly 1")
        lines[found[0]] = wanted + "\n"
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--note", default="", help="conditions worth knowing, e.g. 'shared machine, load 4'")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the repository to clone (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone (its runs/ and .venv)")
    parser.add_argument("--readme-only", action="store_true", help="rewrite README.md from the JSON; measure nothing")
    args = parser.parse_args(argv)
    if args.readme_only:
        figures = json.loads(FIGURES.read_text())
    else:
        figures = measure(args.repo.resolve(), args.note, args.keep)
        atomic_write_json(FIGURES, figures)
        print(f"readme-figures: wrote {FIGURES.relative_to(ROOT)}")
    atomic_write_text(README, rewrite_readme(README.read_text(), figures))
    print("readme-figures: README.md quotes:")
    for line in readme_lines(figures).values():
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
