"""`autoft submit`: upload the compiled pipeline as a version named by the git commit, then start a run
(or a recurring run) in an experiment, with parameters from a preset.

The work is planned first as a list of ``kfp.Client`` calls with their exact arguments; ``--dry-run``
prints that plan as JSON, and a real submission executes the same plan, so what is shown is what is sent.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from components.runtime import refuse_visible_passwords

from autoft.config import AutoFTConfig, parse_assignments, parse_yaml, urls_with_passwords
from autoft.errors import ConfigError
from autoft.urls import check_location, check_study_storage, check_tracking_uri, is_gcs, redact_url, url_password
from pipeline.autoft_pipeline import config_parameter
from pipeline.compile import COMPILED_PIPELINE, compiled_default_config, pipeline_parameters, read_pipeline_spec
from pipeline.release import release_version

DEFAULT_SERVICE_ACCOUNT = "autoft-pipeline-runner"  # manifests/base/pipeline/serviceaccount.yaml
TOKEN_ENV = "KFP_TOKEN"  # a bearer token for kfp.Client(existing_token=...), never on the command line
# A command printing a fresh bearer token, run again before the last one ages out: short-lived OIDC tokens
# (an IAP ID token lives 1 h) outlast neither a long `--wait` nor a slow upload otherwise. For example, in CI
# after Workload Identity Federation: gcloud auth print-identity-token --audiences=IAP_CLIENT_ID
TOKEN_COMMAND_ENV = "KFP_TOKEN_COMMAND"
TOKEN_MAX_AGE_S = 15 * 60
# v2beta1 run states after which a run never changes again.
FINAL_RUN_STATES = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}
# KFP's list filters use numeric operation codes (kfp.client.client._FILTER_OPERATIONS["EQUALS"]).
FILTER_EQUALS = 1


@dataclass(frozen=True)
class Ref:
    """A value only known once an earlier call has returned (an id); shown as ``<name>`` in a dry run."""

    name: str


@dataclass
class ClientCall:
    """One ``kfp.Client`` method call; ``stores`` names the id its result provides to later calls."""

    method: str
    kwargs: dict[str, Any]
    stores: str | None = None
    when: str | None = None  # a condition checked at run time, e.g. "pipeline_id is None"

    def to_json(self) -> dict[str, Any]:
        shown = {k: f"<{v.name}>" if isinstance(v, Ref) else v for k, v in self.kwargs.items()}
        payload: dict[str, Any] = {"method": self.method, "kwargs": shown}
        if self.stores:
            payload["stores"] = self.stores
        if self.when:
            payload["when"] = self.when
        return payload


@dataclass
class SubmitPlan:
    host: str
    namespace: str | None
    pipeline_name: str
    version_name: str
    experiment: str
    run_name: str
    parameters: dict[str, Any]
    schedule: str | None
    calls: list[ClientCall] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "namespace": self.namespace,
            "pipeline": self.pipeline_name,
            "version": self.version_name,
            "experiment": self.experiment,
            "run_name": self.run_name,
            "schedule": self.schedule,
            "parameters": self.parameters,
            "calls": [call.to_json() for call in self.calls],
        }


def kfp_cron(schedule: str) -> str:
    """KFP wants 6 cron fields (seconds first); a standard 5-field expression gets ``0`` seconds."""
    fields = schedule.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(f"--schedule {schedule!r}: use a cron expression of 5 fields (min hour dom mon dow) or 6")


# KFP's parameter types (the IR's parameterType) -> the Python values a run may pass.
PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}


def parse_parameters(items: list[str], declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``name=value`` pairs (values parsed as YAML) for declared pipeline parameters, of the declared type."""
    values: dict[str, Any] = {}
    for name, text in parse_assignments(items, "--param", "search_workers=4").items():
        if name not in declared:
            raise ConfigError(f"--param {name!r} is not a pipeline parameter; parameters: {sorted(declared)}")
        if name in ("config_yaml", "config_overrides"):
            raise ConfigError(f"--param {name}: the config comes from --preset/--config and --set")
        kind = declared[name].get("parameterType", "STRING")
        value = text if kind == "STRING" else parse_yaml(text, f"--param {name}") if text.strip() else ""
        allowed = PARAMETER_TYPES.get(kind, (object,))
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ConfigError(f"--param {name}={text!r}: expected {kind.lower().replace('_', ' ')}, got {value!r}")
        if isinstance(value, str) and url_password(value):
            refuse_visible_passwords([(name, redact_url(value))])
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--param {name}={text!r}: must be a finite number")
        check_parameter_value(name, value)
        values[name] = value
    return values


