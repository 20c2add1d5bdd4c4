"""The compiled pipeline IR: complete, deterministic, committed up to date, documented, and Kubernetes-ready."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from components.image import DEFAULT_STEP_IMAGE
from pipeline.autoft_pipeline import build_pipeline
from pipeline.cluster import POD_LABELS, ClusterSettings
from pipeline.compile import (
    COMPILED_PIPELINE,
    all_methods,
    compile_pipeline,
    compiled_default_config,
    pipeline_parameters,
    read_pipeline_spec,
    with_methods,
)

from autoft.config import DEFAULT_PRESET, resolve_config
from autoft.methods import finetuned_methods, grid_methods, searched_methods

REPO = Path(__file__).resolve().parents[1]
STEP_COMPONENTS = [
    "prepare-data",
    "build-zeroshot",
    "create-study",
    "search-worker",
    "select-best",
    "finetune",
    "grid-points",
    "finetune-grid-point",
    "select-grid",
    "evaluate",
    "report",
    "gate",
    "register",
    "finalize",
]
GPU_STEPS = ("search-worker", "finetune", "finetune-grid-point", "evaluate")


def load_documents(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def default_config():
    return resolve_config(preset=DEFAULT_PRESET)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, default_config) -> Path:
    """The full method list, so every branch (all controls and WiSE-FT variants) is in the IR."""
    return compile_pipeline(with_methods(default_config, all_methods()), tmp_path_factory.mktemp("ir") / "full.yaml")


@pytest.fixture(scope="module")
def documents(compiled: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return load_documents(compiled)


def tasks_of(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of every DAG (root, exit handler, loops, condition), by task name."""
    found = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def executor_base(name: str) -> str:
    """exec-search-worker-3 -> search-worker (KFP numbers repeated components)."""
    base = name.removeprefix("exec-")
    parts = base.rsplit("-", 1)
    return parts[0] if len(parts) == 2 and parts[1].isdigit() else base


