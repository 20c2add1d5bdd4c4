"""Each KFP component's python function, called directly (``.python_func``) on small real inputs.

The steps run in order on the built-in digits data with a tiny random CLIP, passing real artifact
objects (folders on disk, metadata, metrics) the way KFP would; every assertion checks what a later
step or a person relies on. One module-scoped chain keeps it to one data preparation and one search.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from components.build_zeroshot.component import build_zeroshot
from components.create_study.component import create_study
from components.evaluate.component import evaluate
from components.finalize.component import finalize
from components.finetune.component import finetune
from components.gate.component import gate
from components.gate.decision import Champion, decide
from components.prepare_data.component import prepare_data
from components.register.component import register
from components.report.component import report
from components.runtime import (
    STUDY_STORAGE_ENV,
    check_candidate,
    load_step_config,
    method_model_folders,
    run_scoped,
    shard_eval_sets,
    shard_sets,
    study_storage_reference,
    study_storage_url,
)
from components.search_worker.component import search_worker
from components.select_best.component import select_best
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Markdown,
    Metrics,
    Model,
    PipelineTaskFinalStatus,
)
from mlflow import MlflowClient

from autoft.config import AutoFTConfig, config_to_yaml
from autoft.contracts import MethodResult, Results
from autoft.errors import ConfigError
from conftest import tiny_pipeline_config

METHODS = ["zeroshot", "autoft", "autoft_ce", "autoft_wiseft"]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RUN_ID = "run-1"


def tiny_config(methods: list[str], mlflow_uri: str = "") -> AutoFTConfig:
    return tiny_pipeline_config(
        "component-test",
        methods,
        wiseft={"alphas": [0.0, 0.5, 1.0]},
        tracking={"mlflow_uri": mlflow_uri, "experiment": "component-tests", "registered_model": "tiny-clip"},
    )


def artifact(kind: type, folder: Path, name: str, metadata: dict[str, Any] | None = None) -> Any:
    """An artifact object as KFP hands it to a step: a local URI under ``folder`` (not created yet)."""
    return kind(name=name, uri=str(folder / name), metadata=dict(metadata or {}))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("components")


@pytest.fixture(scope="module")
def config(work: Path) -> AutoFTConfig:
    return tiny_config(METHODS, mlflow_uri=f"sqlite:///{work / 'mlflow.db'}")


@pytest.fixture(scope="module")
def common(config: AutoFTConfig) -> dict[str, Any]:
    return {"config_yaml": config_to_yaml(config), "config_overrides": [], "methods": METHODS}


@pytest.fixture(scope="module")
def tracked(work: Path) -> dict[str, str]:
    """What every tracking step receives: the KFP run id, the MLflow URI parameter (empty: the config's), the folder."""
    return {"run_id": RUN_ID, "mlflow_tracking_uri": "", "output_dir": str(work / "run")}


@pytest.fixture(scope="module")
def prepared(work: Path, common: dict[str, Any], tracked: dict[str, str]) -> tuple[Dataset, list[str]]:
    dataset = artifact(Dataset, work, "prepared")
    eval_sets = prepare_data.python_func(
        **common, **tracked, candidate_method="autoft", step_image="autoft-step:test", prepared=dataset
    )
    return dataset, eval_sets


@pytest.fixture(scope="module")
def zeroshot(work: Path, common: dict[str, Any], tracked: dict[str, str], prepared: tuple[Dataset, list[str]]) -> Model:
    model = artifact(Model, work, "zeroshot")
    build_zeroshot.python_func(**common, **tracked, prepared=prepared[0], zeroshot=model)
    return model


@pytest.fixture(scope="module")
def study_items(work: Path, common: dict[str, Any], tracked: dict[str, str], zeroshot: Model) -> list[dict]:
    return create_study.python_func(
        **common, **tracked, method="autoft", study_storage=str(work / "studies"), search_workers=2
    )


@pytest.fixture(scope="module")
def searched(
    common: dict[str, Any],
    tracked: dict[str, str],
    study_items: list[dict],
    prepared: tuple[Dataset, list[str]],
    zeroshot: Model,
) -> list[int]:
    # Two workers in turn on one study: together they run the TOTAL budget, not twice it.
    return [
        search_worker.python_func(
            **common,
            **tracked,
            method="autoft",
            worker_index=item["worker_index"],
            workers=item["workers"],
            storage=item["storage"],
            study_name=item["study_name"],
            prepared=prepared[0],
            zeroshot=zeroshot,
        )
        for item in study_items
    ]


@pytest.fixture(scope="module")
def best(work: Path, common: dict[str, Any], searched: list[int]) -> tuple[Artifact, Metrics]:
    hparams = artifact(Artifact, work, "best_hparams")
    metrics = artifact(Metrics, work, "search_metrics")
    select_best.python_func(
        **common,
        method="autoft",
        study_storage=str(work / "studies"),
        run_id=RUN_ID,
        best_hparams=hparams,
        search_metrics=metrics,
    )
    return hparams, metrics


def run_finetune(
    work: Path,
    common: dict[str, Any],
    tracked: dict[str, str],
    method: str,
    prepared: Dataset,
    zeroshot: Model,
    hparams: Artifact,
) -> dict[str, Any]:
    outputs = {
        "model": artifact(Model, work, f"{method}_model"),
        "wiseft_model": artifact(Model, work, f"{method}_wiseft_model"),
        "summary": artifact(Artifact, work, f"{method}_summary"),
        "finetune_metrics": artifact(Metrics, work, f"{method}_metrics"),
    }
    finetune.python_func(
        **common,
        **tracked,
        checkpoint_root="",  # the default: <output_dir>/checkpoints/<run>/<method>
        method=method,
        prepared=prepared,
        zeroshot=zeroshot,
        hparams=hparams,
        **outputs,
    )
    return outputs


@pytest.fixture(scope="module")
def tuned(
    work: Path,
    common: dict[str, Any],
    tracked: dict[str, str],
    prepared: tuple[Dataset, list[str]],
    zeroshot: Model,
    best: tuple[Artifact, Metrics],
) -> dict[str, dict[str, Any]]:
    # autoft_ce is the control that borrows autoft's lr and wd: it receives autoft's select_best output.
    return {m: run_finetune(work, common, tracked, m, prepared[0], zeroshot, best[0]) for m in ("autoft", "autoft_ce")}


def model_inputs(tuned: dict[str, dict[str, Any]]) -> dict[str, Model]:
    return {
        "autoft": tuned["autoft"]["model"],
        "autoft_ce": tuned["autoft_ce"]["model"],
        "autoft_wiseft": tuned["autoft"]["wiseft_model"],
    }


@pytest.fixture(scope="module")
def evaluations(
    work: Path,
    common: dict[str, Any],
    prepared: tuple[Dataset, list[str]],
    zeroshot: Model,
    tuned: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    results = {}
    for eval_set in prepared[1]:
        outputs = {
            "results": artifact(Artifact, work, f"eval_{eval_set}"),
            "eval_metrics": artifact(Metrics, work, f"eval_{eval_set}_metrics"),
            "confusion": artifact(ClassificationMetrics, work, f"eval_{eval_set}_confusion"),
        }
        evaluate.python_func(
            **common,
            eval_set=eval_set,
            candidate_method="autoft",
            prepared=prepared[0],
            zeroshot=zeroshot,
            **model_inputs(tuned),
            **outputs,
        )
        results[eval_set] = outputs
    return results


@pytest.fixture(scope="module")
def reported(
    work: Path,
    common: dict[str, Any],
    tracked: dict[str, str],
    prepared: tuple[Dataset, list[str]],
    best: tuple[Artifact, Metrics],
    tuned: dict[str, dict[str, Any]],
    evaluations: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    outputs = {
        "results": artifact(Artifact, work, "results"),
        "report_md": artifact(Markdown, work, "report_md"),
        "report_html": artifact(HTML, work, "report_html"),
        "summary_metrics": artifact(Metrics, work, "summary_metrics"),
    }
    run_id = report.python_func(
        **common,
        **tracked,
        prepared=prepared[0],
        evals=[e["results"] for e in evaluations.values()],
        autoft_search=best[0],
        autoft_finetune=tuned["autoft"]["summary"],
        autoft_ce_finetune=tuned["autoft_ce"]["summary"],
        **outputs,
    )
    return {"mlflow_run_id": run_id, **outputs}


def run_gate(
    work: Path, common: dict[str, Any], tracked: dict[str, str], reported: dict[str, Any], min_gain: float
) -> tuple[bool, Metrics]:
    metrics = artifact(Metrics, work, f"gate_metrics_{min_gain}")
    passed = gate.python_func(
        **common,
        **tracked,
        candidate_method="autoft",
        gate_baselines=["zeroshot", "autoft_ce"],
        gate_min_gain=min_gain,
        registered_model="",
        results=reported["results"],
        gate_metrics=metrics,
    )
    return passed, metrics


# ---------------------------------------------------------------------------------------------
# the chain of steps
# ---------------------------------------------------------------------------------------------


def test_prepare_data_writes_manifests_and_names_the_eval_sets(prepared: tuple[Dataset, list[str]]) -> None:
    dataset, eval_sets = prepared
    folder = Path(dataset.path)
    index = json.loads((folder / "data.json").read_text())
    assert eval_sets == ["id_val", "id_test", "ood_val", "invert"]
    assert index["ood_tests"] == ["invert"]
    assert (folder / "ood_val.json").is_file()
    assert yaml.safe_load((folder / "config.yaml").read_text())["methods"] == METHODS
    assert dataset.metadata["ood_tests"] == ["invert"]
    assert dataset.metadata["num_classes"] == 10
    assert dataset.metadata["ood_val_indices_hash"] == index["ood_val_indices_hash"]


def test_prepare_data_refuses_bad_parameters_before_any_compute(
    tmp_path: Path, common: dict[str, Any], tracked: dict[str, str]
) -> None:
    with pytest.raises(ConfigError, match="candidate_method 'ft'"):
        prepare_data.python_func(
            **common, **tracked, candidate_method="ft", step_image="x", prepared=artifact(Dataset, tmp_path, "a")
        )
    with pytest.raises(ConfigError, match="compiled for"):
        prepare_data.python_func(
            **{**common, "config_overrides": ["methods=[zeroshot,ft]"]},
            **tracked,
            candidate_method="",
            step_image="x",
            prepared=artifact(Dataset, tmp_path, "b"),
        )
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_build_zeroshot_saves_a_loadable_classifier(zeroshot: Model) -> None:
    from autoft.models.classifier import load_classifier

    model = load_classifier(zeroshot.path)
    assert model.num_classes == 10
    assert zeroshot.metadata["method"] == "zeroshot"


def test_create_study_returns_one_item_per_worker_on_a_run_scoped_study(work: Path, study_items: list[dict]) -> None:
    assert [item["worker_index"] for item in study_items] == [0, 1]
    assert {item["study_name"] for item in study_items} == {f"autoft-{RUN_ID}-autoft"}
    assert {item["storage"] for item in study_items} == {str(work / "studies")}
    assert (work / "studies" / "autoft.journal").is_file()


def test_search_workers_share_the_total_budget(config: AutoFTConfig, work: Path, searched: list[int]) -> None:
    assert searched == [1, 2]  # one trial each (the study's counts after each): the budget split, not doubled
    storage = study_storage_url(str(work / "studies"), "autoft")
    from autoft.search.study import open_storage

    study = optuna.load_study(study_name=f"autoft-{RUN_ID}-autoft", storage=open_storage(storage, config.search))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs["worker"] for t in complete) == [0, 1]


def test_search_worker_refuses_an_item_of_another_run(
    common: dict[str, Any], study_items: list[dict], prepared: tuple[Dataset, list[str]], zeroshot: Model
) -> None:
    with pytest.raises(ValueError, match=r"this run.s autoft study"):
        search_worker.python_func(
            **common,
            method="autoft",
            worker_index=0,
            workers=2,
            storage=study_items[0]["storage"],
            study_name=study_items[0]["study_name"],
            run_id="some-other-run",
            mlflow_tracking_uri="",
            output_dir="",
            prepared=prepared[0],
            zeroshot=zeroshot,
        )


def test_select_best_writes_effective_hparams_and_metrics(best: tuple[Artifact, Metrics]) -> None:
    hparams, metrics = best
    payload = json.loads(Path(hparams.path).read_text())
    assert payload["method"] == "autoft"
    assert payload["trials_complete"] == 2
    assert payload["hparams"]["weights"]["ce"] == 1.0  # the anchor, stored as used
    assert hparams.metadata["best_value"] == payload["best_value"]
    assert metrics.metadata["lr"] == pytest.approx(payload["hparams"]["lr"])
    assert metrics.metadata["trials_complete"] == 2
    assert "w_hinge" in metrics.metadata
    # The winner check: the best value's SE over source images and the held-out re-score reach the UI.
    assert (
        metrics.metadata["best_se"] == pytest.approx(payload["winner"]["best_se"]) and payload["winner"]["best_se"] > 0
    )
    assert metrics.metadata["winner_within_one_se"] == float(payload["winner"]["flagged"])
    assert payload["winner"]["top"][0]["holdout_score"] is not None


def test_finetune_outputs_model_wiseft_model_and_summary(
    tuned: dict[str, dict[str, Any]], best: tuple[Artifact, Metrics], tracked: dict[str, str]
) -> None:
    from autoft.durable import DurableCheckpoints
    from autoft.models.classifier import load_classifier

    searched = json.loads(Path(best[0].path).read_text())["hparams"]
    for method, outputs in tuned.items():
        load_classifier(outputs["model"].path)
        load_classifier(outputs["wiseft_model"].path)
        summary = json.loads(Path(outputs["summary"].path).read_text())
        assert summary["wiseft"]["alphas"] == [0.0, 0.5, 1.0]
        assert outputs["wiseft_model"].metadata["wiseft_alpha"] == summary["wiseft"]["best_alpha"]
        assert outputs["finetune_metrics"].metadata["best_epoch"] == 0
        assert summary["hparams"]["lr"] == pytest.approx(searched["lr"]), method
        # Each finished epoch was also saved where a retried attempt of this step would resume from.
        durable = DurableCheckpoints.for_run(Path(tracked["output_dir"]) / "checkpoints", RUN_ID, method)
        assert durable.latest_epoch() == len(summary["history"]) - 1, method
    # The control keeps autoft's lr and wd but trains with cross-entropy alone.
    assert json.loads(Path(tuned["autoft_ce"]["summary"].path).read_text())["hparams"]["weights"] == {"ce": 1.0}


def test_evaluate_scores_every_method_and_logs_the_confusion_matrix(evaluations: dict[str, dict[str, Any]]) -> None:
    shift = evaluations["invert"]
    payload = json.loads(Path(shift["results"].path).read_text())
    assert set(payload["models"]) == set(METHODS)
    assert set(payload["wiseft_curves"]["autoft"]) == {"0.00", "0.50", "1.00"}
    # alpha 1 of the curve is the fine-tuned model itself.
    assert payload["wiseft_curves"]["autoft"]["1.00"] == pytest.approx(payload["models"]["autoft"]["value"])
    # Validation splits are scored for every method but get no curve (the report never plots one there).
    for split in ("id_val", "ood_val"):
        validation = json.loads(Path(evaluations[split]["results"].path).read_text())
        assert set(validation["models"]) == set(METHODS) and validation["wiseft_curves"] == {}
    assert shift["results"].metadata["eval_set"] == "invert"
    assert shift["eval_metrics"].metadata["autoft.accuracy"] == pytest.approx(payload["models"]["autoft"]["value"])
    matrix = shift["confusion"].metadata["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]][:2] == ["zero", "one"]
    assert len(matrix["annotationSpecs"]) == 10
    assert sum(sum(row["row"]) for row in matrix["rows"]) == sum(
        sum(row) for row in payload["models"]["autoft"]["confusion"]
    )


def test_evaluate_scores_a_shard_of_eval_sets_as_their_own_tasks_would(
    work: Path,
    common: dict[str, Any],
    prepared: tuple[Dataset, list[str]],
    zeroshot: Model,
    tuned: dict[str, dict[str, Any]],
    evaluations: dict[str, dict[str, Any]],
) -> None:
    sets = ["id_val", "invert"]
    outputs = {
        "results": artifact(Artifact, work, "eval_shard"),
        "eval_metrics": artifact(Metrics, work, "eval_shard_metrics"),
        "confusion": artifact(ClassificationMetrics, work, "eval_shard_confusion"),
    }
    evaluate.python_func(
        **common,
        eval_set=",".join(sets),
        candidate_method="autoft",
        prepared=prepared[0],
        zeroshot=zeroshot,
        **model_inputs(tuned),
        **outputs,
    )
    folder = Path(outputs["results"].path)
    assert sorted(path.name for path in folder.iterdir()) == ["id_val.json", "invert.json"]
    for name in sets:
        alone = json.loads(Path(evaluations[name]["results"].path).read_text())
        together = json.loads((folder / f"{name}.json").read_text())
        assert together["models"] == alone["models"] and together["wiseft_curves"] == alone["wiseft_curves"]
        assert outputs["eval_metrics"].metadata[f"{name}/autoft.accuracy"] == alone["models"]["autoft"]["value"]
    assert outputs["confusion"].metadata["eval_set"] == "id_val"


def test_eval_shards_deal_the_sets_round_robin() -> None:
    sets = ["id_val", "id_test", "ood_val", "a", "b"]
    assert shard_eval_sets(sets, 0) == sets and shard_eval_sets(sets, 9) == sets
    assert shard_eval_sets(sets, 2) == ["id_val,ood_val,b", "id_test,a"]
    assert [name for item in shard_eval_sets(sets, 3) for name in shard_sets(item)] == [
        "id_val",
        "a",
        "id_test",
        "b",
        "ood_val",
    ]
    with pytest.raises(ConfigError, match="eval_shards"):
        shard_eval_sets(sets, -1)


def test_evaluate_fails_when_a_method_has_no_model(
    tmp_path: Path, common: dict[str, Any], prepared: tuple[Dataset, list[str]], zeroshot: Model
) -> None:
    with pytest.raises(ValueError, match="no model artifact was passed for method 'autoft'"):
        evaluate.python_func(
            **common,
            eval_set="id_val",
            candidate_method="autoft",
            prepared=prepared[0],
            zeroshot=zeroshot,
            results=artifact(Artifact, tmp_path, "r"),
            eval_metrics=artifact(Metrics, tmp_path, "m"),
            confusion=artifact(ClassificationMetrics, tmp_path, "c"),
        )


def test_report_writes_results_in_the_benchmark_schema(work: Path, reported: dict[str, Any]) -> None:
    results = json.loads(Path(reported["results"].path).read_text())
    assert results["schema"] == Results.SCHEMA
    assert list(results["methods"]) == METHODS
    assert set(results["methods"]["autoft"]) >= {"id_val", "id_test", "ood", "ood_avg", "hparams", "wiseft_alpha"}
    assert list(results["methods"]["autoft"]["ood"]) == ["invert"]
    assert results["search"]["autoft"]["trials_complete"] == 2
    assert "autoft" in results["wiseft_curves"]
    assert {"prepare", "search_autoft", "finetune_autoft", "finetune_autoft_ce", "evaluate"} <= set(results["timing_s"])
    assert Path(reported["report_md"].path).read_text().startswith("# AutoFT report")
    assert "data:image/png;base64," in Path(reported["report_html"].path).read_text()
    for name in ("results.json", "report.md", "report.html", "plots/id_vs_ood.png", "config.yaml"):
        assert (work / "run" / name).is_file(), name
    summary = reported["summary_metrics"].metadata
    assert summary["autoft.ood_avg"] == pytest.approx(results["methods"]["autoft"]["ood_avg"])


def _tree(config: AutoFTConfig, parent: str) -> dict[str, Any]:
    client = MlflowClient(tracking_uri=config.tracking.mlflow_uri)
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.`autoft.pipeline_run_id` = '{parent}'"
    )
    return {
        "client": client,
        "methods": {r.data.tags["autoft.method"]: r for r in runs if r.data.tags["autoft.role"] == "method"},
        "trials": [r for r in runs if r.data.tags["autoft.role"] == "trial"],
    }


def test_the_mlflow_tree_spans_the_steps(config: AutoFTConfig, reported: dict[str, Any], tmp_path: Path) -> None:
    tree = _tree(config, reported["mlflow_run_id"])
    client = tree["client"]
    parent = client.get_run(reported["mlflow_run_id"])
    tags = parent.data.tags
    assert (tags["autoft.kfp_run_id"], tags["autoft.role"], tags["autoft.preset"]) == (
        RUN_ID,
        "pipeline",
        "component-test",
    )
    assert tags["autoft.dataset"] == "digits" and tags["autoft.image"] == "autoft-step:test"
    assert tags["mlflow.source.git.commit"] and tags["autoft.version"]
    assert parent.info.status == "RUNNING"  # the exit handler ends it
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's model-training view
    assert parent.data.params["config.search.n_trials"] == "2"
    assert {"report/results.json", "report/report.html"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }

    # One child per method, with the same metric names in each.
    methods = tree["methods"]
    assert set(methods) == set(METHODS)
    results = json.loads(Path(reported["results"].path).read_text())
    for method, run in methods.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"id_val", "id_test", "ood_avg", "ood/invert", "ood_val"} <= set(run.data.metrics), method
        assert run.data.metrics["ood/invert"] == pytest.approx(results["methods"][method]["ood"]["invert"])
        names = {d.dataset.name for d in run.inputs.dataset_inputs}
        assert {"digits/id_train", "digits/id_val", "digits/ood_val", "digits/invert"} <= names, method
    assert {"lr", "weight_decay", "w_ce", "w_l2init"} <= set(methods["autoft"].data.params)
    assert methods["autoft_ce"].data.params["w_ce"] == "1.0" and "w_l2init" not in methods["autoft_ce"].data.params
    assert methods["autoft_wiseft"].data.params["wiseft_alpha"] in ("0.0", "0.5", "1.0")

    # The search as one table in the method's run; its best trials (here both) as nested runs with their
    # hyperparameters and OOD-val score; a point per trial on the live search curve.
    autoft_run = methods["autoft"].info.run_id
    table = Path(client.download_artifacts(autoft_run, "search/trials.csv", str(tmp_path)))
    rows = list(csv.DictReader(table.open()))
    assert [row["number"] for row in rows] == ["0", "1"] and {row["state"] for row in rows} == {"COMPLETE"}
    assert all(float(row["seconds"]) > 0 and row["w_hinge"] and row["lr"] for row in rows)
    assert methods["autoft"].data.tags["autoft.trials_table"] == "search/trials.csv"
    assert any(a.path.endswith(".png") for a in client.list_artifacts(autoft_run, "search")), "Optuna's plots"
    assert len(client.get_metric_history(autoft_run, "search/trial_value")) == 2
    trials = tree["trials"]
    assert len(trials) == 2 and {t.data.tags["mlflow.parentRunId"] for t in trials} == {autoft_run}
    for trial in trials:
        assert {"lr", "weight_decay", "w_ce", "w_hinge"} <= set(trial.data.params)
        assert 0.0 <= trial.data.metrics["ood_val_objective"] <= 1.0
        assert trial.info.status == "FINISHED"
        assert methods["autoft"].info.start_time <= trial.info.start_time <= trial.info.end_time

    # Each method run spans its own steps (the chain ran them one after another), and is ended by its last.
    span = {m: (r.info.start_time, r.info.end_time) for m, r in methods.items()}
    assert all(r.info.status == "FINISHED" for r in methods.values()), "ended by their own steps"
    assert span["zeroshot"][1] <= span["autoft"][0], "zero-shot is built before AutoFT's study is created"
    assert span["autoft"][0] <= span["autoft_wiseft"][0] <= span["autoft_wiseft"][1] <= span["autoft"][1]
    assert span["autoft"][1] <= span["autoft_ce"][0], "the control's run starts with its own fine-tune"
    assert parent.info.start_time <= span["zeroshot"][0]

    # Fine-tuning curves (per step and per epoch), system metrics, and the models as MLflow models.
    autoft = autoft_run
    steps = client.get_metric_history(autoft, "train/loss")
    assert len(steps) >= 2 and [m.step for m in steps] == sorted(m.step for m in steps)
    assert {"train/lr", "train/ce", "epoch/id_val", "epoch/train_loss"} <= set(client.get_run(autoft).data.metrics)
    assert any(key.startswith("system/cpu") for key in client.get_run(autoft).data.metrics)
    for method in ("autoft", "autoft_ce", "autoft_wiseft"):
        assert methods[method].outputs.model_outputs, f"{method} has no logged MLflow model"


def test_kfps_mlflow_integration_gives_the_same_tree(
    work: Path,
    config: AutoFTConfig,
    common: dict[str, Any],
    reported: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """KFP's integration makes the pipeline run and a nested run per task (a loop iteration one level
    deeper) and sets MLFLOW_RUN_ID to the task's run: the tree goes under KFP's run, never the task's."""
    client = MlflowClient(tracking_uri=config.tracking.mlflow_uri)
    experiment = client.get_experiment_by_name("component-tests").experiment_id
    kfp_parent = client.create_run(experiment, run_name="kfp-pipeline-run").info.run_id
    iteration = client.create_run(experiment, tags={"mlflow.parentRunId": kfp_parent}).info.run_id
    task = client.create_run(experiment, tags={"mlflow.parentRunId": iteration}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", task)
    other = {"run_id": "run-kfp", "mlflow_tracking_uri": "", "output_dir": str(work / "run-kfp")}
    prepare_data.python_func(
        **common, **other, candidate_method="autoft", step_image="x", prepared=artifact(Dataset, work, "prepared-kfp")
    )
    # The method's first step (each task gets its own MLFLOW_RUN_ID; any task's root is the pipeline's run).
    create_study.python_func(
        **common, **other, method="autoft", study_storage=str(work / "studies-kfp"), search_workers=1
    )
    tree = _tree(config, kfp_parent)
    without_kfp = _tree(config, reported["mlflow_run_id"])  # the module's run: integration off
    assert set(tree["methods"]) == {"autoft"} and set(without_kfp["methods"]) == set(METHODS)
    # The same shape: each method run sits directly under the pipeline's run, with the same role and method.
    for found, parent in ((tree, kfp_parent), (without_kfp, reported["mlflow_run_id"])):
        shape = {
            m: (r.data.tags["autoft.role"], r.data.tags["mlflow.parentRunId"]) for m, r in found["methods"].items()
        }
        assert shape == {m: ("method", parent) for m in found["methods"]}
    assert {r.data.tags["mlflow.parentRunId"] for r in tree["methods"].values()} == {kfp_parent}
    assert client.get_run(kfp_parent).data.tags["autoft.kfp_run_id"] == "run-kfp"
    assert "autoft.role" not in client.get_run(task).data.tags, "the task's run is not mistaken for the pipeline's"
    own = client.search_runs([experiment], filter_string="tags.`autoft.kfp_run_id` = 'run-kfp'")
    assert [r.info.run_id for r in own] == [kfp_parent], "no second pipeline run was created"


def test_gate_then_register_then_gate_against_the_champion(
    work: Path, config: AutoFTConfig, common: dict[str, Any], tracked: dict[str, str], reported: dict[str, Any]
) -> None:
    blocked, metrics = run_gate(
        work, common, tracked, reported, min_gain=2.0
    )  # no model beats its rivals by 200 points
    assert blocked is False and metrics.metadata["passed"] == 0
    passed, metrics = run_gate(work, common, tracked, reported, min_gain=-1.0)
    assert passed is True and "no baseline" not in metrics.metadata["reason"]

    uri = register.python_func(
        **common,
        **tracked,
        candidate_method="autoft",
        registered_model="",
        gate_min_gain=-1.0,
        results=reported["results"],
    )
    assert uri == "models:/tiny-clip/1"
    client = MlflowClient(tracking_uri=config.tracking.mlflow_uri, registry_uri=config.tracking.mlflow_uri)
    champion = client.get_model_version_by_alias("tiny-clip", "champion")
    ood_avg = json.loads(Path(reported["results"].path).read_text())["methods"]["autoft"]["ood_avg"]
    assert str(champion.version) == "1"
    assert float(champion.tags["ood_avg"]) == pytest.approx(ood_avg)
    assert champion.tags["preset"] == "component-test"
    assert champion.run_id == _tree(config, reported["mlflow_run_id"])["methods"]["autoft"].info.run_id

    # The registered champion is a real MLflow model: it maps images to class names.
    import mlflow
    import pandas as pd

    png = (Path(__file__).parent / "fakes").parent / "fakes"
    del png
    served = mlflow.pyfunc.load_model("models:/tiny-clip@champion")
    prepared_images = _digit_pngs(work, 3)
    predicted = served.predict(pd.DataFrame({"image": prepared_images}))
    assert len(predicted) == 3 and set(predicted["label"]) <= set(
        load_step_config(**common).data.options.ood_test_shifts
    ) | {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    assert ((predicted["probability"] > 0) & (predicted["probability"] <= 1)).all()

    # The same model again only ties the champion: with no margin the gate must not pass.
    again, metrics = run_gate(work, common, tracked, reported, min_gain=0.0)
    assert again is False
    assert "champion v1" in metrics.metadata["reason"]
    assert client.get_run(reported["mlflow_run_id"]).data.tags["autoft.gate_passed"] == "false"


def _digit_pngs(work: Path, count: int) -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image

    images = np.load(work / "prepared" / "id_test.npz")["images"][:count]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def test_finalize_fails_stale_trials_and_ends_the_mlflow_run(
    work: Path, config: AutoFTConfig, common: dict[str, Any], reported: dict[str, Any]
) -> None:
    from autoft.search.study import open_storage

    scoped = run_scoped(config, RUN_ID)
    storage = open_storage(study_storage_url(str(work / "studies"), "autoft"), scoped.search)
    study = optuna.load_study(study_name=f"autoft-{RUN_ID}-autoft", storage=storage)
    stale = study.ask()  # a trial whose worker died: RUNNING for ever
    status = PipelineTaskFinalStatus(
        state="FAILED",
        pipeline_job_resource_name="autoft",
        pipeline_task_name="exit-handler-1",
        error_code=1,
        error_message="a step failed",
    )
    summary = json.loads(
        finalize.python_func(
            **common,
            run_id=RUN_ID,
            study_storage=str(work / "studies"),
            mlflow_tracking_uri="",
            output_dir=str(work / "run"),
            status=status,
        )
    )
    assert summary["failed_trials"] == {"autoft": [stale.number]}
    assert study.trials[stale.number].state == optuna.trial.TrialState.FAIL
    assert reported["mlflow_run_id"] in summary["closed_mlflow_runs"]
    tree = _tree(config, reported["mlflow_run_id"])
    # The method runs' own steps ended them already: a later failure of the pipeline leaves them FINISHED.
    assert not {r.info.run_id for r in tree["methods"].values()} & set(summary["closed_mlflow_runs"])
    client = MlflowClient(tracking_uri=config.tracking.mlflow_uri)
    assert client.get_run(reported["mlflow_run_id"]).info.status == "FAILED"
    assert {r.info.status for r in _tree(config, reported["mlflow_run_id"])["methods"].values()} == {"FINISHED"}
    assert json.loads((work / "run" / "pipeline_status.json").read_text())["state"] == "FAILED"
    assert summary["problems"] == []


def test_finalize_after_a_bad_config_reports_instead_of_raising(tmp_path: Path) -> None:
    status = PipelineTaskFinalStatus("FAILED", "autoft", "exit-handler-1", 1, "prepare-data failed")
    summary = json.loads(
        finalize.python_func(
            config_yaml="search: {n_trials: 0}",
            config_overrides=[],
            methods=[],
            run_id=RUN_ID,
            study_storage="",
            mlflow_tracking_uri="",
            output_dir=str(tmp_path),
            status=status,
        )
    )
    assert summary["problems"] and "n_trials" in summary["problems"][0]
    assert (tmp_path / "pipeline_status.json").is_file()


# ---------------------------------------------------------------------------------------------
# what the steps agree on
# ---------------------------------------------------------------------------------------------


def test_study_storage_reference_order_and_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tiny_config(METHODS)
    monkeypatch.delenv(STUDY_STORAGE_ENV, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert study_storage_reference("postgresql://autoft@db/optuna", config) == "postgresql://autoft@db/optuna"
    with_storage = config.model_copy(deep=True)
    with_storage.search.storage = str(tmp_path / "all.journal")
    assert study_storage_reference("", with_storage) == str(tmp_path / "all.journal")
    with pytest.raises(ConfigError, match="visible in the Kubeflow UI"):
        study_storage_reference("postgresql://autoft:secret@db/optuna", config)
    monkeypatch.setenv(STUDY_STORAGE_ENV, "postgresql://autoft:secret@db/optuna")
    reference = study_storage_reference("", config)
    assert reference == f"env:{STUDY_STORAGE_ENV}" and "secret" not in reference
    assert study_storage_url(reference, "autoft") == "postgresql://autoft:secret@db/optuna"
    monkeypatch.delenv(STUDY_STORAGE_ENV)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    with pytest.raises(ConfigError, match="separate pods"):
        study_storage_reference("", config)


def test_study_storage_url_maps_folders_files_and_databases(tmp_path: Path) -> None:
    assert study_storage_url(str(tmp_path), "ft") == str(tmp_path / "ft.journal")
    assert study_storage_url(str(tmp_path / "one.journal"), "ft") == str(tmp_path / "one.journal")
    assert study_storage_url("sqlite:///x.db", "ft") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        os.environ.pop("NOT_SET_ANYWHERE", None)
        study_storage_url("env:NOT_SET_ANYWHERE", "ft")


def test_run_scoped_study_names_differ_per_run() -> None:
    config = tiny_config(METHODS)
    assert run_scoped(config, "a").search.study_name != run_scoped(config, "b").search.study_name
    assert config.search.study_name == "autoft"  # the original is untouched


def test_load_step_config_applies_overrides_and_validates() -> None:
    config = tiny_config(METHODS)
    loaded = load_step_config(config_to_yaml(config), ["search.n_trials=7"], METHODS)
    assert loaded.search.n_trials == 7
    with pytest.raises(ConfigError, match=r"search\.n_trials"):
        load_step_config(config_to_yaml(config), ["search.n_trials=0"], METHODS)
    with pytest.raises(ConfigError, match="mapping"):
        load_step_config("- a\n- b\n", [], METHODS)
    # A config without a method list (e.g. pasted from elsewhere) runs the compiled branches.
    assert load_step_config("seed: 3", [], METHODS).methods == METHODS


def test_check_candidate_and_model_folders() -> None:
    check_candidate("autoft_wiseft", METHODS)
    check_candidate("", ["zeroshot", "ft"])
    with pytest.raises(ConfigError, match="allowed"):
        check_candidate("autoft_ce", METHODS)
    folders = method_model_folders(["zeroshot", "ft"], "/zs", {"ft": "/ft", "flyp": None})
    assert folders == {"zeroshot": Path("/zs"), "ft": Path("/ft")}


def test_gate_decision_rules() -> None:
    def row(ood_avg: float | None) -> MethodResult:
        return MethodResult(id_val=0.9, id_test=0.9, ood={} if ood_avg is None else {"x": ood_avg}, ood_avg=ood_avg)

    results = Results(
        preset="p",
        metric="accuracy",
        ood_val_set="v",
        methods={"zeroshot": row(0.40), "ft": row(0.50), "autoft": row(0.55), "autoft_wiseft": row(None)},
    )
    assert decide(results, "autoft", ["zeroshot", "ft"], 0.0, None, "p", "accuracy").passed
    assert not decide(results, "autoft", ["zeroshot", "ft"], 0.1, None, "p", "accuracy").passed
    better = Champion("3", 0.60, "p", "accuracy")
    assert not decide(results, "autoft", ["ft"], 0.0, better, "p", "accuracy").passed
    worse = Champion("3", 0.45, "p", "accuracy")
    assert decide(results, "autoft", ["ft"], 0.0, worse, "p", "accuracy").passed
    other_preset = Champion("3", 0.10, "q", "accuracy")
    decision = decide(results, "autoft", ["ft"], 0.0, other_preset, "p", "accuracy")
    assert not decision.passed and "not comparable" in decision.reason
    assert not decide(results, "autoft_wiseft", ["ft"], 0.0, None, "p", "accuracy").passed
    with pytest.raises(ValueError, match="not in the results"):
        decide(results, "flyp", [], 0.0, None, "p", "accuracy")


def test_create_study_on_a_resumed_run_fails_trials_its_killed_workers_left(
    work: Path, config: AutoFTConfig, common: dict[str, Any], tracked: dict[str, str], searched: list[int]
) -> None:
    from autoft.search.study import open_storage

    storage = open_storage(study_storage_url(str(work / "studies"), "autoft"), run_scoped(config, RUN_ID).search)
    study = optuna.load_study(study_name=f"autoft-{RUN_ID}-autoft", storage=storage)
    orphan = study.ask()  # a worker was killed mid-trial, then KFP retried the run (same run id)
    items = create_study.python_func(
        **common, **tracked, method="autoft", study_storage=str(work / "studies"), search_workers=2
    )
    assert items == [
        {"worker_index": i, "workers": 2, "storage": str(work / "studies"), "study_name": f"autoft-{RUN_ID}-autoft"}
        for i in range(2)
    ]
    assert study.trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2  # finished work is kept


def test_study_steps_start_without_importing_torch() -> None:
    # create-study and select-best run once per searched method in every pipeline run; importing the
    # training stack would add seconds of start-up to each (see autoft.study_stages).
    probe = (
        "import sys; import autoft.study_stages, components.runtime, autoft.methods, autoft.search.study; "
        "print(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
