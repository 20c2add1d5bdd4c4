"""README.md's timings are the ones recorded in docs/results/readme-figures.json (bench/readme_figures.py measures
them on a fresh clone), and that recorded fresh clone met the newcomer's bar: at most 15 lines before the
pipeline's first task, no deprecation warning anywhere in `make run`."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _figures_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_readme_figures", REPO / "bench" / "readme_figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


figures_script = _figures_module()
RECORDED = json.loads((REPO / "docs" / "results" / "readme-figures.json").read_text())


def test_the_readme_quotes_the_recorded_figures() -> None:
    mismatches = figures_script.readme_mismatches((REPO / "README.md").read_text(), RECORDED)
    assert mismatches == [], "README.md differs from docs/results/readme-figures.json; run `make readme-figures`"


def test_the_record_says_where_and_when_it_was_measured() -> None:
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", RECORDED["date"])
    assert re.fullmatch(r"[0-9a-f]{40}", RECORDED["git_sha"])
    assert RECORDED["machine"]["cores"] >= 1 and RECORDED["machine"]["cpu_model"]
    make_run = RECORDED["make_run"]
    assert make_run["setup_s"] > 0 and make_run["without_setup_s"] > 0
    assert make_run["setup_s"] + make_run["without_setup_s"] == pytest.approx(make_run["wall_s"], abs=0.2)
    assert RECORDED["smoke"]["kfp_local_s"] > 0 and RECORDED["smoke"]["inprocess_s"] > 0


def test_the_recorded_fresh_clone_was_quiet_and_warned_of_no_deprecation() -> None:
    make_run = RECORDED["make_run"]
    assert make_run["lines_before_first_task"] <= 15
    assert make_run["deprecation_lines"] == []


def test_task_lines_are_told_from_setup_lines() -> None:
    # The formats pipeline/local_run.py prints (a state right-aligned in 7 columns, two spaces, the task).
    assert figures_script.TASK_LINE.match(f"{'ok':>7}  {'prepare data':<44} {4.7:7.1f} s")
    assert figures_script.TASK_LINE.match(f"{'skipped':>7}  gate-passed")
    assert figures_script.TASK_LINE.match(f"{'FAILURE':>7}  {'fine-tune: ft':<44} {1.0:7.1f} s")
    for line in ("setup: venv             31.4 s", ".venv/bin/autoft run ", "| method | ID val |", ""):
        assert not figures_script.TASK_LINE.match(line), line


def test_make_run_figures_split_setup_count_lines_and_collect_deprecations() -> None:
    timed = figures_script.Timed(
        100.0,
        [
            (10.0, "setup: venv              9.0 s"),
            (40.0, "setup: done in 40.0 s (pip log: .venv/setup.log)"),
            (40.1, ".venv/bin/autoft run "),
            (45.0, "/x/site.py:1: DeprecationWarning: old call"),
            (50.0, f"{'ok':>7}  {'prepare data':<44} {4.7:7.1f} s"),
            (99.0, "run folder: runs/digits"),
        ],
    )
    figures = figures_script.make_run_figures(timed)
    assert figures["setup_s"] == 40.0 and figures["without_setup_s"] == 60.0 and figures["wall_s"] == 100.0
    assert figures["lines_before_first_task"] == 4 and figures["lines_total"] == 6
    assert figures["deprecation_lines"] == ["/x/site.py:1: DeprecationWarning: old call"]
    with pytest.raises(SystemExit, match="no 'setup: done in' line"):
        figures_script.make_run_figures(figures_script.Timed(1.0, [(0.5, "ok  x")]))


def test_rewrite_replaces_each_quoted_line_and_refuses_a_readme_without_one() -> None:
    stale = (
        "intro\nmake run    # ~7 min\nmiddle\n.venv/bin/autoft run --preset smoke  # ~3 min\nTimings measured on x\n"
    )
    rewritten = figures_script.rewrite_readme(stale, RECORDED)
    assert figures_script.readme_mismatches(rewritten, RECORDED) == []
    assert rewritten.splitlines()[0] == "intro" and rewritten.splitlines()[2] == "middle"
    assert figures_script.readme_mismatches(stale, RECORDED)
    with pytest.raises(SystemExit, match="Timings measured on"):
        figures_script.rewrite_readme("make run    # x\n.venv/bin/autoft run --preset smoke x\n", RECORDED)


def test_setup_sources_count_where_packages_came_from() -> None:
    log = (
        "Processing /opt/wheels/torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl\n"
        "  Downloading mlflow-3.17.2-py3-none-any.whl (12.0 MB)\n"
        "  Using cached pandas-3.1.1-cp311-cp311-manylinux_2_28_x86_64.whl (12.4 MB)\n"
        "  Downloading ruff-0.17.6-py3-none-manylinux_2_17_x86_64.whl (10.6 MB)\n"
        "Requirement already satisfied: numpy==2.4.6\n"
    )
    assert figures_script.setup_sources(log) == {"downloaded": 2, "pip_cache": 1, "local_files": 1}