def check_parameter_value(name: str, value: Any) -> None:
    """The values the steps would refuse (or misread) mid-run, refused at submission with the parameter named."""
    text = value.strip() if isinstance(value, str) else ""
    if name == "checkpoint_root" and text:
        check_location(text, "--param checkpoint_root", gcs=True, what="a folder on a volume every step mounts")
        if not is_gcs(text) and not text.startswith("/"):
            raise ConfigError(
                f"--param checkpoint_root={text!r}: a relative path names a folder inside one pod; give "
                "gs://BUCKET/PATH (or an absolute path on a volume every step mounts)"
            )
    elif name == "output_dir" and text:
        check_location(text, "--param output_dir", gcs=False, what="an absolute folder on a shared volume")
    elif name == "mlflow_tracking_uri" and text:
        check_tracking_uri(text, "--param mlflow_tracking_uri")
    elif name == "study_storage" and text:
        check_study_storage(text, "--param study_storage")
    elif name == "search_workers" and isinstance(value, int) and value < 1:
        raise ConfigError(f"--param search_workers={value}: at least one search worker is needed")
    elif name == "eval_shards" and isinstance(value, int) and value < 0:
        raise ConfigError(f"--param eval_shards={value}: must be >= 0 (0: one evaluate task per eval set)")


def plan_submission(
    config: AutoFTConfig,
    *,
    host: str,
    namespace: str | None = None,
    package_path: Path = COMPILED_PIPELINE,
    version_name: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    params: list[str] | None = None,
    schedule: str | None = None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    enable_caching: bool = False,
) -> SubmitPlan:
    """Everything `autoft submit` will send, checked against the compiled pipeline before any network call."""
    refuse_visible_passwords(urls_with_passwords(config))
    spec = read_pipeline_spec(package_path)
    declared = pipeline_parameters(spec)
    compiled_methods = compiled_default_config(spec).get("methods")
    if list(config.methods) != list(compiled_methods or []):
        raise ConfigError(
            f"preset {config.preset!r} runs methods {config.methods} but {package_path} was compiled for "
            f"{compiled_methods}; compile for it first: autoft compile --preset {config.preset} --methods config"
        )
    pipeline_name = spec["pipelineInfo"]["name"]
    version = version_name or release_version(package_path)
    experiment = experiment or f"autoft-{config.preset}"
    run_name = run_name or f"autoft-{config.preset}-{version}"
    parameters: dict[str, Any] = {"config_yaml": config_parameter(config), **parse_parameters(params or [], declared)}
    package = str(Path(package_path).resolve())
    version_filter = json.dumps(
        {"predicates": [{"operation": FILTER_EQUALS, "key": "name", "stringValue": version}]}, sort_keys=True
    )
    calls = [
        ClientCall("get_pipeline_id", {"name": pipeline_name}, stores="pipeline_id"),
        ClientCall(
            "upload_pipeline",
            {
                "pipeline_package_path": package,
                "pipeline_name": pipeline_name,
                "description": "AutoFT: robust fine-tuning of CLIP with a learned objective",
            },
            stores="pipeline_id",
            when="pipeline_id is None",
        ),
        ClientCall(
            "list_pipeline_versions", {"pipeline_id": Ref("pipeline_id"), "filter": version_filter}, stores="version_id"
        ),
        ClientCall(
            "upload_pipeline_version",
            {
                "pipeline_package_path": package,
                "pipeline_version_name": version,
                "pipeline_id": Ref("pipeline_id"),
                "description": f"commit {version}",
            },
            stores="version_id",
            when="version_id is None",
        ),
        ClientCall(
            "create_experiment",
            {"name": experiment, "description": f"AutoFT runs of preset {config.preset}", "namespace": namespace},
            stores="experiment_id",
        ),
    ]
    common = {
        "experiment_id": Ref("experiment_id"),
        "job_name": run_name,
        "params": parameters,
        "pipeline_id": Ref("pipeline_id"),
        "version_id": Ref("version_id"),
        "enable_caching": enable_caching,
        "service_account": service_account,
    }
    if schedule:
        calls.append(
            ClientCall(
                "create_recurring_run",
                {
                    **common,
                    "description": f"AutoFT {config.preset} on schedule {schedule}",
                    "cron_expression": kfp_cron(schedule),
                    # One run at a time, and no burst of missed runs after a pause.
                    "max_concurrency": 1,
                    "no_catchup": True,
                },
                stores="recurring_run_id",
            )
        )
    else:
        calls.append(ClientCall("run_pipeline", common, stores="run_id"))
    return SubmitPlan(host, namespace, pipeline_name, version, experiment, run_name, parameters, schedule, calls)


def check_host(host: str) -> None:
    """--host must be a KFP endpoint URL; anything else would fail deep inside kfp's client."""
    try:
        parts = urlsplit(host.strip())
        port = parts.port
    except ValueError as error:
        raise ConfigError(
            f"--host {redact_url(host)!r} is not a URL ({error}); e.g. https://kubeflow.example.com/pipeline"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--host {redact_url(host)!r}: give the KFP API endpoint as http(s)://HOST[:PORT][/PATH], e.g. "
            "https://kubeflow.example.com/pipeline"
        )
    if url_password(host):
        raise ConfigError("--host holds a password; use $KFP_TOKEN or $KFP_TOKEN_COMMAND for credentials")
    del port


