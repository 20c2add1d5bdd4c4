"""The `smoke` preset end to end on the built-in benchmark: schema, and numbers that are real.

Every reported number must be reproducible from what the run saved: each method's value on each eval
set is its accuracy, so it must equal trace/sum of the confusion matrix stored for that set; WiSE-FT at
alpha 0 and 1 must reproduce the zero-shot and fine-tuned models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoft.config import resolve_config
from autoft.contracts import Results
from autoft.runner import RunLayout, run_inprocess


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Results, Path]:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    config = resolve_config(preset="smoke", overrides=["device=cpu"])
    return run_inprocess(config, run_dir, progress=False), run_dir


@pytest.mark.slow
def test_results_follow_the_schema(smoke_run: tuple[Results, Path]) -> None:
    results, run_dir = smoke_run
    assert Results.load(run_dir / "results.json") == results
    assert json.loads((run_dir / "results.json").read_text())["schema"] == Results.SCHEMA
    assert results.preset == "smoke" and results.metric == "accuracy"
    assert results.ood_val_set
    expected_methods = resolve_config(preset="smoke").methods
    assert list(results.methods) == expected_methods
    shifts = None
    for method, row in results.methods.items():
        shifts = shifts or list(row.ood)
        assert list(row.ood) == shifts and len(shifts) >= 4, method
        for value in [row.id_val, row.id_test, *row.ood.values(), row.ood_avg]:
            assert 0.0 <= value <= 1.0, (method, value)
        assert row.ood_avg == pytest.approx(np.mean(list(row.ood.values())))
        assert (row.wiseft_alpha is not None) == method.endswith("_wiseft")
    assert sorted(results.search) == ["autoft", "ft_oodval"]  # ft and flyp are grid fine-tunes, not searches
    for method in ("autoft", "ft_oodval"):
        search = results.search[method]
        assert search.trials_complete == 3 and 0.0 <= search.best_value <= 1.0
    for method in ("ft", "flyp"):
        grid = results.methods[method].lr_grid
        assert sorted(p.lr for p in grid) == resolve_config(preset="smoke").baselines.lr_grid
        assert results.methods[method].hparams.lr in [p.lr for p in grid]
    assert results.methods["autoft"].hparams.weights["ce"] == 1.0
    # The control reuses AutoFT's lr and wd with cross-entropy only.
    control, autoft = results.methods["autoft_ce"].hparams, results.methods["autoft"].hparams
    assert (control.lr, control.weight_decay) == (autoft.lr, autoft.weight_decay)
    assert control.weights == {"ce": 1.0}
    for name in ("report.md", "report.html", "plots/id_vs_ood.png", "plots/search_autoft_history.png", "config.yaml"):
        assert (run_dir / name).is_file(), name


@pytest.mark.slow
def test_every_number_matches_its_confusion_matrix(smoke_run: tuple[Results, Path]) -> None:
    results, run_dir = smoke_run
    layout = RunLayout(run_dir)
    for method, row in results.methods.items():
        for eval_set, reported in [("id_val", row.id_val), ("id_test", row.id_test), *row.ood.items()]:
            stored = json.loads(layout.eval(eval_set).read_text())["models"][method]
            matrix = np.asarray(stored["confusion"])
            assert matrix.shape == (10, 10)
            assert reported == pytest.approx(np.trace(matrix) / matrix.sum()), (method, eval_set)


@pytest.mark.slow
def test_wiseft_curve_ends_are_the_zeroshot_and_finetuned_models(smoke_run: tuple[Results, Path]) -> None:
    results, _ = smoke_run
    for method, curve in results.wiseft_curves.items():
        assert curve["0.00"].id_test == pytest.approx(results.methods["zeroshot"].id_test)
        assert curve["1.00"].id_test == pytest.approx(results.methods[method].id_test)
        assert curve["1.00"].ood_avg == pytest.approx(results.methods[method].ood_avg)
