"""What the pipeline steps share: the resolved config, the study's location, MLflow's URI, timing.

Steps run in separate processes (kfp.local subprocesses, or pods on a cluster). Anything two steps must
agree on, including the exit handler that cleans up after all of them, is therefore a pure function of
the pipeline parameters, computed here the same way in every step, never passed around as hidden state.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoft.config import AutoFTConfig, resolve_config
from autoft.errors import ConfigError
from autoft.termination import terminated_exits_143
from autoft.urls import is_rdb_url, redact_url, url_password

if TYPE_CHECKING:
    from components.tracking import PipelineRuns

# The cluster's shared Optuna storage (PostgreSQL URL with its password), from the secret
# autoft-pipeline-env (manifests/overlays/*/pipeline.env.example); env, so it never shows in the UI.
STUDY_STORAGE_ENV = "AUTOFT_OPTUNA_STORAGE"
ENV_REFERENCE = "env:"
JOURNAL_SUFFIX = ".journal"
LOCAL_STUDY_FOLDER = "autoft-studies"
# Set in every pod Kubernetes starts; there, steps do not share a file system.
KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"


def load_step_config(config_yaml: str, config_overrides: list[str], methods: list[str]) -> AutoFTConfig:
    """The run's config: the YAML parameter plus ``key=value`` overrides, resolved like the CLI does.

    ``methods`` is the list the pipeline was compiled for; its DAG has a branch per method. A config
    without ``methods`` runs those; one asking for other methods is refused instead of silently running
    something else.

    Every step calls it first, so it also makes SIGTERM (Kubernetes stopping the pod) unwind like Ctrl-C and
    end the step with one line and exit status 143.
    """
    terminated_exits_143()
    config = resolve_config(
        text=config_yaml, overrides=config_overrides, defaults={"methods": list(methods)} if methods else None
    )
    if methods and list(config.methods) != list(methods):
        raise ConfigError(
            f"the config asks for methods {config.methods} but this pipeline was compiled for {list(methods)}; "
            "remove `methods` from the config to run the compiled ones, or compile a pipeline for these methods "
            "(`autoft compile --preset NAME --methods config`)"
        )
    return config


def run_scoped(config: AutoFTConfig, run_id: str) -> AutoFTConfig:
    """The config with the study name made unique to this pipeline run.

    A shared PostgreSQL holds the studies of every run; without the run id a recurring run would load
    last week's finished study and search nothing. A retried run keeps its id, so it resumes its study.
    """
    if not run_id.strip():
        raise ValueError("run_id is empty; the pipeline passes dsl.PIPELINE_JOB_ID_PLACEHOLDER")
    scoped = config.model_copy(deep=True)
    scoped.search.study_name = f"{config.search.study_name}-{run_id.strip()}"
    return scoped


def url_has_password(url: str) -> bool:
    return url_password(url) is not None


SECRET_HOMES = {
    "search.storage": f"the secret autoft-pipeline-env as {STUDY_STORAGE_ENV}",
    "study_storage": f"the secret autoft-pipeline-env as {STUDY_STORAGE_ENV}",
    "tracking.mlflow_uri": "the ConfigMap autoft-pipeline-config (MLFLOW_TRACKING_URI, without the password) plus "
    "the secret autoft-mlflow-auth (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)",
}
SECRET_HOMES["mlflow_tracking_uri"] = SECRET_HOMES["tracking.mlflow_uri"]


def refuse_visible_passwords(found: list[tuple[str, str]]) -> None:
    """Pipeline parameters (the config YAML is one) are stored and shown by Kubeflow: no password may be in them."""
    if not found:
        return
    where, url = found[0]
    home = SECRET_HOMES.get(where, "a Kubernetes secret the steps read as an environment variable")
    others = f" (also: {', '.join(key for key, _ in found[1:])})" if len(found) > 1 else ""
    raise ConfigError(
        f"{where} holds a URL with a password ({url}){others}; pipeline parameters are visible in the Kubeflow UI "
        f"and its database. Leave {where} empty and put the URL in {home} (docs/kubeflow.md)"
    )


def _refuse_visible_password(value: str, where: str) -> None:
    if url_has_password(value):
        refuse_visible_passwords([(where, redact_url(value))])


def study_storage_reference(study_storage: str, config: AutoFTConfig) -> str:
    """Where the run's studies live, as a value that is safe to pass between steps and show in the UI.

    In order: the ``study_storage`` parameter, the config's ``search.storage``, ``$AUTOFT_OPTUNA_STORAGE``
    (returned as ``env:AUTOFT_OPTUNA_STORAGE`` so its password stays in the environment), and outside
    Kubernetes a folder in the temp directory (kfp.local steps share one machine).
    """
    for value, where in ((study_storage, "study_storage"), (config.search.storage, "search.storage")):
        if value.strip():
            _refuse_visible_password(value.strip(), where)
            return value.strip()
    if os.environ.get(STUDY_STORAGE_ENV, "").strip():
        return ENV_REFERENCE + STUDY_STORAGE_ENV
    if os.environ.get(KUBERNETES_ENV):
        raise ConfigError(
            "no study storage: on Kubernetes the search workers run in separate pods and need a shared "
            f"database; create the secret autoft-pipeline-env with {STUDY_STORAGE_ENV} (see docs/kubeflow.md) "
            "or set the study_storage parameter to an RDB URL without a password"
        )
    return str(Path(tempfile.gettempdir()) / LOCAL_STUDY_FOLDER)


def study_storage_url(reference: str, method: str) -> str:
    """Expand a storage reference into the Optuna storage of one method's study.

    An RDB URL is shared by every method (study names differ); a ``*.journal`` path is one journal file;
    any other path is a folder holding one journal file per method.
    """
    if reference.startswith(ENV_REFERENCE):
        name = reference.removeprefix(ENV_REFERENCE)
        value = os.environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"study storage {reference!r}: the environment variable {name} is not set in this step")
        return value
    if is_rdb_url(reference):
        return reference
    path = Path(reference)
    return str(path if path.suffix == JOURNAL_SUFFIX else path / f"{method}{JOURNAL_SUFFIX}")


def resolve_mlflow_uri(mlflow_uri: str, config: AutoFTConfig, output_dir: str) -> str:
    """The MLflow tracking URI: the parameter, the config, ``$MLFLOW_TRACKING_URI``, else SQLite in output_dir.

    The cluster sets ``$MLFLOW_TRACKING_URI`` from the ConfigMap autoft-pipeline-config.
    """
    for value, where in ((mlflow_uri, "mlflow_tracking_uri"), (config.tracking.mlflow_uri, "tracking.mlflow_uri")):
        if value.strip():
            _refuse_visible_password(value.strip(), where)
            return value.strip()
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        return from_env
    if output_dir.strip():
        return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"
    raise ConfigError(
        "no MLflow tracking URI: set the mlflow_tracking_uri parameter, tracking.mlflow_uri in the config, "
        "MLFLOW_TRACKING_URI in the step environment (ConfigMap autoft-pipeline-config), or output_dir"
    )


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """Measure a block; the seconds land in the yielded dict under ``seconds`` (artifact metadata)."""
    timing = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield timing
    finally:
        timing["seconds"] = round(time.perf_counter() - start, 3)


def move_into(source: Path, destination: Path) -> Path:
    """Move a file or folder to an artifact path (which KFP creates only up to its parent)."""
    destination = Path(destination)
    if destination.is_dir():
        shutil.rmtree(destination)  # a retried task finds its previous attempt's output
    elif destination.exists():
        destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(destination))
    return destination


def provided_inputs(needed: list[str], inputs: dict[str, Any], what: str) -> dict[str, Any]:
    """The optional inputs a step needs for this run's methods; one the pipeline did not wire is an error."""
    missing = [method for method in needed if inputs.get(method) is None]
    if missing:
        raise ValueError(f"no {what} was passed for {missing}; the pipeline wiring is wrong")
    return {method: inputs[method] for method in needed}