def client_arguments(host: str, namespace: str | None, ssl_ca_cert: str | None = None) -> dict[str, Any]:
    """kfp.Client's arguments: the host, the namespace, and credentials by the usual KFP means.

    ``$KFP_TOKEN_COMMAND`` is run for a bearer token, again before it ages out; else ``$KFP_TOKEN`` becomes
    ``existing_token``; otherwise, where a KFP service-account token is mounted
    (``$KF_PIPELINES_SA_TOKEN_PATH`` or its default path), it is read by kfp's own
    ServiceAccountTokenVolumeCredentials; otherwise kfp.Client falls back to kubeconfig / no auth.
    """
    from kfp import client as kfp_client

    check_host(host)
    arguments: dict[str, Any] = {"host": host}
    if namespace:
        arguments["namespace"] = namespace
    if ssl_ca_cert:
        arguments["ssl_ca_cert"] = ssl_ca_cert
    token = os.environ.get(TOKEN_ENV, "").strip()
    token_command = os.environ.get(TOKEN_COMMAND_ENV, "").strip()
    token_path = os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV) or kfp_client.KF_PIPELINES_SA_TOKEN_PATH
    if token_command:
        arguments["credentials"] = CommandTokenCredentials(token_command)
    elif token:
        arguments["existing_token"] = token
    elif Path(token_path).is_file():
        arguments["credentials"] = kfp_client.ServiceAccountTokenVolumeCredentials()
    return arguments


# Where each call's result keeps the id later calls need (kfp_server_api models).
ID_FIELDS = {
    "upload_pipeline": "pipeline_id",
    "upload_pipeline_version": "pipeline_version_id",
    "create_experiment": "experiment_id",
    "run_pipeline": "run_id",
    "create_recurring_run": "recurring_run_id",
}


def _result_id(method: str, result: Any) -> str | None:
    if method == "get_pipeline_id":
        return result
    if method == "list_pipeline_versions":
        versions = result.pipeline_versions or []
        return versions[0].pipeline_version_id if versions else None
    value = getattr(result, ID_FIELDS[method], None)
    if not value:
        raise RuntimeError(f"kfp.Client.{method} returned {type(result).__name__} without {ID_FIELDS[method]}")
    return value


def execute(plan: SubmitPlan, client: Any) -> dict[str, str | None]:
    """Run the planned calls on a ``kfp.Client``; returns the ids they produced."""
    ids: dict[str, str | None] = {}
    for call in plan.calls:
        if call.when == "pipeline_id is None" and ids.get("pipeline_id"):
            continue
        if call.when == "version_id is None" and ids.get("version_id"):
            continue
        kwargs = {k: ids[v.name] if isinstance(v, Ref) else v for k, v in call.kwargs.items()}
        result = getattr(client, call.method)(**kwargs)
        if call.stores:
            ids[call.stores] = _result_id(call.method, result)
    return ids


class CommandTokenCredentials:
    """kfp.Client credentials from a command that prints a bearer token, re-run when the token ages out.

    kfp's generated API client calls ``refresh_api_key_hook`` before every request, so a long ``--wait``
    keeps working after the first short-lived token expires. The command runs without a shell.
    """

    def __init__(self, command: str, max_age_s: float = TOKEN_MAX_AGE_S) -> None:
        self.command = shlex.split(command)
        if not self.command:
            raise ConfigError(f"${TOKEN_COMMAND_ENV} is empty")
        self.max_age_s = max_age_s
        self._token = ""
        self._fetched_at = -float("inf")

    def token(self) -> str:
        if time.monotonic() - self._fetched_at >= self.max_age_s:
            try:
                done = subprocess.run(self.command, capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise ConfigError(f"${TOKEN_COMMAND_ENV} ({self.command[0]}) could not run: {error}") from None
            token = done.stdout.strip()
            if done.returncode != 0 or not token or any(c.isspace() for c in token):
                tail = done.stderr.strip().splitlines()[-3:]
                raise ConfigError(
                    f"${TOKEN_COMMAND_ENV} ({self.command[0]}) gave no token (exit {done.returncode}): "
                    f"{' / '.join(tail) or 'empty output'}"
                )
            self._token, self._fetched_at = token, time.monotonic()
        return self._token

    def refresh_api_key_hook(self, config: Any) -> None:
        config.api_key["authorization"] = self.token()


def wait_for_run(client: Any, run_id: str, timeout_s: float, poll_s: float = 30.0) -> str:
    """Poll a run until it reaches a final state; returns that state, or ``TIMED_OUT`` after ``timeout_s``.

    kfp.Client.wait_for_run_completion does not count CANCELED as final, so it would wait out the timeout.
    """
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        state = str(getattr(client.get_run(run_id), "state", None) or "PENDING").upper()
        if state != last:
            print(f"run {run_id}: {state}", flush=True)
            last = state
        if state in FINAL_RUN_STATES:
            return state
        if time.monotonic() >= deadline:
            return "TIMED_OUT"
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
