"""MLflow for one pipeline run: the run tree every step adds to, and the champion in the registry.

The tree, built across pods that share nothing but the tracking server:

    pipeline run  (started by prepare_data, ended by the exit handler with the pipeline's final state)
    ├── <method>  one child per method, the SAME metric names in each (id_val, id_test, ood_avg,
    │   │         ood/<shift>, ood_val) and its hyperparameters as params, so MLflow's chart and
    │   │         compare views compare methods; fine-tuning curves and system metrics; its MLflow model.
    │   │         A searched method's run holds its whole search as ONE table (search/trials.csv: a row
    │   │         per trial) beside Optuna's plots, and a search/trial_value curve while it runs
    │   └── trial-<n>   only the best ``tracking.nested_trials`` trials (default 5) as nested runs
    └── ...

A method run spans its OWN work: it is created when its first step starts (create_study for a searched
method, build_zeroshot for zero-shot, the fine-tune step otherwise) and ended when its last step ends
(its fine-tune; a WiSE-FT variant lives inside its base's fine-tune). The shared steps (prepare,
evaluate, report) belong to the pipeline run; the report adds each method's test metrics afterwards.

Every step finds its runs by tags, never by "the active run": with KFP's MLflow integration on, KFP
creates the pipeline run and a nested run per task and sets ``MLFLOW_RUN_ID`` to the TASK's run; the
pipeline run is then the root of that run's parent chain (never the task run itself). With it off,
the run tagged with this KFP run id is the pipeline run. Both give the same tree under it.
All calls go through ``MlflowClient`` with explicit run ids; nothing uses the fluent run stack.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from autoft.config import AutoFTConfig, config_to_dict, redact_config
from autoft.errors import AutoFTError
from autoft.urls import database_url, redact_url

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import FrozenTrial

    from autoft.contracts import MethodResult, PreparedData, SearchResult, TrialRecord

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_RUN_ID = "MLFLOW_RUN_ID"  # set by KFP's MLflow integration: the task's own nested run
ENV_KFP_UI = "AUTOFT_KFP_UI_URL"  # e.g. https://kubeflow.example.com/pipeline: tags the run's URL
ENV_OPTUNA_DASHBOARD = "AUTOFT_OPTUNA_DASHBOARD_URL"  # the report links each study there
ENV_GIT_SHA = "AUTOFT_GIT_SHA"
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
# MLflow 3's UI opens an experiment in its GenAI view unless this tag says otherwise.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_SOURCE = "mlflow.source.name"
TAG_ROLE = "autoft.role"  # pipeline | method | trial | grid_point
TAG_KFP_RUN_ID = "autoft.kfp_run_id"
TAG_PIPELINE_RUN = "autoft.pipeline_run_id"
TAG_METHOD = "autoft.method"
TAG_TRIAL = "autoft.trial"
TAG_GRID_POINT = "autoft.grid_point"
TAG_TRIALS_TABLE = "autoft.trials_table"
TRIALS_TABLE = PurePosixPath("search/trials.csv")  # in a searched method's run: one row per trial
# The UI's Source column: what produced the run.
SOURCE_TAGS = {TAG_SOURCE: "autoft-pipelines (Kubeflow pipeline step)", "mlflow.source.type": "JOB"}
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
MODEL_NAME = "model"  # a method run's logged model


class TrackingError(AutoFTError, RuntimeError):
    """MLflow is unreachable or refused a call; the message names the (redacted) tracking URI."""


def configure_http_retries() -> None:
    """Lower MLflow's HTTP retries (7, exponential: minutes) unless the user set them: fail in seconds."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def git_sha() -> str | None:
    """The code's commit: AUTOFT_GIT_SHA (set at image build), else git at the package folder."""
    sha = os.environ.get(ENV_GIT_SHA, "").strip()
    if sha:
        return sha
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        if result.returncode == 0:
            return result.stdout.strip() or None
    return None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoft-pipelines")
    except PackageNotFoundError:
        return "unknown"


