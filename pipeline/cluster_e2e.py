"""The pipeline as a cluster runs it, on one machine: what `make e2e-cluster` exercises.

Every step runs in its own container of the step image pulled BY DIGEST from a registry, as the image's
own non-root user, with a fresh file system: no bind-mounted run folder, no shared cache (each container's
``$HOME/.cache`` starts empty). The steps share only what pods share:

- artifacts: kfp.local's pipeline root, the one folder it mounts into every container (a bucket on a
  cluster);
- ``gs://``: the dataset (``data.root``), the foundation model (``model.pretrained``) and the durable
  fine-tuning checkpoints, on a GCS emulator the steps reach as ``STORAGE_EMULATOR_HOST``;
- services: Optuna's PostgreSQL (through ``AUTOFT_OPTUNA_STORAGE``, as the cluster's secret provides it)
  and an MLflow tracking server.

The cluster's retry policies are on; :class:`pipeline.docker_run.KillOnLogLine` can SIGKILL a step as a
lost node would. What differs from Kubeflow: kfp.local orchestrates (one machine, a thread per parallel
task) and the pipeline root is a mounted folder rather than a bucket the KFP launcher copies from.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoft.config import AutoFTConfig, config_to_dict, validate_config
from autoft.contracts import Results
from autoft.data.manifests import load_split
from autoft.stages import stage_prepare
from pipeline.docker_run import ContainerRecord, ExitCodeGuard, KillOnLogLine, docker_client

# The step image's own user (images/step/Dockerfile): pods run it as non-root.
IMAGE_USER = "1000:1000"
# The folder dataset layout (autoft.data.ds_generic): our split -> its folder.
FOLDER_SPLITS = {"id_train": "train", "id_val": "val", "id_test": "test", "ood_val_source": "ood_val"}


@dataclass(frozen=True)
class ClusterServices:
    """What the steps reach over the network (loopback here, with ``--network host``)."""

    gcs_endpoint: str  # fake-gcs-server's URL, for STORAGE_EMULATOR_HOST
    bucket: str
    optuna_storage: str  # an RDB URL
    mlflow_uri: str

    @property
    def checkpoint_root(self) -> str:
        return f"gs://{self.bucket}/checkpoints"

    def step_environment(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            "AUTOFT_OPTUNA_STORAGE": self.optuna_storage,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "HF_HUB_OFFLINE": "1",
            "HOME": "/tmp",  # the container's own, empty: no cache survives a step
        }


@dataclass
class ClusterRun:
    results: Results
    containers: list[ContainerRecord]
    pulled: dict[str, str]
    killed: list[str]
    killed_line: str
    log_path: Path
    pipeline_root: Path
    wall_seconds: float
    config: AutoFTConfig = field(repr=False)


def export_folder_dataset(config: AutoFTConfig, dest: Path) -> Path:
    """The config's (in-memory) dataset written as the ``folder`` layout: PNG files in class folders."""
    prepared = stage_prepare(config, dest / ".prepared")
    root = dest / "images"
    for ours, folder in {**FOLDER_SPLITS, **{shift: shift for shift in prepared.ood_tests}}.items():
        split = load_split(prepared.manifest(ours))
        for index in range(len(split)):
            from PIL import Image

            name = prepared.class_names[int(split.labels[index])]
            path = root / folder / name / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(split.image(index)).save(path)
    return root


def upload_inputs(config: AutoFTConfig, services: ClusterServices, work: Path, weights: Path) -> AutoFTConfig:
    """Put the dataset and the foundation model in the bucket; the config then names only gs:// URIs."""
    from autoft.storage import upload_folder

    images = export_folder_dataset(config, work / "export")
    data_uri = f"gs://{services.bucket}/datasets/{config.data.dataset}-folder"
    upload_folder(images, data_uri)
    model_dir = work / "model-upload"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / weights.name).write_bytes(weights.read_bytes())
    model_uri = f"gs://{services.bucket}/models"
    upload_folder(model_dir, model_uri)
    raw = config_to_dict(config)
    raw["data"].update({"dataset": "folder", "root": data_uri, "options": {}})
    raw["model"]["pretrained"] = f"{model_uri}/{weights.name}"
    return validate_config(raw)


@contextmanager
def _open_umask() -> Any:
    """kfp.local creates the pipeline root's task folders on the host; the containers' non-root user must
    write into them, as a pod writes to its artifact URIs."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def run_like_a_cluster(
    config: AutoFTConfig,
    image: str,
    services: ClusterServices,
    run_dir: Path,
    *,
    search_workers: int = 2,
    kill: KillOnLogLine | None = None,
    echo: bool = False,
) -> ClusterRun:
    """Run the pipeline with every step in ``image`` (a digest reference), sharing only artifacts, gs://
    and services; ``kill`` preempts one step. Returns the results and what each container did."""
    from kfp import local

    from pipeline.local_run import run_with_kfp_local

    if "@sha256:" not in image:
        raise ValueError(f"{image!r}: a cluster pulls the step image by digest (REGISTRY/autoft-step@sha256:...)")
    docker_client().close()  # fail early and clearly without an engine
    runner = local.DockerRunner(user=IMAGE_USER, network_mode="host", environment=services.step_environment())
    run_dir = Path(run_dir).resolve()
    start = time.perf_counter()
    with _open_umask(), ExitCodeGuard(pull_digests=True, on_line=kill) as guard:
        results = run_with_kfp_local(
            config,
            run_dir,
            search_workers=search_workers,
            parameters={
                "study_storage": "",  # the steps read AUTOFT_OPTUNA_STORAGE, like the cluster's secret
                "mlflow_tracking_uri": services.mlflow_uri,
                "checkpoint_root": services.checkpoint_root,
            },
            echo=echo,
            runner=runner,
            retries=True,
            step_image=image,
            shared_run_folder=False,
        )
    return ClusterRun(
        results=results,
        containers=list(guard.containers),
        pulled=dict(guard.pulled),
        killed=list(kill.killed) if kill else [],
        killed_line=kill.matched_line if kill else "",
        log_path=run_dir / "logs" / "kfp_local.log",
        pipeline_root=run_dir / "kfp" / "outputs",
        wall_seconds=round(time.perf_counter() - start, 1),
        config=config,
    )
