"""MLflow 3 tracking for AutoFT: one parent run per pipeline run, a nested run per step and per
trial, artifacts, and the model registry driven by aliases (``candidate``, then ``champion`` behind a
gate; registry stages are deprecated in MLflow 3).

Why it looks like this:
- Pipeline steps run in separate processes (KFP containers), so the parent run is found, not
  held: MLFLOW_RUN_ID when KFP injects it, else the run tagged with this KFP run id, else a new one.
- Everything goes through ``MlflowClient`` with explicit run ids (no fluent "active run" globals),
  so several trials or steps in one process never log into each other's runs.
- A search or fine-tuning run takes hours; losing its results because the tracking server hiccuped
  at the end is not acceptable. Start-up fails fast (a clear error naming the URI, after bounded
  retries), but afterwards every logging call that fails is written to a journal in the run folder
  (``mlflow-pending.jsonl``) and can be replayed with :meth:`Tracker.replay_pending`. While the
  server is unreachable, further calls are journaled at once instead of waiting for retries again.
- MLflow retries HTTP requests 7 times with exponential backoff by default (minutes); unless the
  user set them, we lower MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR / _TIMEOUT.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoft.atomic import atomic_write_text
from autoft.urls import database_url, redact_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from autoft.config import TrackingConfig

log = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_RUN_ID = "MLFLOW_RUN_ID"
ENV_KFP_RUN_ID = "KFP_RUN_ID"
ENV_PIPELINE_VERSION = "AUTOFT_PIPELINE_VERSION"
ENV_GIT_SHA = "AUTOFT_GIT_SHA"
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
PENDING_FILE = "mlflow-pending.jsonl"
TRACKING_DIR = "tracking"
OFFLINE_SECONDS = 60.0

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
MODEL_FILES = ("model.safetensors", "model_card.json")

TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_ROLE = "autoft.role"
TAG_KFP_RUN_ID = "autoft.kfp_run_id"
TAG_PIPELINE_VERSION = "autoft.pipeline_version"
TAG_STEP = "autoft.step"
TAG_TRIAL = "autoft.trial_number"
TAG_TRIAL_STATE = "autoft.trial_state"
TAG_PIPELINE_RUN = "autoft.pipeline_run_id"

SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,200}")
MAX_PARAM_VALUE = 6000  # MLflow 3 limit on a parameter value
MAX_PARAMS_PER_BATCH = 100  # MLflow limit on params in one log_batch
PENDING_PREFIX = "pending-"
# Error codes with which a server that DID answer rejects a request: retrying later will not help,
# so they do not mark the server offline (they are still journaled, so nothing is lost).
REJECTED_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_STATE",
        "BAD_REQUEST",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    }
)


class TrackingError(RuntimeError):
    """A tracking operation failed; the message names the (redacted) tracking URI."""


class TrackingUnavailable(TrackingError):
    """The tracking server could not be reached at start-up (after bounded retries)."""


# --- configuration helpers ---------------------------------------------------------------------


def configure_http_retries() -> dict[str, str]:
    """Lower MLflow's HTTP retry defaults (7 retries, backoff 2: minutes) unless the user set them."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in HTTP_RETRY_DEFAULTS}