def run_url(kfp_run_id: str) -> str:
    """The run's page in the Kubeflow UI when its address is configured ($AUTOFT_KFP_UI_URL), else ''."""
    base = os.environ.get(ENV_KFP_UI, "").strip().rstrip("/")
    return f"{base}/#/runs/details/{kfp_run_id}" if base else ""


def flat_hparams(hparams: Any) -> dict[str, float]:
    """Hyperparameters as flat MLflow params: ``lr``, ``weight_decay``, ``w_<term>`` (and ``seed`` if searched)."""
    data = hparams.to_dict() if hasattr(hparams, "to_dict") else dict(hparams)
    flat = {f"w_{term}": float(weight) for term, weight in data.get("weights", {}).items()}
    flat.update({key: float(data[key]) for key in ("lr", "weight_decay") if key in data})
    if data.get("seed") is not None:
        flat["seed"] = int(data["seed"])
    return flat


@dataclass
class PipelineRuns:
    """The run tree of one pipeline run on one tracking server."""

    client: MlflowClient
    uri: str
    experiment_id: str
    parent_id: str

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        uri: str,
        experiment: str,
        kfp_run_id: str,
        *,
        start: bool = False,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> PipelineRuns:
        """The pipeline run of ``kfp_run_id``: KFP's (``MLFLOW_RUN_ID``'s root), else ours by tag.

        ``start`` (the first step only) creates it when there is none; later steps require it.
        """
        import mlflow
        from mlflow import MlflowClient

        configure_http_retries()
        uri = database_url(uri)
        mlflow.set_tracking_uri(uri)  # for the few calls that need it (logging an MLflow model)
        mlflow.set_registry_uri(uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            experiment_id = _experiment(client, experiment, uri)
            injected = os.environ.get(ENV_RUN_ID, "").strip()
            if injected:
                parent = _root_of(client, injected)
                experiment_id = client.get_run(parent).info.experiment_id
            else:
                parent = _find_tagged(client, experiment_id, {TAG_KFP_RUN_ID: kfp_run_id, TAG_ROLE: "pipeline"})
            if parent is None:
                if not start:
                    raise TrackingError(
                        f"no MLflow pipeline run for KFP run {kfp_run_id} at {redact_url(uri)}: the prepare step "
                        "starts it; was it tracked to another server or experiment?"
                    )
                parent = client.create_run(
                    experiment_id,
                    run_name=run_name,
                    tags={TAG_ROLE: "pipeline", TAG_KFP_RUN_ID: kfp_run_id, **SOURCE_TAGS},
                ).info.run_id
        except TrackingError:
            raise
        except Exception as error:
            raise TrackingError(
                f"MLflow at {redact_url(uri)} is unreachable or failing: {_scrub(error, uri)}. Set "
                "tracking.mlflow_uri / MLFLOW_TRACKING_URI to a reachable server"
            ) from None
        runs = cls(client, uri, experiment_id, parent)
        tags = {key: value for key, value in (tags or {}).items() if value}
        if tags or injected:
            # A KFP-made pipeline run gets our tags too, so both modes can be searched the same way.
            runs.set_tags(parent, {TAG_ROLE: "pipeline", TAG_KFP_RUN_ID: kfp_run_id, **dict(tags or {})})
        return runs

    # -- the tree ----------------------------------------------------------------------------------

    def method_run(self, method: str, *, start: bool = False) -> str:
        """The child run of ``method``: found by tags; with ``start`` created (now) when there is none."""
        key = {TAG_PIPELINE_RUN: self.parent_id, TAG_METHOD: method, TAG_ROLE: "method"}
        found = _find_tagged(self.client, self.experiment_id, key)
        if found:
            return found
        if not start:
            raise TrackingError(f"no MLflow run for method {method!r} under pipeline run {self.parent_id}")
        tags = {TAG_PARENT: self.parent_id, **key, **SOURCE_TAGS}
        run_id = self.client.create_run(self.experiment_id, run_name=method, tags=tags).info.run_id
        # Two steps of one method starting at once (parallel tasks) may both create it: all keep the earliest.
        first = _find_tagged(self.client, self.experiment_id, key)
        if first is not None and first != run_id:
            self.client.delete_run(run_id)
            return first
        # The splits prepare_data recorded on the pipeline run: the runs table's Dataset column for each method.
        inputs = self.client.get_run(self.parent_id).inputs.dataset_inputs
        if inputs:
            self.client.log_inputs(run_id, datasets=list(inputs))
        return run_id

    def start_methods(self, methods: list[str]) -> list[str]:
        """A step doing ``methods``' own work starts: their runs are created now (their first step) or found;
        one a failed earlier attempt of this step left ended is RUNNING again (KFP retried the step)."""
        run_ids = [self.method_run(method, start=True) for method in methods]
        for run_id in run_ids:
            if self.client.get_run(run_id).info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        return run_ids

    def end_methods(self, methods: list[str], *, succeeded: bool = True) -> None:
        """The methods' last step ends: their runs end now (the report adds test metrics to them later)."""
        now = int(time.time() * 1000)  # one moment for all: the step's end
        for method in methods:
            self.client.set_terminated(self.method_run(method), "FINISHED" if succeeded else "FAILED", end_time=now)

    def trial_logger(self, method: str) -> Any:
        """An Optuna callback: each finished trial adds a point to the method run's search curves.

        ``search/trial_value`` (a complete trial's objective) and ``search/best_value`` (the study's best so
        far), at step = trial number: a live view of a search of any size in one run; the trials themselves
        become one table when the search is done (:meth:`log_search`)."""
        method_run = self.method_run(method)

        def log_trial(study: optuna.Study, trial: FrozenTrial) -> None:
            metrics = []
            if trial.state.name == "COMPLETE" and trial.value is not None:
                metrics.append(_metric("search/trial_value", trial.value, trial.number))
            with contextlib.suppress(ValueError):  # no complete trial yet
                metrics.append(_metric("search/best_value", study.best_value, trial.number))
            if metrics:
                self.log(method_run, metrics=metrics)

        return log_trial

    def log_search(
        self, method: str, result: SearchResult, plots: Mapping[str, Path] | None = None, *, nested: int = 5
    ) -> list[str]:
        """A finished search in the method's run: every trial as one table (``search/trials.csv``), Optuna's
        plots beside it, the counts and best value as metrics, and the best ``nested`` trials as nested
        runs (0: none, -1: every trial). Returns the nested runs' ids."""
        from autoft.search_insight import TRIAL_COLUMNS, best_trials, trial_table

        run_id = self.method_run(method)
        with tempfile.TemporaryDirectory(prefix="autoft-search-") as folder:
            rows = trial_table(result.trials)
            columns = [*TRIAL_COLUMNS, *sorted({key for row in rows for key in row} - set(TRIAL_COLUMNS))]
            with (Path(folder) / TRIALS_TABLE.name).open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(rows)
            for path in (plots or {}).values():
                shutil.copy(path, Path(folder) / Path(path).name)
            self.client.log_artifacts(run_id, folder, str(TRIALS_TABLE.parent))
        states = Counter(record.state for record in result.trials)
        counts = {f"search/trials_{state.lower()}": states.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL")}
        last = max((record.number for record in result.trials), default=0)
        metrics = [_metric(name, count, 0) for name, count in {**counts, "search/trials": len(result.trials)}.items()]
        # The final best after the live curve's last point (workers log it at step = trial number).
        metrics.append(_metric("search/best_value", result.best_value, last + 1))
        tags = {TAG_TRIALS_TABLE: str(TRIALS_TABLE), "autoft.best_trial": str(result.best_trial)}
        self.log(run_id, metrics=metrics, tags=tags)
        # A retried report step finds the trial runs its first attempt made instead of adding them twice.
        made = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{run_id}' and tags.`{TAG_ROLE}` = 'trial'",
            max_results=5000,
        )
        existing = {run.data.tags.get(TAG_TRIAL): run.info.run_id for run in made}
        return [
            existing.get(str(record.number)) or self._trial_run(method, run_id, record)
            for record in best_trials(result.trials, nested)
        ]

    def _trial_run(self, method: str, method_run: str, record: TrialRecord) -> str:
        """One trial as a nested run of its method's run, over the trial's own start and end."""
        tags = {
            TAG_PARENT: method_run,
            TAG_PIPELINE_RUN: self.parent_id,
            TAG_METHOD: method,
            TAG_ROLE: "trial",
            TAG_TRIAL: str(record.number),
            "autoft.trial_state": record.state,
            **SOURCE_TAGS,
        }
        start_ms = round(record.start * 1000) if record.start is not None else None
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{record.number}", start_time=start_ms, tags=tags
        )
        params = flat_hparams(record.hparams) if record.hparams else dict(record.params)
        metrics = [_metric("ood_val_objective", value, step) for step, value in sorted(record.intermediate.items())]
        if record.value is not None:
            metrics.append(_metric("ood_val_objective", record.value, max(record.intermediate, default=0) + 1))
        self.log(run.info.run_id, params=params, metrics=metrics)
        timed = record.start is not None and record.seconds is not None
        end_ms = round((record.start + record.seconds) * 1000) if timed else None  # type: ignore[operator]
        status = "FAILED" if record.state == "FAIL" else "FINISHED"
        self.client.set_terminated(run.info.run_id, status=status, end_time=end_ms)
        return run.info.run_id

    def training_observer(self, method: str) -> TrainingCurves:
        return self.curves_of(self.method_run(method))

    def curves_of(self, run_id: str) -> TrainingCurves:
        """A TrainingObserver that files training curves in run ``run_id``."""
        return TrainingCurves(self, run_id)

    def grid_point_run(self, method: str, point: str) -> str:
        """One lr grid point of a conventional baseline (ft, flyp): a nested run of its method's run, RUNNING.

        Its curves live there, not in the method run, so the method runs compared side by side show the same
        headline metrics (the grid's per-point curves would otherwise crowd them); a retried step finds it again.
        """
        key = {TAG_PIPELINE_RUN: self.parent_id, TAG_METHOD: method, TAG_ROLE: "grid_point", TAG_GRID_POINT: point}
        found = _find_tagged(self.client, self.experiment_id, key)
        if found:
            if self.client.get_run(found).info.status != "RUNNING":
                self.client.update_run(found, status="RUNNING")
            return found
        tags = {TAG_PARENT: self.method_run(method), **key, **SOURCE_TAGS}
        return self.client.create_run(self.experiment_id, run_name=f"{method} {point}", tags=tags).info.run_id

    def end_grid_point(self, run_id: str, lr: float, best_id_val: float, best_epoch: int, epochs_run: int) -> None:
        """The grid point's outcome as its run's params and metrics; the run ends FINISHED."""
        self.log(
            run_id,
            params={"lr": lr},
            metrics={"best_id_val": best_id_val, "best_epoch": float(best_epoch), "epochs_run": float(epochs_run)},
        )
        self.client.set_terminated(run_id, "FINISHED")

    # -- values ------------------------------------------------------------------------------------

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: list[Any] | Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """One log_batch per 100 params; metrics as entities or a name -> value mapping (step 0)."""
        from mlflow.entities import Param, RunTag

        if isinstance(metrics, Mapping):
            metrics = [_metric(name, value, 0) for name, value in metrics.items()]
        items = [Param(k, str(v)[:MAX_PARAM_VALUE]) for k, v in (params or {}).items()]
        chunks = [items[i : i + MAX_PARAMS_PER_BATCH] for i in range(0, len(items), MAX_PARAMS_PER_BATCH)] or [[]]
        for index, chunk in enumerate(chunks):
            self.client.log_batch(
                run_id,
                metrics=list(metrics or []) if index == 0 else [],
                params=chunk,
                tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()] if index == 0 else [],
                synchronous=True,
            )

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.log(run_id, tags=tags)

    def log_config(self, run_id: str, config: AutoFTConfig) -> None:
        """The resolved config as flat ``config.*`` params and as ``config/config.yaml``."""
        data = redact_config(config_to_dict(config))  # no password reaches MLflow's params or artifacts
        self.log(run_id, params={f"config.{key}": value for key, value in _flatten(data).items()})
        with tempfile.TemporaryDirectory() as folder:
            import yaml

            path = Path(folder) / "config.yaml"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
            self.client.log_artifact(run_id, str(path), "config")

    def log_datasets(self, run_ids: list[str], data: PreparedData, source: str) -> None:
        """Every split the run uses as an MLflow dataset input (name, digest, source, context)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        from autoft.data.manifests import read_manifest

        contexts = {"id_train": "training", "id_val": "validation", "ood_val": "search"}
        inputs = []
        for split in ("id_train", "id_val", "ood_val", "id_test", *data.ood_tests):
            manifest = read_manifest(data.manifest(split))
            digest = _digest(json.dumps(manifest, sort_keys=True))
            dataset_source = _dataset_source(source, manifest, resolve_dataset_source)
            dataset = MetaDataset(source=dataset_source, name=f"{data.dataset}/{split}", digest=digest)
            tags = [InputTag("mlflow.data.context", contexts.get(split, "evaluation"))]
            inputs.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags))
        for run_id in run_ids:
            self.client.log_inputs(run_id, datasets=inputs)

    def log_method_results(self, method: str, row: MethodResult, ood_val: float | None) -> None:
        """The comparable metric names every method child carries."""
        metrics = {"id_val": row.id_val, "id_test": row.id_test, **{f"ood/{k}": v for k, v in row.ood.items()}}
        if row.ood_avg is not None:
            metrics["ood_avg"] = row.ood_avg
        if ood_val is not None:
            metrics["ood_val"] = ood_val
        params = flat_hparams(row.hparams) if row.hparams is not None else {}
        if row.wiseft_alpha is not None:
            params["wiseft_alpha"] = row.wiseft_alpha
        self.log(self.method_run(method), params=params, metrics=metrics)

    # -- models ------------------------------------------------------------------------------------

    def log_model(self, method: str, folder: Path, tags: Mapping[str, str]) -> str:
        """The method's classifier as an MLflow (pyfunc) model of its run; returns ``models:/<id>``."""
        from autoft.serving import log_classifier

        run_id = self.method_run(method)
        uri = log_classifier(folder, run_id, MODEL_NAME, tags={**dict(tags), TAG_METHOD: method})
        self.set_tags(run_id, {"autoft.model_uri": uri})
        return uri

    def model_uri(self, method: str) -> str:
        tags = self.client.get_run(self.method_run(method)).data.tags
        if "autoft.model_uri" not in tags:
            raise TrackingError(f"method {method!r} has no logged MLflow model (its fine-tune step logs it)")
        return tags["autoft.model_uri"]

    def champion(self, name: str) -> Any:
        """The ModelVersion behind the ``champion`` alias, or None."""
        try:
            return self.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except Exception as error:
            if getattr(error, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def register(self, name: str, model_uri: str, tags: Mapping[str, str]) -> Any:
        """A new version of ``name`` from a logged model, with alias ``candidate``."""
        with contextlib.suppress(Exception):
            self.client.create_registered_model(name, description="AutoFT fine-tuned CLIP classifiers")
        model = self.client.get_logged_model(model_uri.removeprefix("models:/"))
        version = self.client.create_model_version(
            name, model_uri, run_id=model.source_run_id, tags=dict(tags), model_id=model.model_id
        )
        self.client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
        return version

    def promote(self, name: str, version: str) -> None:
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version)

    # -- the end -----------------------------------------------------------------------------------

    def finish(self, succeeded: bool) -> list[str]:
        """End every run of the tree still RUNNING: the pipeline run FINISHED or FAILED, the rest alike
        (a step cut short leaves its runs to this). Returns the ids it ended."""
        status = "FINISHED" if succeeded else "FAILED"
        children = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_PIPELINE_RUN}` = '{self.parent_id}' and attributes.status = 'RUNNING'",
            max_results=5000,
        )
        ended = []
        for run in children:
            self.client.set_terminated(run.info.run_id, status=status)
            ended.append(run.info.run_id)
        if self.client.get_run(self.parent_id).info.status == "RUNNING":
            self.client.set_terminated(self.parent_id, status=status)
            ended.append(self.parent_id)
        return ended

    def system_metrics(self, method: str) -> contextlib.AbstractContextManager[None]:
        """CPU, memory and GPU usage sampled into the method's run while a block runs."""
        return _system_metrics(self.method_run(method), self.uri)


class TrainingCurves:
    """A TrainingObserver (autoft.observers) that buffers curves and sends them in batches."""

    FLUSH_EVERY_STEPS = 50

    def __init__(self, runs: PipelineRuns, run_id: str) -> None:
        self.runs = runs
        self.run_id = run_id
        self.pending: list[Any] = []

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        self.pending.extend(_metric(f"train/{name}", value, step) for name, value in values.items())
        if len(self.pending) >= self.FLUSH_EVERY_STEPS * max(len(values), 1):
            self.flush()

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        self.pending.extend(_metric(f"epoch/{name}", value, epoch + 1) for name, value in values.items())
        self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), 1000):  # MLflow's limit per log_batch
            self.runs.log(self.run_id, metrics=self.pending[start : start + 1000])
        self.pending = []


@contextlib.contextmanager
def _system_metrics(run_id: str, uri: str) -> Iterator[None]:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class AtLeastOneSample(SystemMetricsMonitor):
        """MLflow's monitor publishes only after a full sampling interval: a step shorter than that (a fast
        fine-tune) would record no system metrics at all, so the last sample is published on finish."""

        published = 0

        def publish_metrics(self, metrics: dict[str, float]) -> None:
            self.published += 1
            super().publish_metrics(metrics)

        def finish(self) -> None:
            super().finish()
            if not self.published:
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
                self.mlflow_logger.flush()

    monitor = AtLeastOneSample(run_id, sampling_interval=5, samples_before_logging=1, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def _experiment(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            # SQLite's default artifact root is ./mlruns in the CURRENT directory: keep it beside the database.
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except Exception as error:  # two steps may race to create it; the loser reads the winner's
            if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment_id = client.get_experiment_by_name(name).experiment_id  # type: ignore[union-attr]
    else:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]:
            return experiment_id
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    return experiment_id


def _root_of(client: MlflowClient, run_id: str) -> str:
    """Follow ``mlflow.parentRunId`` up from a run to the run without a parent (KFP's pipeline run)."""
    seen = {run_id}
    while (parent := client.get_run(run_id).data.tags.get(TAG_PARENT)) and parent not in seen:
        seen.add(parent)
        run_id = parent
    return run_id


def _find_tagged(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    for value in tags.values():
        if "'" in value or "`" in value:
            raise TrackingError(f"unexpected quote in an MLflow tag value {value!r}")
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = client.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"]
    )
    return runs[0].info.run_id if runs else None


def _metric(name: str, value: float, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(name, float(value), int(time.time() * 1000), int(step))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return flat


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _dataset_source(source: str, manifest: dict[str, Any], resolve: Any) -> Any:
    from mlflow.data.code_dataset_source import CodeDatasetSource

    where = manifest.get("root") or source
    if where and ("://" in where or where.startswith("/")):
        with contextlib.suppress(Exception):
            return resolve(where)
    return CodeDatasetSource(tags={"source": where or "built-in"})


def _scrub(error: BaseException, uri: str) -> str:
    text = f"{type(error).__name__}: {error}"
    from autoft.urls import url_password

    password = url_password(uri)
    return (text.replace(password, "***") if password else text)[:1000]
