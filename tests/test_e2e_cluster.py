"""`make e2e-cluster`: the smoke preset run the way a cluster runs it (pipeline/cluster_e2e.py).

- the step image is pushed to a real registry on loopback (Debian's docker-registry), resolved to its
  digest by `autoft release`'s code, and every step runs in a container pulled by that digest, as the
  image's non-root user, with an empty file system: no run folder or cache shared between steps;
- data.root and model.pretrained are gs:// URIs on fake-gcs-server; Optuna runs on PostgreSQL with two
  search workers per method; MLflow is a real `mlflow server` (PostgreSQL backend, gs:// artifacts);
- one fine-tune container is SIGKILLed after its first epoch's durable checkpoint; KFP's retry policy
  starts it again, its log says "resumed from epoch 1", and its model equals an uninterrupted fine-tune of
  the same inputs (the search has two parallel workers, so the whole run is not reproducible: the
  comparison is on the step that was killed, where the claim lives).

Marked ``docker`` (deselected from `make test`); needs a Docker engine, the built image, PostgreSQL
(AUTOFT_TEST_POSTGRES_URL) and the registry. AUTOFT_REQUIRE_DOCKER=1 (set by `make e2e-cluster`) turns a
missing prerequisite into a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from pipeline.docker_run import DockerUnavailable, KillOnLogLine, check_results, docker_client
from pipeline.release import resolve_image_digest

from autoft.contracts import FinetuneSummary
from autoft.urls import database_url
from servers import create_bucket, temporary_database

if TYPE_CHECKING:
    from servers import ServerProcess

pytestmark = pytest.mark.docker
pytest_plugins = ["conftest_servers"]

REPO = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "AUTOFT_REQUIRE_DOCKER"
REGISTRY_ENV = "AUTOFT_E2E_REGISTRY"  # host:port of the loopback registry (images/local-registry.sh)
LOCAL_IMAGE_ENV = "AUTOFT_E2E_LOCAL_IMAGE"  # the built step image, repo:tag
EPOCHS = 3


def _prerequisite(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pinned_image() -> str:
    """Push the built step image to the loopback registry and name it by the digest the registry serves."""
    registry = os.environ.get(REGISTRY_ENV, "")
    local_image = os.environ.get(LOCAL_IMAGE_ENV, "")
    _prerequisite(bool(registry and local_image), f"set {REGISTRY_ENV} and {LOCAL_IMAGE_ENV} (make e2e-cluster does)")
    try:
        docker_client().close()
    except DockerUnavailable as error:
        _prerequisite(False, str(error))
    target = f"{registry}/autoft-step:{local_image.rsplit(':', 1)[-1]}"
    subprocess.run(["docker", "tag", local_image, target], check=True)
    subprocess.run(["docker", "push", "--quiet", target], check=True, capture_output=True)
    return resolve_image_digest(target)


@pytest.fixture(scope="module")
def services(fake_gcs_server: ServerProcess, mlflow_server: ServerProcess, postgres_url_or_none: str | None):
    from pipeline.cluster_e2e import ClusterServices

    _prerequisite(postgres_url_or_none is not None, "AUTOFT_TEST_POSTGRES_URL is not set (Optuna needs PostgreSQL)")
    bucket = "autoft-e2e-cluster"
    create_bucket(fake_gcs_server.url, bucket)
    with temporary_database(postgres_url_or_none, prefix="autoft_e2e_optuna") as url:
        yield ClusterServices(fake_gcs_server.url, bucket, database_url(url), mlflow_server.url)


@pytest.fixture(scope="module")
def postgres_url_or_none() -> str | None:
    from servers import postgres_admin_url

    return postgres_admin_url()


def test_the_pipeline_runs_as_on_a_cluster_and_a_killed_fine_tune_resumes(
    pinned_image: str, services, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cluster_e2e import run_like_a_cluster, upload_inputs

    from autoft.config import resolve_config
    from autoft.models.pretrain import shipped_model_path

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", services.gcs_endpoint)
    monkeypatch.setenv("AUTOFT_CACHE", str(tmp_path_factory.mktemp("host-cache")))
    work = tmp_path_factory.mktemp("e2e-cluster")
    smoke = resolve_config(preset="smoke", overrides=[f"finetune.epochs={EPOCHS}", "finetune.warmup_steps=2"])
    config = upload_inputs(smoke, services, work, shipped_model_path())
    assert config.data.root.startswith("gs://") and config.model.pretrained.startswith("gs://")

    # SIGKILL the first fine-tune that saved its first epoch durably: it dies inside its second epoch.
    kill = KillOnLogLine(r"durable checkpoint of (\w+): epoch 1/", delay_s=0.3)
    run = run_like_a_cluster(config, pinned_image, services, work / "run", kill=kill, search_workers=2)

    # Every step ran from the pinned image, pulled by digest; exactly one container was killed (137) and retried.
    assert run.pulled and set(run.pulled) == {pinned_image}
    assert {record.image for record in run.containers} == {pinned_image}
    assert [record.exit_code for record in run.containers if record.exit_code != 0] == [137]
    assert len(run.killed) == 1
    killed_method = run.killed_line.split("durable checkpoint of ", 1)[1].split(":", 1)[0]
    log = run.log_path.read_text()
    # The retry resumes from the last epoch that reached durable storage before the kill: the first, or a
    # later one when the kill signal lands after the next epoch's copy (a smoke epoch takes under a second).
    resumed = re.findall(rf"resumed {killed_method} from epoch (\d+)", log)
    assert len(resumed) == 1 and 1 <= int(resumed[0]) < EPOCHS, [line for line in log.splitlines() if "epoch" in line]

    check_results(run.results, list(config.methods))
    # Nothing on the host's run folder: results came from the report step's artifact.
    assert not (work / "run" / "mlflow.db").exists() and not (work / "run" / "studies").exists()

    # The killed method's model equals an uninterrupted fine-tune of the same inputs.
    reference = _uninterrupted_finetune(run, killed_method, work / "reference")
    resumed = _finetune_outputs(run.pipeline_root, killed_method)
    assert [e.id_val for e in resumed["summary"].history] == [e.id_val for e in reference["summary"].history]
    for name, tensor in reference["weights"].items():
        np.testing.assert_allclose(resumed["weights"][name], tensor, rtol=1e-5, atol=1e-6, err_msg=name)

    _check_mlflow_tree(services.mlflow_uri, config)
    _check_studies(services.optuna_storage, config)
    summary = {
        "wall_seconds": run.wall_seconds,
        "containers": len(run.containers),
        "killed": killed_method,
        "image": pinned_image,
    }
    print(json.dumps(summary))


def _finetune_outputs(pipeline_root: Path, method: str) -> dict:
    from autoft.models.checkpoint import load_state_dict_file

    for summary_path in pipeline_root.rglob("summary"):
        if summary_path.parent.name.startswith("finetune") and summary_path.is_file():
            summary = FinetuneSummary.load(summary_path)
            if summary.method == method:
                model_dir = summary_path.parent / "model"
                weights = {k: v.numpy() for k, v in load_state_dict_file(next(model_dir.glob("*.safetensors"))).items()}
                return {"summary": summary, "weights": weights, "folder": summary_path.parent}
    raise AssertionError(f"no finetune summary for {method} under {pipeline_root}")


def _uninterrupted_finetune(run, method: str, out: Path) -> dict:
    """The same fine-tune in this process from the run's own artifacts, never interrupted."""
    from autoft.methods import hparams_source
    from autoft.models.checkpoint import load_state_dict_file
    from autoft.stages import finetune_hparams, stage_finetune

    root = run.pipeline_root
    prepared = next(p for p in root.rglob("prepared") if p.parent.name == "prepare-data")
    zeroshot = next(p for p in root.rglob("zeroshot") if p.parent.name == "build-zeroshot")
    best = {}
    for path in root.rglob("best_hparams"):
        best[json.loads(path.read_text())["method"]] = path
    chosen = finetune_hparams(method, {hparams_source(method): best[hparams_source(method)]})
    stage_finetune(run.config, prepared, zeroshot, method, chosen, out, progress=False)
    summary = FinetuneSummary.load(out / FinetuneSummary.FILE)
    weights = {k: v.numpy() for k, v in load_state_dict_file(next((out / "model").glob("*.safetensors"))).items()}
    return {"summary": summary, "weights": weights}


def _check_mlflow_tree(tracking_uri: str, config) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiments = client.search_experiments()
    runs = [r for e in experiments for r in client.search_runs([e.experiment_id], max_results=500)]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parents, "no pipeline run in MLflow"
    children = {r.data.tags.get("autoft.method") for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert set(config.methods) <= children


def _check_studies(storage: str, config) -> None:
    import optuna

    from autoft.methods import searched_methods
    from autoft.search.study import WORKER_ATTR

    summaries = optuna.get_all_study_summaries(storage)
    assert len(summaries) == len(searched_methods(config.methods))
    for summary in summaries:
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == config.search.n_trials
        assert {t.user_attrs.get(WORKER_ATTR) for t in study.trials} == {0, 1}  # both workers took part