def resolve_tracking_uri(config_uri: str, run_root: str | os.PathLike[str]) -> str:
    """config.tracking.mlflow_uri, else MLFLOW_TRACKING_URI, else a SQLite file in the run root."""
    uri = (config_uri or os.environ.get(ENV_TRACKING_URI, "")).strip()
    if not uri:
        root = Path(run_root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
    # A bare postgresql:// would load psycopg 3 under SQLAlchemy 2.1; we ship psycopg2.
    return database_url(uri)


def git_sha() -> str | None:
    """The code's commit: AUTOFT_GIT_SHA (set at image build), else git at the package folder."""
    sha = os.environ.get(ENV_GIT_SHA, "").strip()
    if sha:
        return sha
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return None


def current_pipeline_version() -> str:
    version = os.environ.get(ENV_PIPELINE_VERSION, "").strip()
    if version:
        return version
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("autoft-pipelines")
    except PackageNotFoundError:
        return "unknown"


def flatten_hparams(hparams: Any) -> dict[str, float | int]:
    """Effective hyperparameters as flat MLflow params: ``w_<term>``, ``lr``, ``weight_decay``, ``seed``.

    Accepts ``Hyperparams``, its ``to_dict()`` form (weights nested), or an already flat mapping.
    """
    data = hparams.to_dict() if hasattr(hparams, "to_dict") else dict(hparams)
    flat: dict[str, float | int] = {}
    for key, value in data.items():
        if key == "weights" and isinstance(value, Mapping):
            flat.update({f"w_{term}": float(weight) for term, weight in value.items()})
        elif value is None:
            continue  # e.g. seed when it is not searched
        elif isinstance(value, bool | int):
            flat[key] = int(value)
        else:
            flat[key] = float(value)
    return flat


def flatten_mapping(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"search.n_trials": "100", ...}``; lists as JSON, values within MLflow's limit."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_mapping(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            flat[name] = text[:MAX_PARAM_VALUE]
    return flat


def _config_mapping(config: Any) -> dict[str, Any]:
    if hasattr(config, "model_dump_json"):
        return json.loads(config.model_dump_json())
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config), default=str))
    raise TypeError(f"cannot log a config of type {type(config).__name__}; pass the AutoFTConfig or a mapping")


def _refers_to_pending(kwargs: Mapping[str, Any]) -> bool:
    values = [v for k, v in kwargs.items() if k != "pending_id"]
    if isinstance(kwargs.get("tags"), Mapping):
        values.extend(kwargs["tags"].values())
    return any(isinstance(v, str) and v.startswith(PENDING_PREFIX) for v in values)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version created by :meth:`Tracker.log_model` (alias ``candidate`` set)."""

    name: str
    version: str
    run_id: str
    source: str


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and why; truthy when the version became ``champion``."""

    promoted: bool
    reason: str
    name: str
    version: str
    metric_key: str
    value: float
    champion_version: str | None = None
    champion_value: float | None = None

    def __bool__(self) -> bool:
        return self.promoted


# --- the tracker -------------------------------------------------------------------------------


