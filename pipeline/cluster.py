"""How steps run on Kubernetes: resources, GPUs, scheduling, shared memory, secrets, labels (kfp-kubernetes).

These are fixed when the pipeline is compiled (kfp.local ignores them). Names of secrets, ConfigMaps,
volumes and labels match manifests/ (the namespace the pipeline's pods run in must hold them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import kubernetes
from kfp.dsl import PipelineTask

# manifests/base/networkpolicies.yaml admits pipeline pods to PostgreSQL and MLflow by these labels.
POD_LABELS = {"app.kubernetes.io/part-of": "autoft-pipelines", "app.kubernetes.io/component": "pipeline-step"}
# manifests/overlays/*/pipeline.env.example: the Optuna storage URL, password included.
PIPELINE_ENV_SECRET = "autoft-pipeline-env"
PIPELINE_ENV_SECRET_KEYS = {"AUTOFT_OPTUNA_STORAGE": "AUTOFT_OPTUNA_STORAGE"}
# Optional credentials for an MLflow server behind authentication (MLflow reads these variables).
MLFLOW_SECRET = "autoft-mlflow-auth"
MLFLOW_SECRET_KEYS = {
    "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
}
# manifests/base/pipeline/kustomization.yaml: where MLflow is.
PIPELINE_CONFIG_MAP = "autoft-pipeline-config"
PIPELINE_CONFIG_KEYS = {key: key for key in ("MLFLOW_TRACKING_URI", "AUTOFT_OPTUNA_DASHBOARD_URL", "AUTOFT_KFP_UI_URL")}
# GCS outside GKE's Workload Identity: a service-account key file. google-auth reads a FILE named by
# GOOGLE_APPLICATION_CREDENTIALS, so the key is mounted and the variable (also in the secret) points at it.
# Both are optional: without the secret the pod uses Workload Identity / the node's default credentials.
GCS_SECRET = "autoft-gcs"
GCS_SECRET_MOUNT = "/var/secrets/google"
GCS_SECRET_KEYS = {"GOOGLE_APPLICATION_CREDENTIALS": "GOOGLE_APPLICATION_CREDENTIALS"}


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class ClusterSettings:
    """Compile-time scheduling choices.

    The GPU type and count are settings, not pipeline parameters: a parameter used in a task's resources
    breaks kfp.local inside a ParallelFor (it does not pass the channel into the loop), and the local run
    must execute this same pipeline.
    """

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    # KFP's iterator policy takes a number in the IR, not a parameter: search workers beyond this wait.
    search_parallelism: int = 4
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[Toleration, ...] = (Toleration("nvidia.com/gpu"),)
    # DataLoader workers pass batches through /dev/shm; a container's default 64 MiB is far too small.
    shm_size: str = "8Gi"
    training: Resources = Resources(cpu="4", memory="16Gi")
    evaluation: Resources = Resources(cpu="2", memory="8Gi")
    light: Resources = Resources(cpu="500m", memory="2Gi")
    datasets_pvc: str | None = "autoft-datasets"
    datasets_mount: str = "/data"
    # A retried search worker fails the trial its lost pod left RUNNING and finishes its share of the
    # budget (autoft.search.study), so a preempted worker costs one trial, not the run.
    search_retries: int = 2
    finetune_retries: int = 1

    def __post_init__(self) -> None:
        if self.search_parallelism < 1:
            raise ValueError(f"search_parallelism must be >= 1, got {self.search_parallelism}")
        if self.accelerator_count < 0:
            raise ValueError(f"accelerator_count must be >= 0, got {self.accelerator_count}")


def step(task: PipelineTask, display_name: str, resources: Resources) -> PipelineTask:
    """What every step gets: a readable name, requests, the labels network policies match, GCS credentials."""
    task.set_display_name(display_name)
    task.set_cpu_request(resources.cpu).set_memory_request(resources.memory)
    for key, value in POD_LABELS.items():
        kubernetes.add_pod_label(task, key, value)
    kubernetes.use_secret_as_env(task, GCS_SECRET, GCS_SECRET_KEYS, optional=True)
    kubernetes.use_secret_as_volume(task, GCS_SECRET, mount_path=GCS_SECRET_MOUNT, optional=True)
    return task


def with_study_storage(task: PipelineTask) -> PipelineTask:
    """Steps that open the Optuna study read its URL (with password) from the secret, never a parameter."""
    kubernetes.use_secret_as_env(task, PIPELINE_ENV_SECRET, PIPELINE_ENV_SECRET_KEYS, optional=True)
    return task


def with_mlflow(task: PipelineTask) -> PipelineTask:
    kubernetes.use_config_map_as_env(task, PIPELINE_CONFIG_MAP, PIPELINE_CONFIG_KEYS, optional=True)
    kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_SECRET_KEYS, optional=True)
    return task


def with_datasets(task: PipelineTask, settings: ClusterSettings) -> PipelineTask:
    if settings.datasets_pvc:
        kubernetes.mount_pvc(task, pvc_name=settings.datasets_pvc, mount_path=settings.datasets_mount)
    return task


def gpu_task(task: PipelineTask, settings: ClusterSettings, resources: Resources, retries: int = 0) -> PipelineTask:
    """Training-like steps: a GPU on a GPU node, tolerated taints, a memory-backed /dev/shm."""
    if settings.accelerator_count:
        task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.accelerator_count)
    task.set_cpu_limit(resources.cpu).set_memory_limit(resources.memory)
    for key, value in settings.gpu_node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for toleration in settings.gpu_tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator, effect=toleration.effect)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm_size
    )
    if retries:
        task.set_retry(retries, backoff_duration="30s")
    return with_datasets(task, settings)