def compile_in_fresh_process(out: Path, env: dict[str, str]) -> None:
    """`autoft compile --output OUT` in a new interpreter: the step image is read at import time."""
    result = subprocess.run(
        [sys.executable, "-m", "autoft.cli", "compile", "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_the_committed_pipeline_is_up_to_date(tmp_path: Path) -> None:
    # A fresh process without AUTOFT_STEP_IMAGE: the committed file uses the default image.
    env = {k: v for k, v in os.environ.items() if k != "AUTOFT_STEP_IMAGE"}
    fresh = tmp_path / "fresh.yaml"
    compile_in_fresh_process(fresh, env)
    assert COMPILED_PIPELINE.is_file(), "pipeline/compiled/autoft_pipeline.yaml is missing: run `autoft compile`"
    assert fresh.read_text() == COMPILED_PIPELINE.read_text(), (
        "pipeline/compiled/autoft_pipeline.yaml is stale: run `autoft compile` and commit it"
    )


def test_compiling_is_deterministic(tmp_path: Path, default_config) -> None:
    first = compile_pipeline(default_config, tmp_path / "a.yaml")
    second = compile_pipeline(default_config, tmp_path / "b.yaml")
    assert first.read_bytes() == second.read_bytes()


def test_every_step_runs_in_the_step_image_without_installs(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = documents
    executors = spec["deploymentSpec"]["executors"]
    assert {executor_base(name) for name in executors} == set(STEP_COMPONENTS)
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == DEFAULT_STEP_IMAGE, name
        program = " ".join(container["command"])
        assert "pip install" not in program, f"{name} installs packages at run time"


def test_the_dag_has_every_branch_loop_exit_handler_and_condition(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    spec, _ = documents
    tasks = tasks_of(spec)
    methods = all_methods()
    names = {task["taskInfo"]["name"] for task in tasks.values()}
    for method in searched_methods(methods):
        assert {f"create study: {method}", f"search worker: {method}", f"best hyperparameters: {method}"} <= names
    for method in finetuned_methods(methods):
        if method in grid_methods(methods):  # ft, flyp: a fine-tune per lr of the grid, then the best one
            assert {f"lr grid: {method}", f"fine-tune: {method} (one lr)", f"best lr: {method}"} <= names
            assert f"fine-tune: {method}" not in names
        else:
            assert f"fine-tune: {method}" in names
    assert {"prepare data", "zero-shot model", "evaluate", "report", "register champion"} <= names

    loops = {name: task for name, task in tasks.items() if "parameterIterator" in task}
    search_loops = [t for t in loops.values() if t["taskInfo"]["name"].startswith("search-")]
    assert len(search_loops) == len(searched_methods(methods))
    for loop in search_loops:
        assert loop["iteratorPolicy"]["parallelismLimit"] == ClusterSettings().search_parallelism
        assert loop["parameterIterator"]["items"]["inputParameter"].endswith("create-study-Output") or (
            "create-study" in loop["parameterIterator"]["items"]["inputParameter"]
        )
    grid_loops = {t["taskInfo"]["name"]: t for t in loops.values() if t["taskInfo"]["name"].startswith("grid-")}
    assert set(grid_loops) == {f"grid-{m}" for m in grid_methods(methods)}
    for loop in grid_loops.values():
        assert loop["iteratorPolicy"]["parallelismLimit"] == ClusterSettings().search_parallelism
        assert "grid-points" in loop["parameterIterator"]["items"]["inputParameter"]
    eval_loop = next(t for t in loops.values() if t["taskInfo"]["name"] == "eval-sets")
    assert "prepare-data" in eval_loop["parameterIterator"]["items"]["inputParameter"]

    root = spec["root"]["dag"]["tasks"]
    exit_task = next(t for t in root.values() if t["componentRef"]["name"] == "comp-finalize")
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert "taskFinalStatus" in exit_task["inputs"]["parameters"]["status"]
    handler = next(t for t in root.values() if t["componentRef"]["name"].startswith("comp-exit-handler"))
    assert exit_task["dependentTasks"] == [next(k for k, v in root.items() if v is handler)]

    condition = next(t for t in tasks.values() if t["taskInfo"]["name"] == "gate-passed")
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    report_task = next(t for t in tasks.values() if t["taskInfo"]["name"] == "report")
    assert "isArtifactList" in str(spec["components"][report_task["componentRef"]["name"]]) or any(
        "taskOutputArtifact" in str(v) for v in report_task["inputs"]["artifacts"].values()
    )


def test_controls_and_wiseft_are_wired_to_the_right_outputs(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = documents
    tasks = tasks_of(spec)
    by_name = {t["taskInfo"]["name"]: (key, t) for key, t in tasks.items()}
    key_of = {name: key for name, (key, _) in by_name.items()}
    control = by_name["fine-tune: autoft_ce"][1]["inputs"]["artifacts"]["hparams"]["taskOutputArtifact"]
    assert control == {"outputArtifactKey": "best_hparams", "producerTask": key_of["best hyperparameters: autoft"]}
    evaluation = by_name["evaluate"][1]["inputs"]["artifacts"]
    # Inside the loop, inputs arrive as loop inputs named after the producing task and output.
    assert evaluation["autoft_wiseft"]["componentInputArtifact"].endswith(f"{key_of['fine-tune: autoft']}-wiseft_model")
    assert evaluation["ft"]["componentInputArtifact"].endswith(f"{key_of['best lr: ft']}-model")
    assert evaluation["flyp_wiseft"]["componentInputArtifact"].endswith(f"{key_of['best lr: flyp']}-wiseft_model")
    # The select step collects every grid point's folder (a list artifact from the loop's fine-tune task).
    select = by_name["best lr: ft"][1]["inputs"]["artifacts"]["points"]
    loop_key = next(key for key, t in tasks.items() if t["taskInfo"]["name"] == "grid-ft")
    assert select["taskOutputArtifact"] == {
        "outputArtifactKey": "pipelinechannel--finetune-grid-point-point",
        "producerTask": loop_key,
    }
    assert "flyp_wiseft" in evaluation and "ft_oodval_wiseft" in evaluation


def test_every_parameter_has_a_type_default_and_description(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = documents
    parameters = pipeline_parameters(spec)
    assert {"config_yaml", "config_overrides", "search_workers", "study_storage", "candidate_method"} <= set(parameters)
    for name, parameter in parameters.items():
        assert parameter.get("parameterType"), name
        assert "defaultValue" in parameter, name
        assert len(parameter.get("description", "")) > 30, f"{name} has no real description"
    assert compiled_default_config(spec)["methods"] == all_methods()
    assert parameters["search_workers"]["defaultValue"] == 2


def test_training_tasks_have_the_kubernetes_settings(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, kubernetes = documents
    settings = ClusterSettings()
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        labels = kubernetes[name]["podMetadata"]["labels"]
        assert labels == POD_LABELS  # what manifests/base/networkpolicies.yaml admits
        resources = executor["container"]["resources"]
        assert resources["resourceCpuRequest"] and resources["resourceMemoryRequest"], name
        if executor_base(name) not in GPU_STEPS:
            assert "accelerator" not in resources, name
            continue
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", name
        assert resources["accelerator"]["resourceCount"] == "1", name
        platform = kubernetes[name]
        assert platform["nodeSelector"]["labels"] == settings.gpu_node_selector, name
        assert platform["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        shm = platform["emptyDirMounts"][0]
        assert (shm["mountPath"], shm["medium"], shm["sizeLimit"]) == ("/dev/shm", "Memory", settings.shm_size)
        assert platform["pvcMount"][0]["mountPath"] == "/data"
    for name in executors:
        secrets = {s["secretName"]: s for s in kubernetes[name].get("secretAsEnv", [])}
        assert secrets["autoft-gcs"]["optional"] is True, name  # GKE uses Workload Identity instead
        if executor_base(name) in ("create-study", "search-worker", "select-best", "finalize"):
            assert secrets["autoft-pipeline-env"]["keyToEnv"] == [
                {"envVar": "AUTOFT_OPTUNA_STORAGE", "secretKey": "AUTOFT_OPTUNA_STORAGE"}
            ], name
        if executor_base(name) in ("report", "gate", "register", "finalize"):
            assert "autoft-mlflow-auth" in secrets, name
            assert kubernetes[name]["configMapAsEnv"][0]["configMapName"] == "autoft-pipeline-config", name
    # The labels must be the ones the network policies admit to PostgreSQL and MLflow.
    policies = yaml.safe_load_all((REPO / "manifests" / "base" / "networkpolicies.yaml").read_text())
    admitted = [
        peer["podSelector"]["matchLabels"]
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [])
        if "app.kubernetes.io/part-of" in peer.get("podSelector", {}).get("matchLabels", {})
    ]
    assert admitted and all(labels == POD_LABELS for labels in admitted)
    containers = {name for name, c in spec["components"].items() if c.get("executorLabel")}
    retried = {
        t["taskInfo"]["name"]: t.get("retryPolicy", {}).get("maxRetryCount", 0)
        for t in tasks_of(spec).values()
        if t["componentRef"]["name"] in containers  # not the loops, the exit handler's group, the condition
    }
    expected = {
        "fine-tune": settings.finetune.retries,
        "search worker": settings.search.retries,
        "prepare data": settings.prepare.retries,
        "zero-shot model": settings.zeroshot.retries,
        "evaluate": settings.evaluation.retries,
        "register champion": 0,  # a second attempt could register a second model version
    }
    for name, count in retried.items():
        kind = name.split(":")[0]
        assert count == expected.get(kind, settings.light.retries), name
    assert settings.finetune.retries >= 1 and settings.search.retries >= 1  # preemptible GPU nodes


def test_every_step_has_a_deadline_and_no_cache(documents: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """A hung step must fail rather than hold a GPU, and KFP's cache must never serve stale splits (its key
    cannot see data that changed behind the same data.root) or skip a step's MLflow logging."""
    spec, kubernetes = documents
    settings = ClusterSettings()
    for name in spec["deploymentSpec"]["executors"]:
        assert int(kubernetes[name]["activeDeadlineSeconds"]) > 0, name
    deadline = {executor_base(n): int(kubernetes[n]["activeDeadlineSeconds"]) for n in kubernetes}
    assert deadline["finetune"] == settings.finetune.timeout_s
    assert deadline["prepare-data"] == settings.prepare.timeout_s
    cached = [t["taskInfo"]["name"] for t in tasks_of(spec).values() if t.get("cachingOptions", {}).get("enableCache")]
    assert not cached


def test_local_runs_fail_fast_but_keep_the_cluster_policies_otherwise() -> None:
    settings = ClusterSettings(search_parallelism=3)
    local = settings.without_retries()
    assert local.finetune.retries == local.search.retries == local.prepare.retries == 0
    assert local.finetune.timeout_s == settings.finetune.timeout_s and local.search_parallelism == 3


def test_cluster_settings_change_the_ir(tmp_path: Path, default_config) -> None:
    settings = ClusterSettings(search_parallelism=7, accelerator_type="nvidia.com/mig-1g.10gb", accelerator_count=2)
    spec, _ = load_documents(compile_pipeline(default_config, tmp_path / "custom.yaml", settings))
    loops = [t for t in tasks_of(spec).values() if t["taskInfo"]["name"].startswith("search-")]
    assert loops and all(t["iteratorPolicy"]["parallelismLimit"] == 7 for t in loops)
    finetune = spec["deploymentSpec"]["executors"]["exec-finetune"]["container"]["resources"]["accelerator"]
    assert (finetune["resourceType"], finetune["resourceCount"]) == ("nvidia.com/mig-1g.10gb", "2")
    with pytest.raises(ValueError, match="search_parallelism"):
        ClusterSettings(search_parallelism=0)


def test_a_pipeline_without_autoft_has_no_gate(default_config) -> None:
    config = with_methods(default_config, ["zeroshot", "ft", "ft_wiseft"])
    pipeline = build_pipeline(config)
    tasks = pipeline.pipeline_spec.root.dag.tasks
    components = pipeline.pipeline_spec.components
    names = {t.task_info.name for c in components.values() for t in c.dag.tasks.values()} | {
        t.task_info.name for t in tasks.values()
    }
    assert "report" in names and "best lr: ft" in names
    assert not {"register champion", "gate-passed"} & names
    assert "best lr: flyp" not in names


def test_step_image_comes_from_the_environment_at_compile_time(tmp_path: Path) -> None:
    env = {**os.environ, "AUTOFT_STEP_IMAGE": "registry.example/autoft-step:9.9.9"}
    out = tmp_path / "image.yaml"
    compile_in_fresh_process(out, env)
    images = {e["container"]["image"] for e in read_pipeline_spec(out)["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/autoft-step:9.9.9"}