@dataclass
class _Journal:
    """Append-only record of tracking calls that did not reach MLflow, replayable in order."""

    path: Path | None
    entries: list[dict[str, Any]] = field(default_factory=list)

    def append(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One line per call, flushed and fsynced: a crash right after still leaves it on disk.
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def load(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return list(self.entries)
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def rewrite(self, entries: list[dict[str, Any]]) -> None:
        self.entries = list(entries)
        if self.path is None:
            return
        if entries:
            atomic_write_text(self.path, "".join(json.dumps(e, default=str) + "\n" for e in entries))
        else:
            self.path.unlink(missing_ok=True)


class Tracker:
    """MLflow runs of one pipeline run. See the module docstring for the failure behaviour.

    In a multi-process pipeline each step calls :meth:`start_pipeline_run` (which finds the shared
    parent run) and the exit handler calls :meth:`finish_pipeline_run`; ``with Tracker(...)`` ends the
    parent run on exit only if this object created it, which suits a single-process run.
    ``Tracker.disabled()`` is the tracking-off code path: every method is a no-op that returns None.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "autoft",
        *,
        run_root: str | os.PathLike[str] | None = None,
        registered_model: str = "autoft-clip",
        artifact_location: str | None = None,
        strict: bool = False,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.tracking_uri = database_url(tracking_uri) if tracking_uri else ""
        self.experiment_name = experiment
        self.registered_model = registered_model
        self.run_root = Path(run_root) if run_root is not None else None
        self.strict = strict
        self.artifact_location = artifact_location
        if enabled and not self.tracking_uri:
            raise ValueError("tracking is enabled but no tracking URI was given; use Tracker.disabled() to turn it off")
        if enabled and artifact_location is None and self.tracking_uri.startswith("sqlite:") and self.run_root:
            # SQLite's default artifact root is ./mlruns in the CURRENT directory; keep it in the run.
            self.artifact_location = (self.run_root / "mlartifacts").resolve().as_uri()
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._owns_parent = False
        self._active: list[str] = []
        self._client: MlflowClient | None = None
        self._offline_until = 0.0
        self._journal = _Journal(self.run_root / PENDING_FILE if self.run_root else None)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        tracking: TrackingConfig,
        run_root: str | os.PathLike[str],
        *,
        enabled: bool = True,
        artifact_location: str | None = None,
        strict: bool = False,
    ) -> Tracker:
        if not enabled:
            return cls.disabled()
        return cls(
            resolve_tracking_uri(tracking.mlflow_uri, run_root),
            tracking.experiment,
            run_root=run_root,
            registered_model=tracking.registered_model,
            artifact_location=artifact_location,
            strict=strict,
        )

    @classmethod
    def disabled(cls) -> Tracker:
        return cls("", enabled=False)

    @property
    def safe_uri(self) -> str:
        """The tracking URI with any password hidden: the only form that reaches messages and logs."""
        return redact_url(self.tracking_uri)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            configure_http_retries()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    # -- start-up: fail fast ------------------------------------------------------------------------

    def connect(self) -> str | None:
        """Reach the server and get (or create) the experiment; raise TrackingUnavailable if unreachable."""
        if not self.enabled:
            return None
        if self.experiment_id is not None:
            return self.experiment_id
        start = time.monotonic()
        try:
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                try:
                    self.experiment_id = self.client.create_experiment(
                        self.experiment_name, artifact_location=self.artifact_location
                    )
                except Exception as error:
                    # Two steps may race to create it; the loser reads the winner's.
                    if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment = self.client.get_experiment_by_name(self.experiment_name)
                    assert experiment is not None
                    self.experiment_id = experiment.experiment_id
            else:
                self.experiment_id = experiment.experiment_id
        except Exception as error:
            raise TrackingUnavailable(
                f"MLflow tracking at {self.safe_uri} is unreachable or failing (gave up after "
                f"{time.monotonic() - start:.1f}s; retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES="
                f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')}, timeout MLFLOW_HTTP_REQUEST_TIMEOUT="
                f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')}s): {self._scrub(error)}. Set "
                "tracking.mlflow_uri / MLFLOW_TRACKING_URI to a reachable server, or turn tracking off."
            ) from None
        return self.experiment_id

    def start_pipeline_run(
        self,
        run_name: str | None = None,
        *,
        parent_run_id: str | None = None,
        pipeline_version: str | None = None,
        git_commit: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str | None:
        """The parent run: ``parent_run_id``, else MLFLOW_RUN_ID, else the run tagged with KFP_RUN_ID,
        else a new run. Idempotent; raises TrackingUnavailable when MLflow cannot be reached."""
        if not self.enabled:
            return None
        if self.parent_run_id is not None:
            return self.parent_run_id
        self.connect()
        kfp_run_id = os.environ.get(ENV_KFP_RUN_ID, "").strip() or None
        run_tags = {
            TAG_ROLE: "pipeline",
            TAG_PIPELINE_VERSION: pipeline_version or current_pipeline_version(),
            **({TAG_KFP_RUN_ID: kfp_run_id} if kfp_run_id else {}),
            **dict(tags or {}),
        }
        commit = git_commit or git_sha()
        if commit:
            run_tags[TAG_GIT_COMMIT] = commit
        existing = parent_run_id or os.environ.get(ENV_RUN_ID, "").strip() or None
        try:
            if existing is None and kfp_run_id:
                existing = self._find_pipeline_run(kfp_run_id)
            if existing is not None:
                run = self.client.get_run(existing)
                # Nested runs must live in the parent's experiment (KFP may have chosen another).
                self.experiment_id = run.info.experiment_id
                missing = {k: v for k, v in run_tags.items() if k not in run.data.tags}
                self.parent_run_id = existing
                if missing:
                    self._call("log_batch", run_id=existing, tags=missing)
            else:
                name = run_name or (
                    f"autoft-{kfp_run_id}" if kfp_run_id else f"autoft-{time.strftime('%Y%m%d-%H%M%S')}"
                )
                run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=name)
                self.parent_run_id = run.info.run_id
                self._owns_parent = True
        except Exception as error:
            raise TrackingUnavailable(
                f"cannot start the pipeline run on MLflow at {self.safe_uri}: {self._scrub(error)}"
            ) from None
        log.info("MLflow pipeline run %s at %s", self.parent_run_id, self.safe_uri)
        return self.parent_run_id

    def _find_pipeline_run(self, kfp_run_id: str) -> str | None:
        if not SAFE_ID.fullmatch(kfp_run_id):
            # It goes into a filter string; KFP run ids are UUIDs, anything else is not searched for.
            log.warning("KFP_RUN_ID %r has unexpected characters; not looking up an existing run", kfp_run_id)
            return None
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_KFP_RUN_ID}` = '{kfp_run_id}' and tags.`{TAG_ROLE}` = 'pipeline'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def finish_pipeline_run(self, status: str = "FINISHED") -> None:
        """End the parent run (the pipeline's exit handler calls this; KFP-injected runs too)."""
        if not self.enabled or self.parent_run_id is None:
            return
        self._call("set_terminated", run_id=self.parent_run_id, status=status)

    def __enter__(self) -> Tracker:
        self.start_pipeline_run()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # Only a run this object created is ended here; a found or injected one belongs to the pipeline.
        if self._owns_parent:
            self.finish_pipeline_run("FINISHED" if exc_type is None else "FAILED")

    # -- runs -----------------------------------------------------------------------------------

    @property
    def current_run_id(self) -> str | None:
        """The innermost open step run, else the pipeline run."""
        return self._active[-1] if self._active else self.parent_run_id

    def _create_run(self, name: str, parent: str | None, tags: Mapping[str, str]) -> str:
        run_tags = {**tags, TAG_RUN_NAME: name}
        if parent:
            run_tags[TAG_PARENT] = parent
            if self.parent_run_id:
                run_tags[TAG_PIPELINE_RUN] = self.parent_run_id
        pending = f"{PENDING_PREFIX}{secrets.token_hex(8)}"
        created = self._call(
            "create_run",
            experiment_id=self.experiment_id,
            tags=run_tags,
            run_name=name,
            start_time=_now_ms(),
            pending_id=pending,
        )
        return created or pending

    @contextmanager
    def step(self, name: str, *, params: Mapping[str, Any] | None = None) -> Iterator[str | None]:
        """A nested run for one pipeline step; ends FINISHED, or FAILED if the block raises."""
        if not self.enabled:
            yield None
            return
        parent = self.start_pipeline_run()
        run_id = self._create_run(name, parent, {TAG_ROLE: "step", TAG_STEP: name})
        if params:
            self.log_params(params, run_id=run_id)
        self._active.append(run_id)
        status = "FINISHED"
        try:
            yield run_id
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self._active.remove(run_id)
            self._call("set_terminated", run_id=run_id, status=status)

    def log_trial(
        self,
        number: int,
        hparams: Any,
        value: float | None,
        *,
        metric_key: str = "ood_val_objective",
        state: str = "COMPLETE",
        metrics: Mapping[str, float] | None = None,
        parent_run_id: str | None = None,
    ) -> str | None:
        """One finished search trial as a nested run: flattened hyperparameters and its objective."""
        if not self.enabled:
            return None
        parent = parent_run_id or self.current_run_id or self.start_pipeline_run()
        run_id = self._create_run(
            f"trial-{number}", parent, {TAG_ROLE: "trial", TAG_TRIAL: str(number), TAG_TRIAL_STATE: state}
        )
        values = dict(metrics or {})
        if value is not None:
            values[metric_key] = value
        self._log_batch(run_id, params=flatten_hparams(hparams), metrics=values)
        status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}.get(state.upper(), "FINISHED")
        self._call("set_terminated", run_id=run_id, status=status)
        return run_id

    # -- values and artifacts -----------------------------------------------------------------------

    def _target(self, run_id: str | None) -> str | None:
        if not self.enabled:
            return None
        return run_id or self.current_run_id or self.start_pipeline_run()

    def _log_batch(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        step: int | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        param_items = [(k, str(v)[:MAX_PARAM_VALUE]) for k, v in (params or {}).items()]
        metric_items = [(k, float(v)) for k, v in (metrics or {}).items()]
        timestamp = _now_ms()
        # MLflow accepts at most 100 params per request; metrics and tags ride with the first batch.
        chunks = [param_items[i : i + MAX_PARAMS_PER_BATCH] for i in range(0, len(param_items), MAX_PARAMS_PER_BATCH)]
        for index, chunk in enumerate(chunks or [[]]):
            self._call(
                "log_batch",
                run_id=run_id,
                params=dict(chunk),
                metrics=[(k, v, timestamp, step or 0) for k, v in metric_items] if index == 0 else [],
                tags=dict(tags or {}) if index == 0 else {},
            )

    def log_params(self, params: Mapping[str, Any], run_id: str | None = None) -> None:
        target = self._target(run_id)
        if target:
            self._log_batch(target, params=params)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None, run_id: str | None = None) -> None:
        target = self._target(run_id)
        if target:
            self._log_batch(target, metrics=metrics, step=step)

    def set_tags(self, tags: Mapping[str, str], run_id: str | None = None) -> None:
        target = self._target(run_id)
        if target:
            self._log_batch(target, tags=tags)

    def log_artifact(
        self, path: str | os.PathLike[str], artifact_path: str | None = None, run_id: str | None = None
    ) -> None:
        """Log a file or a whole folder (the caller keeps it on disk, so a journaled call can replay)."""
        target = self._target(run_id)
        if not target:
            return
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"cannot log artifact {path}: it does not exist")
        op = "log_artifacts" if path.is_dir() else "log_artifact"
        self._call(op, run_id=target, local_path=str(path.resolve()), artifact_path=artifact_path)

    def _write_tracking_file(self, name: str, text: str) -> Path:
        # Helpers that generate content keep it in the run folder, so a journaled upload replays.
        folder = (self.run_root or Path.cwd()) / TRACKING_DIR / secrets.token_hex(4)
        return atomic_write_text(folder / name, text)

    def log_config(self, config: Any, run_id: str | None = None) -> None:
        """The resolved config as ``config/resolved_config.yaml`` and as flat ``config.*`` params."""
        target = self._target(run_id)
        if not target:
            return
        import yaml

        data = _config_mapping(config)
        path = self._write_tracking_file("resolved_config.yaml", yaml.safe_dump(data, sort_keys=False))
        self._call("log_artifact", run_id=target, local_path=str(path), artifact_path="config")
        self._log_batch(target, params=flatten_mapping(data, "config."))

    def log_best_hparams(self, hparams: Any, *, value: float | None = None, run_id: str | None = None) -> None:
        """The selected hyperparameters as ``best.*`` params, ``best_hparams.json`` and the best objective."""
        target = self._target(run_id)
        if not target:
            return
        flat = flatten_hparams(hparams)
        path = self._write_tracking_file("best_hparams.json", json.dumps(flat, indent=2, sort_keys=True))
        self._call("log_artifact", run_id=target, local_path=str(path), artifact_path="search")
        self._log_batch(
            target,
            params={f"best.{k}": v for k, v in flat.items()},
            metrics={"best_ood_val_objective": value} if value is not None else None,
        )

    def log_report(self, path: str | os.PathLike[str], run_id: str | None = None) -> None:
        """The human report (a Markdown/HTML file or its folder) under ``report/``."""
        self.log_artifact(path, artifact_path="report", run_id=run_id)

    def log_plots(self, paths: Iterable[str | os.PathLike[str]], run_id: str | None = None) -> None:
        for path in paths:
            self.log_artifact(path, artifact_path="plots", run_id=run_id)

    # -- model registry ---------------------------------------------------------------------------

    def log_model(
        self,
        model_dir: str | os.PathLike[str],
        *,
        name: str | None = None,
        artifact_path: str = "model",
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> RegisteredVersion | None:
        """Upload the saved model folder and register it as a new version with alias ``candidate``.

        Returns None when tracking is off or MLflow failed (then the upload and the registration are
        journaled for :meth:`replay_pending`; the folder itself is untouched).
        """
        folder = Path(model_dir)
        missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a saved model folder: missing {missing}")
        target = self._target(run_id)
        if not target:
            return None
        uploaded = self._call(
            "log_artifacts", run_id=target, local_path=str(folder.resolve()), artifact_path=artifact_path
        )
        version_tags = {**dict(tags or {}), TAG_PIPELINE_RUN: self.parent_run_id or target}
        commit = git_sha()
        if commit:
            version_tags[TAG_GIT_COMMIT] = commit
        registered = self._call(
            "register_model",
            name=name or self.registered_model,
            run_id=target,
            artifact_path=artifact_path,
            tags=version_tags,
            depends=uploaded is not None,
        )
        return RegisteredVersion(**registered) if registered else None

    def champion(self, name: str | None = None) -> Any:
        """The current ``champion`` ModelVersion, or None when there is none yet."""
        if not self.enabled:
            return None
        return self._alias_version(name or self.registered_model, CHAMPION_ALIAS)

    def _alias_version(self, name: str, alias: str) -> Any:
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except Exception as error:
            if getattr(error, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def promote_if_better(
        self,
        name: str,
        version: str | int,
        metric_key: str,
        value: float,
        *,
        higher_is_better: bool = True,
        min_delta: float = 0.0,
    ) -> PromotionDecision:
        """Move alias ``champion`` to ``version`` only if ``value`` beats the champion's ``metric_key``.

        The value is recorded on the version as a tag (so later gates compare against it); a champion
        without that metric (tag or run metric) blocks automatic promotion rather than being replaced
        blindly. With a registry failure the decision is journaled and replayed later (``promoted`` False).
        """
        version = str(version)
        if not self.enabled:
            return PromotionDecision(False, "tracking is disabled", name, version, metric_key, float(value))
        result = self._call(
            "promote",
            name=name,
            version=version,
            metric_key=metric_key,
            value=float(value),
            higher_is_better=higher_is_better,
            min_delta=float(min_delta),
        )
        if result is None:
            return PromotionDecision(
                False, f"registry at {self.safe_uri} unavailable; journaled", name, version, metric_key, float(value)
            )
        return PromotionDecision(**result)

    # -- the journaled call -----------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """Tracking calls waiting in the journal (0 when everything reached MLflow)."""
        return len(self._journal.load())

    def _call(self, op: str, **kwargs: Any) -> Any:
        """Run one MLflow operation; on failure journal it (never lose a result) and return None."""
        ready = kwargs.pop("depends", True)
        # A call that refers to a run existing only in the journal so far waits for that run; while
        # the server is known to be down, calls are journaled without waiting for retries again.
        if not ready or _refers_to_pending(kwargs) or time.monotonic() < self._offline_until:
            self._journal.append({"op": op, **kwargs})
            return None
        try:
            return self._apply(op, kwargs)
        except Exception as error:
            self._journal.append({"op": op, **kwargs})
            if getattr(error, "error_code", "") not in REJECTED_CODES:
                self._offline_until = time.monotonic() + OFFLINE_SECONDS
            log.warning(
                "MLflow %s at %s failed (%s); journaled in %s for replay",
                op,
                self.safe_uri,
                self._scrub(error),
                self._journal.path or "memory",
            )
            if self.strict:
                raise TrackingError(f"MLflow {op} at {self.safe_uri} failed: {self._scrub(error)}") from None
            return None

    def _apply(self, op: str, kwargs: dict[str, Any]) -> Any:
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        if op == "create_run":
            run = client.create_run(
                kwargs["experiment_id"] or self.connect(),
                start_time=kwargs["start_time"],
                tags=kwargs["tags"],
                run_name=kwargs["run_name"],
            )
            return run.info.run_id
        if op == "log_batch":
            client.log_batch(
                kwargs["run_id"],
                metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in kwargs.get("metrics") or []],
                params=[Param(k, str(v)) for k, v in (kwargs.get("params") or {}).items()],
                tags=[RunTag(k, str(v)) for k, v in (kwargs.get("tags") or {}).items()],
                synchronous=True,
            )
            return True
        if op == "log_artifact":
            client.log_artifact(kwargs["run_id"], kwargs["local_path"], kwargs.get("artifact_path"))
            return True
        if op == "log_artifacts":
            client.log_artifacts(kwargs["run_id"], kwargs["local_path"], kwargs.get("artifact_path"))
            return True
        if op == "set_terminated":
            client.set_terminated(kwargs["run_id"], status=kwargs["status"])
            return True
        if op == "register_model":
            return self._register(kwargs["name"], kwargs["run_id"], kwargs["artifact_path"], kwargs["tags"])
        if op == "promote":
            return self._promote(**kwargs)
        raise ValueError(f"unknown journaled tracking operation {op!r}")

    def _register(self, name: str, run_id: str, artifact_path: str, tags: Mapping[str, str]) -> dict[str, str]:
        client = self.client
        try:
            client.create_registered_model(name, description="AutoFT fine-tuned CLIP classifiers")
        except Exception as error:
            if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"runs:/{run_id}/{artifact_path}"
        version = client.create_model_version(name, source, run_id=run_id, tags=dict(tags))
        client.set_registered_model_alias(name, CANDIDATE_ALIAS, version.version)
        log.info("registered %s version %s (alias %s) from %s", name, version.version, CANDIDATE_ALIAS, source)
        return {"name": name, "version": str(version.version), "run_id": run_id, "source": source}

    def _promote(
        self, name: str, version: str, metric_key: str, value: float, higher_is_better: bool, min_delta: float
    ) -> dict[str, Any]:
        client = self.client
        decision = {"name": name, "version": version, "metric_key": metric_key, "value": value}
        client.set_model_version_tag(name, version, metric_key, str(value))
        if not math.isfinite(value):
            return {**decision, "promoted": False, "reason": f"{metric_key}={value} is not a finite number"}
        current = self._alias_version(name, CHAMPION_ALIAS)
        if current is not None and str(current.version) == version:
            return {**decision, "promoted": False, "reason": f"version {version} is already the champion"}
        if current is not None:
            champion_value = self._version_metric(current, metric_key)
            decision.update(champion_version=str(current.version), champion_value=champion_value)
            if champion_value is None:
                return {
                    **decision,
                    "promoted": False,
                    "reason": f"champion version {current.version} has no {metric_key!r} to compare with; "
                    "promote by hand (set the alias) if intended",
                }
            gain = value - champion_value if higher_is_better else champion_value - value
            if not gain > min_delta:
                return {
                    **decision,
                    "promoted": False,
                    "reason": f"{metric_key}={value:.6g} does not beat champion v{current.version} "
                    f"({champion_value:.6g}) by more than {min_delta:g}",
                }
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        reason = "no champion yet"
        if current is not None:
            reason = f"{metric_key}={value:.6g} beats champion v{current.version} ({decision['champion_value']:.6g})"
        log.info("promoted %s version %s to %s: %s", name, version, CHAMPION_ALIAS, reason)
        return {**decision, "promoted": True, "reason": reason}

    def _version_metric(self, version: Any, metric_key: str) -> float | None:
        raw = (version.tags or {}).get(metric_key)
        if raw is not None:
            with contextlib.suppress(ValueError):
                return float(raw)
        if version.run_id:
            with contextlib.suppress(Exception):
                metric = self.client.get_run(version.run_id).data.metrics.get(metric_key)
                return float(metric) if metric is not None else None
        return None

    def replay_pending(self) -> int:
        """Send journaled calls in order; returns how many succeeded (the rest stay journaled)."""
        if not self.enabled:
            return 0
        entries = self._journal.load()
        if not entries:
            return 0
        self.connect()
        self._offline_until = 0.0
        mapping: dict[str, str] = {}
        remaining: list[dict[str, Any]] = []
        done = 0
        for entry in entries:
            args = {k: mapping.get(v, v) if isinstance(v, str) else v for k, v in entry.items() if k != "op"}
            if isinstance(args.get("tags"), dict):
                args["tags"] = {k: mapping.get(v, v) for k, v in args["tags"].items()}
            if _refers_to_pending(args):
                remaining.append(entry)
                continue
            try:
                result = self._apply(entry["op"], {k: v for k, v in args.items() if k != "pending_id"})
            except Exception as error:
                log.warning("replay of MLflow %s failed again: %s", entry["op"], self._scrub(error))
                remaining.append(entry)
                continue
            done += 1
            if entry["op"] == "create_run" and entry.get("pending_id"):
                mapping[entry["pending_id"]] = result
        self._journal.rewrite(remaining)
        return done

    def _scrub(self, error: BaseException) -> str:
        """An error's text without the tracking URI's password (MLflow messages may echo the URL)."""
        text = f"{type(error).__name__}: {error}"
        with contextlib.suppress(ValueError):
            from urllib.parse import urlsplit

            password = urlsplit(self.tracking_uri).password
            if password:
                text = text.replace(password, "***")
        return text[:2000]
