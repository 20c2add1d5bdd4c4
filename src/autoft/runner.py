"""Run every stage in this process, in DAG order, into one run folder.

The Kubeflow pipeline runs the same stage functions as separate steps; this runner is the
no-orchestrator path (tests, benchmarks, debugging) and produces the same run folder layout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from autoft.atomic import atomic_write_json
from autoft.baselines import grid_hparams, grid_point_name, stage_select_grid
from autoft.config import AutoFTConfig, save_config
from autoft.contracts import EvalResult, FinetuneSummary, PreparedData, Results, SearchResult
from autoft.errors import caused_by_interrupt
from autoft.methods import BASE_METHODS, finetuned_methods, is_wiseft, model_source, searched_methods
from autoft.report import assemble_results, write_report
from autoft.stages import (
    finetune_hparams,
    stage_evaluate,
    stage_finetune,
    stage_prepare,
    stage_search,
    stage_zeroshot,
)
from autoft.study_stages import default_storage, stage_create_study, stage_select_best
from autoft.termination import Terminated, interrupt_behind

RUN_STATUS_FILE = "run_status.json"


@contextmanager
def run_status(run_dir: Path) -> Iterator[None]:
    """Mark a run folder running, then succeeded, failed, interrupted (Ctrl-C) or terminated (SIGTERM), so a
    half-run folder says so however the run ended."""
    run_dir = Path(run_dir)
    started = datetime.now(UTC).isoformat(timespec="seconds")

    def mark(state: str, error: str = "") -> None:
        payload = {"state": state, "started": started, "ended": datetime.now(UTC).isoformat(timespec="seconds")}
        if error:
            payload["error"] = error
        with suppress(OSError):  # a full disk must not hide the error that brought us here
            atomic_write_json(run_dir / RUN_STATUS_FILE, payload)

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_STATUS_FILE, {"state": "running", "started": started})
    try:
        yield
    except BaseException as error:
        if isinstance(interrupt_behind(error), Terminated):
            mark("terminated", "stopped by SIGTERM (e.g. Kubernetes stopping the pod); the run is incomplete")
        elif caused_by_interrupt(error):
            mark("interrupted", "stopped by the user (Ctrl-C); the run is incomplete")
        else:
            mark("failed", f"{type(error).__name__}: {error}"[:2000])
        raise
    mark("succeeded")


@dataclass(frozen=True)
class RunLayout:
    """Where each stage writes inside a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def zeroshot(self) -> Path:
        return self.root / "models" / "zeroshot"

    def search(self, method: str) -> Path:
        return self.root / "search" / f"{method}.json"

    def finetune(self, method: str) -> Path:
        return self.root / "models" / method

    def grid_point(self, method: str, lr: float) -> Path:
        """One full fine-tune of a grid-tuned baseline; the chosen one is copied to :meth:`finetune`."""
        return self.root / "models" / f"{method}-grid" / grid_point_name(lr)

    def eval(self, eval_set: str) -> Path:
        return self.root / "eval" / f"{eval_set}.json"

    def model_folder(self, method: str) -> Path:
        """The saved classifier that represents ``method`` in evaluation."""
        source = model_source(method)
        if source.finetuned is None:
            return self.zeroshot
        return self.finetune(source.finetuned) / source.kind


def wiseft_pairs(layout: RunLayout, methods: list[str]) -> dict[str, tuple[Path, Path]]:
    """For each WiSE-FT method's base: (zero-shot, fine-tuned) folders, the ends of its alpha curve."""
    bases = [model_source(m).finetuned for m in methods if is_wiseft(m)]
    return {base: (layout.zeroshot, layout.model_folder(base)) for base in bases if base}


def collect_results(config: AutoFTConfig, layout: RunLayout, timing: dict[str, float]) -> Results:
    """Assemble results.json and write the report from what the stages left in the run folder."""
    data = PreparedData.load_from(layout.data)
    searches = {m: SearchResult.load(layout.search(m)) for m in searched_methods(config.methods)}
    results = assemble_results(
        preset=config.preset,
        metric=config.metric,
        data=data,
        methods=config.methods,
        evals={name: EvalResult.load(layout.eval(name)) for name in data.eval_sets},
        searches=searches,
        finetunes={
            m: FinetuneSummary.load(layout.finetune(m) / FinetuneSummary.FILE)
            for m in finetuned_methods(config.methods)
        },
        timing_s=timing,
    )
    write_report(results, searches, layout.root)
    return results


def run_inprocess(config: AutoFTConfig, run_dir: Path, progress: bool = True) -> Results:
    """All stages, one after another, with per-stage timing in results.json (the search includes creating
    the study and selecting the best trial; ``autoft run`` adds its start-up and the total)."""
    layout = RunLayout(Path(run_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(config, layout.config)
    timing: dict[str, float] = {}

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        timing[stage] = timing.get(stage, 0.0) + time.perf_counter() - start

    with timed("prepare"):
        data = stage_prepare(config, layout.data)
    with timed("zeroshot"):
        stage_zeroshot(config, layout.data, layout.zeroshot)
    for method in searched_methods(config.methods):
        storage = config.search.storage or default_storage(layout.root, method)
        with timed(f"search_{method}"):
            stage_create_study(config, method, storage, workers=1)
            stage_search(config, layout.data, layout.zeroshot, method, storage, progress=progress)
            stage_select_best(config, method, storage, layout.search(method))
    search_results = {m: layout.search(m) for m in searched_methods(config.methods)}
    for method in finetuned_methods(config.methods):
        with timed(f"finetune_{method}"):
            if BASE_METHODS[method].grid:
                points = [layout.grid_point(method, lr) for lr in config.baseline_lr_grid]
                for lr, folder in zip(config.baseline_lr_grid, points, strict=True):
                    hparams = grid_hparams(config, method, lr)
                    stage_finetune(config, layout.data, layout.zeroshot, method, hparams, folder, progress=progress)
                stage_select_grid(config, method, points, layout.finetune(method))
                continue
            hparams = finetune_hparams(method, search_results)
            stage_finetune(
                config, layout.data, layout.zeroshot, method, hparams, layout.finetune(method), progress=progress
            )
    models = {m: layout.model_folder(m) for m in config.methods}
    with timed("evaluate"):
        for eval_set in data.eval_sets:
            stage_evaluate(
                config, layout.data, eval_set, models, layout.eval(eval_set), wiseft_pairs(layout, config.methods)
            )
    report_start = time.perf_counter()
    results = collect_results(config, layout, timing)
    results.timing_s["report"] = round(time.perf_counter() - report_start, 3)
    results.save(layout.root / "results.json")
    return results
