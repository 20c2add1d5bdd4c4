"""Run every stage in this process, in DAG order, into one run folder.

The Kubeflow pipeline runs the same stage functions as separate steps; this runner is the
no-orchestrator path (tests, benchmarks, debugging) and produces the same run folder layout.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoft.config import AutoFTConfig, save_config
from autoft.data.registry import PreparedData
from autoft.methods import (
    base_of,
    finetuned_methods,
    is_wiseft,
    searched_methods,
    validate_methods,
)
from autoft.report import assemble_results, write_report
from autoft.stages import (
    hparams_for,
    read_json,
    stage_evaluate,
    stage_finetune,
    stage_prepare,
    stage_search,
    stage_zeroshot,
)
from autoft.study_stages import default_storage, stage_create_study, stage_select_best


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

    def hparams(self, method: str) -> Path:
        return self.root / "hparams" / f"{method}.json"

    def finetune(self, method: str) -> Path:
        return self.root / "models" / method

    def eval(self, eval_set: str) -> Path:
        return self.root / "eval" / f"{eval_set}.json"

    def model_folder(self, method: str) -> Path:
        """The saved classifier that represents ``method`` in evaluation."""
        if method == "zeroshot":
            return self.zeroshot
        if is_wiseft(method):
            return self.finetune(base_of(method)) / "wiseft"
        return self.finetune(method) / "model"


def eval_sets(data: PreparedData) -> list[str]:
    return ["id_val", "id_test", "ood_val", *data.ood_tests]


def wiseft_pairs(layout: RunLayout, methods: list[str]) -> dict[str, tuple[Path, Path]]:
    return {base_of(m): (layout.zeroshot, layout.finetune(base_of(m)) / "model") for m in methods if is_wiseft(m)}


def collect_results(config: AutoFTConfig, layout: RunLayout, timing: dict[str, float]) -> dict[str, Any]:
    """Assemble results.json and write the report from what the stages left in the run folder."""
    data = PreparedData.load(layout.data)
    methods = config.methods
    searches = {m: read_json(layout.hparams(m)) for m in searched_methods(methods)}
    finetunes = {m: read_json(layout.finetune(m) / "wiseft.json") for m in finetuned_methods(methods)}
    evals = {name: read_json(layout.eval(name)) for name in eval_sets(data)}
    results = assemble_results(
        preset=config.preset,
        metric=config.metric,
        ood_val_set=data.ood_val_set,
        ood_tests=data.ood_tests,
        methods=methods,
        evals=evals,
        searches=searches,
        finetunes=finetunes,
        timing_s=timing,
        ood_val_indices_hash=data.ood_val_indices_hash,
    )
    write_report(results, {m: s["trials"] for m, s in searches.items()}, layout.root)
    return results


def run_inprocess(config: AutoFTConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """All stages, one after another, with per-stage timing in results.json."""
    validate_methods(config.methods)
    layout = RunLayout(Path(run_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(config, layout.config)
    timing: dict[str, float] = {}

    @contextmanager
    def timed(stage: str):
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
            stage_create_study(config, method, storage)
            stage_search(config, layout.data, layout.zeroshot, method, storage, progress=progress)
            stage_select_best(config, method, storage, layout.hparams(method))
    hparams_files = {m: layout.hparams(m) for m in searched_methods(config.methods)}
    for method in finetuned_methods(config.methods):
        with timed(f"finetune_{method}"):
            stage_finetune(
                config,
                layout.data,
                layout.zeroshot,
                hparams_for(method, hparams_files),
                layout.finetune(method),
                progress=progress,
            )
    models = {m: layout.model_folder(m) for m in config.methods}
    with timed("evaluate"):
        for eval_set in eval_sets(data):
            stage_evaluate(
                config, layout.data, eval_set, models, layout.eval(eval_set), wiseft_pairs(layout, config.methods)
            )
    return collect_results(config, layout, timing)
