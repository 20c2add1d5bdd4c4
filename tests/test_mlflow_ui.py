"""The MLflow UI at the paper's search scale, in a real headless Chromium (Debian's, `make browser-deps`).

A tracking store holds one pipeline run as the steps leave it after 4 searched methods x 500 trials (2,000
trial records), written quickly through the product's own tracking calls (components/tracking.py) with no
training: the pipeline run, a run per method over its own steps, each search as one trial table with the
best few trials as nested runs, and a registered model whose champion alias points at AutoFT's version.
The UI must open the experiment on the method runs (not 2,000 rows of trials), show a method's trial
table and the champion.
"""

from __future__ import annotations

import csv
import random
import re
import time
from dataclasses import dataclass

import pytest
from components.tracking import TRIALS_TABLE, PipelineRuns
from mlflow import MlflowClient

import browser
from autoft.config import TrackingConfig
from autoft.contracts import SearchResult, TrialRecord
from autoft.hparams import Hyperparams
from servers import ServerProcess

pytest_plugins = ["conftest_servers"]

SEARCHED = ("ft", "flyp", "autoft", "ft_oodval")
METHODS = ("zeroshot", *SEARCHED)
TRIALS = 500  # per searched method: the paper's budget
TERMS = ("ce", "hinge", "entropy", "l2init")
MODEL = "ui-scale-clip"


def fabricated_search(method: str, seed: int, start: float) -> SearchResult:
    """``TRIALS`` trial records as select_best leaves them: mostly complete, a quarter pruned at an inner-step
    rung, a few failed, each with its sampled parameters, effective hyperparameters, start and duration."""
    rng = random.Random(seed)
    trials = []
    clock = start
    for number in range(TRIALS):
        weights = {term: 1.0 if term == "ce" else 10 ** rng.uniform(-4, 1) for term in TERMS}
        hparams = Hyperparams(weights=weights, lr=10 ** rng.uniform(-6, -2), weight_decay=rng.uniform(0, 1))
        params = {"lr": hparams.lr, "weight_decay": hparams.weight_decay}
        params.update({f"w_{term}": weight for term, weight in weights.items() if term != "ce"})
        draw = rng.random()
        state = "COMPLETE" if draw < 0.7 else "PRUNED" if draw < 0.96 else "FAIL"
        rungs = (10, 30) if state == "PRUNED" else (10, 30, 90)
        intermediate = {step: rng.uniform(0.2, 0.9) for step in rungs} if state != "FAIL" else {}
        seconds = rng.uniform(0.5, 4.0)
        trials.append(
            TrialRecord(
                number=number,
                state=state,
                value=intermediate[90] if state == "COMPLETE" else None,
                params=params,
                intermediate=intermediate,
                hparams=hparams.to_dict(),
                start=clock,
                seconds=seconds,
            )
        )
        clock += seconds / 2  # two workers
    best = max((t for t in trials if t.state == "COMPLETE"), key=lambda t: (t.value, -t.number))
    return SearchResult(
        method=method,
        hparams=Hyperparams.from_dict(best.hparams),
        best_value=best.value,
        best_trial=best.number,
        trials_complete=sum(t.state in ("COMPLETE", "PRUNED") for t in trials),
        storage="postgresql://optuna@db/optuna",
        study_name=f"{method}-kfp-ui-scale-{method}",
        seconds=clock - start,
        trials=trials,
    )


@dataclass
class Store:
    url: str
    experiment_id: str
    parent: str
    method_runs: dict[str, str]


def build_store(url: str) -> Store:
    """The store a 4 x 500-trial pipeline run leaves, built through PipelineRuns in seconds (no training)."""
    runs = PipelineRuns.open(url, "ui-scale", "kfp-ui-scale", start=True, run_name="digits-uiscale")
    method_runs = {}
    nested = TrackingConfig().nested_trials
    for index, method in enumerate(METHODS):
        [method_runs[method]] = runs.start_methods([method])  # as the method's first step does
        if method in SEARCHED:
            search = fabricated_search(method, index, time.time() - 3600)
            runs.log_search(method, search, nested=nested)  # as the report step does
        runs.log(method_runs[method], metrics={"id_test": 0.9 - index / 100, "ood_avg": 0.6 + index / 100})
        runs.end_methods([method])  # as the method's last step does
    model = runs.client.create_logged_model(runs.experiment_id, name="model", source_run_id=method_runs["autoft"])
    version = runs.register(MODEL, f"models:/{model.model_id}", {"ood_avg": "0.63"})
    runs.promote(MODEL, str(version.version))
    runs.finish(succeeded=True)
    return Store(url, runs.experiment_id, runs.parent_id, method_runs)


@pytest.fixture(scope="module")
def store(mlflow_server: ServerProcess) -> Store:
    return build_store(mlflow_server.url)


def test_the_store_holds_2000_trial_records_in_tables_and_few_runs(store: Store) -> None:
    client = MlflowClient(store.url)
    records = 0
    for method in SEARCHED:
        text = client.download_artifacts(store.method_runs[method], str(TRIALS_TABLE))
        with open(text, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(row["number"]) for row in rows] == list(range(TRIALS))
        pruned = [row for row in rows if row["state"] == "PRUNED"]
        assert pruned and {row["pruned_step"] for row in pruned} == {"30"} and not any(r["value"] for r in pruned)
        records += len(rows)
    assert records == 2000
    runs = client.search_runs([store.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("autoft.role") == "trial"]
    nested = TrackingConfig().nested_trials
    assert len(trials) == nested * len(SEARCHED) and len(runs) == 1 + len(METHODS) + len(trials)


def test_the_ui_shows_the_method_runs_a_trial_table_and_the_champion(store: Store) -> None:
    browser.require_chromium()
    url, experiment = store.url, store.experiment_id
    runs = 1 + len(METHODS) + TrackingConfig().nested_trials * len(SEARCHED)  # not 2,000 more for the trials
    # The experiment opens on ONE row, the pipeline run (its children fold under it), and counts its runs.
    listing = browser.page_text(browser.mlflow_page(url, f"/experiments/{experiment}"))
    assert "digits-uiscale" in listing and f"{runs} matching runs" in listing, listing[:3000]
    assert "Overview Usage Quality" not in listing, "opened in the GenAI view"
    assert not re.search(r"\btrial-\d+", listing)

    # The pipeline run's page names its method runs as its child runs (the trials are one level further down).
    page = browser.page_text(browser.mlflow_page(url, f"/experiments/{experiment}/runs/{store.parent}"))
    children = re.search(r"Child runs (.*?) Source", page)
    assert children, page[:3000]
    assert sorted(name.strip() for name in children.group(1).split(",")) == sorted(METHODS)

    # A searched method's trials: one table artifact, rendered by the run's artifact viewer.
    run = store.method_runs["autoft"]
    route = f"/experiments/{experiment}/runs/{run}/artifacts/{TRIALS_TABLE}"
    table = browser.page_text(browser.mlflow_page(url, route))
    assert f"Previewing the first {TRIALS} rows" in table, table[:3000]
    assert "number state value seconds pruned_step" in table and " PRUNED " in table and " COMPLETE " in table

    registry = browser.page_text(browser.mlflow_page(url, f"/models/{MODEL}"))
    assert "champion" in registry and "Version 1" in registry, registry[:3000]