def method_model_folders(methods: list[str], zeroshot: str, provided: dict[str, str | None]) -> dict[str, Path]:
    """The saved classifier folder of every method in the run, from the artifact paths a step received.

    ``provided`` maps a fine-tuned method (or its ``_wiseft`` variant) to its model artifact's path, or
    None when the pipeline did not wire one; a method of the run without a model is a wiring error.
    """
    folders: dict[str, Path] = {}
    for method in methods:
        path = zeroshot if method == "zeroshot" else provided.get(method)
        if not path:
            raise ValueError(f"no model artifact was passed for method {method!r}; the pipeline wiring is wrong")
        folders[method] = Path(path)
    return folders


# Eval sets in one evaluate task are joined by this (a shard); a single name is a shard of one.
SHARD_SEPARATOR = ","


def shard_eval_sets(eval_sets: list[str], shards: int) -> list[str]:
    """The evaluate loop's items: one per eval set (``shards`` 0, a cluster's default: each set in its own
    pod), or the sets dealt round-robin into ``shards`` groups (fewer task start-ups on one machine)."""
    if shards < 0:
        raise ConfigError(f"eval_shards must be >= 0 (0: one evaluate task per eval set), got {shards}")
    if shards == 0 or shards >= len(eval_sets):
        return list(eval_sets)
    return [SHARD_SEPARATOR.join(eval_sets[index::shards]) for index in range(shards)]


