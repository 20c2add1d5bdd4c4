"""How steps run on Kubernetes: resources, GPUs, scheduling, shared memory, secrets, labels (kfp-kubernetes).

These are fixed when the pipeline is compiled (kfp.local ignores them). Names of secrets, ConfigMaps,
volumes and labels match manifests/ (the namespace the pipeline's pods run in must hold them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from components.image import STEP_IMAGE
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
PIPELINE_CONFIG_KEYS = {
    key: key
    for key in ("MLFLOW_TRACKING_URI", "AUTOFT_OPTUNA_DASHBOARD_URL", "AUTOFT_KFP_UI_URL", "AUTOFT_CHECKPOINT_ROOT")
}
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


HOUR = 3600


@dataclass(frozen=True)
class StepPolicy:
    """How one kind of step runs: its requests, a deadline (a hung step fails instead of holding a GPU
    forever), and how often KFP retries it. Only idempotent steps retry: fine-tuning resumes from its
    durable checkpoint, a search worker fails its orphaned trial and finishes its share, evaluation and
    data preparation rewrite their outputs; registering a model version is not retried."""

    resources: Resources
    timeout_s: int
    retries: int = 0


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

    # The image every step runs in: a local tag for kfp.local, a registry digest in a release.
    step_image: str = STEP_IMAGE
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    # KFP's iterator policy takes a number in the IR, not a parameter: search workers beyond this wait.
    search_parallelism: int = 4
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[Toleration, ...] = (Toleration("nvidia.com/gpu"),)
    # DataLoader workers pass batches through /dev/shm; a container's default 64 MiB is far too small.
    shm_size: str = "8Gi"
    # Deadlines are generous bounds for ImageNet-sized runs, not estimates.
    prepare: StepPolicy = StepPolicy(Resources(cpu="2", memory="8Gi"), timeout_s=6 * HOUR, retries=2)
    zeroshot: StepPolicy = StepPolicy(Resources(cpu="2", memory="8Gi"), timeout_s=2 * HOUR, retries=2)
    # A retried search worker fails the trial its lost pod left RUNNING and finishes its share of the
    # budget (autoft.search.study), so a preempted worker costs one trial, not the run.
    search: StepPolicy = StepPolicy(Resources(cpu="4", memory="16Gi"), timeout_s=24 * HOUR, retries=2)
    # A retried fine-tune resumes from the last finished epoch in durable storage (autoft.durable).
    finetune: StepPolicy = StepPolicy(Resources(cpu="4", memory="16Gi"), timeout_s=72 * HOUR, retries=3)
    evaluation: StepPolicy = StepPolicy(Resources(cpu="2", memory="8Gi"), timeout_s=6 * HOUR, retries=2)
    light: StepPolicy = StepPolicy(Resources(cpu="500m", memory="2Gi"), timeout_s=HOUR // 2, retries=2)
    # A retried registration could create a second model version for the same run.
    register: StepPolicy = StepPolicy(Resources(cpu="500m", memory="2Gi"), timeout_s=HOUR // 2, retries=0)
    datasets_pvc: str | None = "autoft-datasets"
    datasets_mount: str = "/data"

    def without_retries(self) -> ClusterSettings:
        """The same settings with no retries: `autoft run` on one machine fails at once and says why (a
        retry there repeats a deterministic error after a back-off; `--resume`-style reruns continue)."""
        policies = {
            f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), StepPolicy)
        }
        return replace(self, **{name: replace(policy, retries=0) for name, policy in policies.items()})

    def __post_init__(self) -> None:
        if self.search_parallelism < 1:
            raise ValueError(f"search_parallelism must be >= 1, got {self.search_parallelism}")
        if self.accelerator_count < 0:
            raise ValueError(f"accelerator_count must be >= 0, got {self.accelerator_count}")


def step(task: PipelineTask, display_name: str, policy: StepPolicy, settings: ClusterSettings) -> PipelineTask:
    """What every step gets: the step image, a readable name, requests, a deadline and retries, no KFP
    cache, the labels network policies match, GCS credentials.

    KFP's cache is off for every step: its key covers parameters, input artifacts and the image, but not
    data behind a URI (``data.root`` may change in place), and a cache hit would skip the step's MLflow
    logging, leaving holes in the run's tree. A run avoids repeated work through retries that resume
    (durable checkpoints, the shared Optuna study), not through the cache.
    """
    task.set_container_image(settings.step_image)
    task.set_display_name(display_name)
    task.set_cpu_request(policy.resources.cpu).set_memory_request(policy.resources.memory)
    task.set_caching_options(False)
    kubernetes.set_timeout(task, policy.timeout_s)
    if policy.retries:
        task.set_retry(policy.retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s")
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


def gpu_task(task: PipelineTask, settings: ClusterSettings, policy: StepPolicy) -> PipelineTask:
    """Training-like steps: a GPU on a GPU node, tolerated taints, a memory-backed /dev/shm."""
    if settings.accelerator_count:
        task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.accelerator_count)
    task.set_cpu_limit(policy.resources.cpu).set_memory_limit(policy.resources.memory)
    for key, value in settings.gpu_node_selector.items():
        kubernetes.add_node_selector(task, key, value)
    for toleration in settings.gpu_tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator, effect=toleration.effect)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm_size
    )
    return with_datasets(task, settings)