def shard_sets(item: str) -> list[str]:
    """The eval set names of one evaluate loop item (see :func:`shard_eval_sets`)."""
    return [name.strip() for name in item.split(SHARD_SEPARATOR) if name.strip()]


# A line a step prints to report progress (a finished trial or epoch); kfp.local's runner draws bars from
# them (pipeline/local_run.py), and on a cluster they are ordinary log lines.
PROGRESS_MARK = "autoft-progress "


def report_progress(bar: str, total: int, advance: int = 1) -> None:
    """One unit of work done on ``bar`` (e.g. "search autoft"), which counts to ``total``."""
    print(PROGRESS_MARK + json.dumps({"bar": bar, "total": total, "advance": advance}), flush=True)


def trial_progress(method: str, total: int) -> Any:
    """An Optuna callback reporting each finished trial of ``method``'s search (``total``: the whole budget)."""

    def after_trial(study: Any, trial: Any) -> None:
        report_progress(f"search {method}", total)

    return after_trial


class EpochProgress:
    """A training observer that passes everything to ``inner`` and reports each finished epoch."""

    def __init__(self, inner: Any, bar: str, total: int) -> None:
        self.inner, self.bar, self.total = inner, bar, total

    def on_step(self, step: int, values: Any) -> None:
        self.inner.on_step(step, values)

    def on_epoch(self, epoch: int, values: Any) -> None:
        self.inner.on_epoch(epoch, values)
        report_progress(self.bar, self.total)


# The methods whose model the gate can promote to the registry (the register step wires these two).
CANDIDATE_METHODS = ("autoft", "autoft_wiseft")


def check_candidate(candidate_method: str, methods: list[str]) -> None:
    """The candidate must be an AutoFT model of this run; a run without AutoFT has none ('')."""
    allowed = [m for m in CANDIDATE_METHODS if m in methods]
    if candidate_method in allowed or (not allowed and candidate_method == ""):
        return
    raise ConfigError(
        f"candidate_method {candidate_method!r} is not allowed for methods {methods}; allowed: {allowed or ['']}"
    )


def open_runs(
    config: AutoFTConfig, mlflow_uri: str, output_dir: str, run_id: str, *, start: bool = False, **tags: str
) -> PipelineRuns:
    """This pipeline run's MLflow run tree (components/tracking.py); ``start`` only in the first step."""
    from components.tracking import PipelineRuns

    return PipelineRuns.open(
        resolve_mlflow_uri(mlflow_uri, config, output_dir),
        config.tracking.experiment,
        run_id,
        start=start,
        run_name=f"{config.preset}-{run_id[:8]}" if start else None,
        tags=tags or None,
    )


def publish_final_model(
    config: AutoFTConfig,
    runs: Any,
    run_id: str,
    method: str,
    result: Any,
    artifacts: tuple[Any, Any, Any, Any],
    extra: dict[str, Any],
) -> None:
    """A method's final model leaves its last step (finetune, or select_grid for ft/flyp) the same way.

    ``artifacts`` = (model, wiseft_model, summary, metrics): both models are logged to MLflow, the method's
    runs (and its WiSE-FT variant's) end, and the KFP artifacts get their metadata and metrics.
    A step that fails before this leaves the runs to the exit handler, which ends them FAILED.
    """
    model, wiseft_model, summary, metrics = artifacts
    tags = {"preset": config.preset, "metric": config.metric, "kfp_run_id": run_id}
    model.metadata["mlflow_model_uri"] = runs.log_model(method, Path(model.path), tags)
    own = [m for m in (method, f"{method}_wiseft") if m in config.methods]
    if len(own) == 2:
        wiseft_model.metadata["mlflow_model_uri"] = runs.log_model(own[1], Path(wiseft_model.path), tags)
    runs.end_methods(own)
    model.metadata.update(
        {
            "method": method,
            "best_epoch": result.best_epoch,
            "best_id_val": result.best_id_val,
            "hparams": result.hparams.to_dict(),
            **extra,
        }
    )
    wiseft_model.metadata.update(
        {"method": f"{method}_wiseft", "wiseft_alpha": result.wiseft.best_alpha, "finetuned_from": method}
    )
    summary.metadata.update({"method": method, "seconds": result.seconds})
    metrics.log_metric("best_id_val", result.best_id_val)
    metrics.log_metric("best_epoch", result.best_epoch)
    metrics.log_metric("peak_lr", result.peak_lr)
    metrics.log_metric("wiseft_alpha", result.wiseft.best_alpha)
