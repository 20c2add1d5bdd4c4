"""`autoft submit`: the dry run shows exactly the planned kfp.Client calls, and those calls fit the REAL
kfp.Client API (signatures bound with inspect, and executed against an autospec of kfp.Client)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import kfp
import kfp_server_api
import pytest
import yaml
from kfp_server_api.models import (
    V2beta1Experiment,
    V2beta1ListPipelineVersionsResponse,
    V2beta1Pipeline,
    V2beta1PipelineVersion,
    V2beta1RecurringRun,
    V2beta1Run,
)
from pipeline import release
from pipeline.compile import COMPILED_PIPELINE, compile_pipeline, with_methods
from pipeline.release import git_version, images_in
from pipeline.submit import (
    DEFAULT_SERVICE_ACCOUNT,
    TOKEN_COMMAND_ENV,
    TOKEN_ENV,
    ClientCall,
    CommandTokenCredentials,
    Ref,
    client_arguments,
    execute,
    kfp_cron,
    plan_submission,
    wait_for_run,
)

from autoft.cli import main
from autoft.config import resolve_config
from autoft.errors import ConfigError

SHA = "0123456789abcdef0123456789abcdef01234567"
HOST = "http://127.0.0.1:8888"
DIGEST = "sha256:" + "ab" * 32
PINNED = f"registry.example/team/autoft-step@{DIGEST}"


@pytest.fixture(autouse=True)
def fixed_commit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GITHUB_SHA", SHA)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_COMMAND_ENV, raising=False)
    monkeypatch.delenv("AUTOFT_STEP_IMAGE", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    monkeypatch.setattr(release, "RELEASE_DIR", tmp_path / "release")


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """A dry run of `autoft submit`, compiling against a digest-pinned image (what a cluster must run)."""
    assert main(["submit", "--host", HOST, "--dry-run", "--image", PINNED, *args]) == 0
    return json.loads(capsys.readouterr().out)


def bind_to_real_client(call: ClientCall) -> inspect.BoundArguments:
    """Bind the planned arguments to the installed kfp.Client method's signature (TypeError if they do not fit)."""
    method = getattr(kfp.Client, call.method)
    return inspect.signature(method).bind(mock.sentinel.client, **call.kwargs)


def test_dry_run_shows_version_experiment_and_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    shown = dry_run(capsys, "--preset", "smoke", "--namespace", "team-a", "--param", "search_workers=4")
    version = f"{SHA[:12]}-{'ab' * 6}"  # the commit and the image digest: two builds of one commit differ
    assert shown["version"] == version
    assert shown["experiment"] == "autoft-smoke"
    assert shown["run_name"] == f"autoft-smoke-{version}"
    assert shown["client"] == {"host": HOST, "namespace": "team-a"}
    smoke = resolve_config(preset="smoke")
    assert yaml.safe_load(shown["parameters"]["config_yaml"]) == json.loads(smoke.model_dump_json())
    assert shown["parameters"]["search_workers"] == 4
    methods = [call["method"] for call in shown["calls"]]
    assert methods == [
        "get_pipeline_id",
        "upload_pipeline",
        "list_pipeline_versions",
        "upload_pipeline_version",
        "create_experiment",
        "run_pipeline",
    ]
    upload = shown["calls"][3]["kwargs"]
    assert upload["pipeline_version_name"] == version
    uploaded = Path(upload["pipeline_package_path"])
    assert uploaded == release.RELEASE_DIR / f"autoft_pipeline-{SHA[:12]}.yaml"
    assert images_in(uploaded) == {PINNED}  # every step, by digest
    assert not uploaded.read_text().startswith("# NOT DEPLOYABLE")
    run = shown["calls"][-1]["kwargs"]
    assert run["experiment_id"] == "<experiment_id>" and run["version_id"] == "<version_id>"
    assert run["service_account"] == DEFAULT_SERVICE_ACCOUNT
    assert run["params"] == shown["parameters"]
    assert shown["calls"][4]["kwargs"]["namespace"] == "team-a"


def test_dry_run_of_a_schedule_is_a_recurring_run_one_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    shown = dry_run(capsys, "--preset", "smoke", "--schedule", "0 3 * * 1", "--experiment", "nightly")
    recurring = shown["calls"][-1]
    assert recurring["method"] == "create_recurring_run"
    assert recurring["kwargs"]["cron_expression"] == "0 0 3 * * 1"
    assert recurring["kwargs"]["max_concurrency"] == 1
    assert recurring["kwargs"]["no_catchup"] is True
    assert shown["experiment"] == "nightly"


@pytest.mark.parametrize("schedule", [None, "0 3 * * *"])
def test_planned_calls_fit_the_real_kfp_client_signatures(schedule: str | None) -> None:
    plan = plan_submission(
        resolve_config(preset="smoke"),
        host=HOST,
        namespace="team-a",
        params=["gate_min_gain=0.01"],
        schedule=schedule,
    )
    for call in plan.calls:
        bound = bind_to_real_client(call)
        assert set(bound.arguments) - {"self"} == set(call.kwargs)
    inspect.signature(kfp.Client).bind(**client_arguments(HOST, "team-a", "/etc/ssl/ca.pem"))


def test_execute_uploads_once_then_reuses_the_pipeline_and_version() -> None:
    plan = plan_submission(resolve_config(preset="smoke"), host=HOST)
    # An autospec of the real class: any call that does not fit kfp.Client's signatures raises TypeError.
    client = mock.create_autospec(kfp.Client, instance=True)
    with pytest.raises(TypeError):
        client.run_pipeline(no_such_argument=1)  # the fake is as strict as the real class
    client.get_pipeline_id.return_value = None
    client.upload_pipeline.return_value = V2beta1Pipeline(pipeline_id="p-1", display_name="autoft")
    client.list_pipeline_versions.return_value = V2beta1ListPipelineVersionsResponse(pipeline_versions=None)
    client.upload_pipeline_version.return_value = V2beta1PipelineVersion(pipeline_id="p-1", pipeline_version_id="v-1")
    client.create_experiment.return_value = V2beta1Experiment(experiment_id="e-1", display_name="autoft-smoke")
    client.run_pipeline.return_value = V2beta1Run(run_id="r-1", experiment_id="e-1")
    ids = execute(plan, client)
    assert ids == {"pipeline_id": "p-1", "version_id": "v-1", "experiment_id": "e-1", "run_id": "r-1"}
    client.run_pipeline.assert_called_once()
    assert client.run_pipeline.call_args.kwargs["version_id"] == "v-1"
    assert client.run_pipeline.call_args.kwargs["pipeline_id"] == "p-1"

    # Second submission of the same commit: nothing is uploaded again.
    client.reset_mock()
    client.get_pipeline_id.return_value = "p-1"
    client.list_pipeline_versions.return_value = V2beta1ListPipelineVersionsResponse(
        pipeline_versions=[V2beta1PipelineVersion(pipeline_id="p-1", pipeline_version_id="v-1")]
    )
    client.create_experiment.return_value = V2beta1Experiment(experiment_id="e-1")
    client.run_pipeline.return_value = V2beta1Run(run_id="r-2")
    assert execute(plan, client)["run_id"] == "r-2"
    client.upload_pipeline.assert_not_called()
    client.upload_pipeline_version.assert_not_called()
    version_filter = json.loads(client.list_pipeline_versions.call_args.kwargs["filter"])
    assert version_filter["predicates"][0]["stringValue"] == SHA[:12]


def test_execute_a_schedule_creates_a_recurring_run() -> None:
    plan = plan_submission(resolve_config(preset="smoke"), host=HOST, schedule="*/30 * * * *")
    client = mock.create_autospec(kfp.Client, instance=True)
    client.get_pipeline_id.return_value = "p-1"
    client.list_pipeline_versions.return_value = V2beta1ListPipelineVersionsResponse(
        pipeline_versions=[V2beta1PipelineVersion(pipeline_version_id="v-1")]
    )
    client.create_experiment.return_value = V2beta1Experiment(experiment_id="e-1")
    client.create_recurring_run.return_value = V2beta1RecurringRun(recurring_run_id="rr-1")
    assert execute(plan, client)["recurring_run_id"] == "rr-1"
    kwargs = client.create_recurring_run.call_args.kwargs
    assert (kwargs["cron_expression"], kwargs["max_concurrency"], kwargs["no_catchup"]) == ("0 */30 * * * *", 1, True)
    client.run_pipeline.assert_not_called()


def test_refs_are_shown_as_placeholders() -> None:
    call = ClientCall("run_pipeline", {"version_id": Ref("version_id"), "job_name": "x"}, stores="run_id")
    assert call.to_json() == {
        "method": "run_pipeline",
        "kwargs": {"version_id": "<version_id>", "job_name": "x"},
        "stores": "run_id",
    }


def test_bad_submissions_fail_before_any_network_call(tmp_path: Path) -> None:
    config = resolve_config(preset="smoke")
    with pytest.raises(ConfigError, match="not a pipeline parameter"):
        plan_submission(config, host=HOST, params=["no_such=1"])
    with pytest.raises(ConfigError, match="--preset/--config"):
        plan_submission(config, host=HOST, params=["config_yaml=x"])
    with pytest.raises(ConfigError, match="cron"):
        plan_submission(config, host=HOST, schedule="every day")
    other = compile_pipeline(with_methods(config, ["zeroshot", "ft"]), tmp_path / "ft-only.yaml")
    with pytest.raises(ConfigError, match="compiled for"):
        plan_submission(config, host=HOST, package_path=other)


def test_credentials_come_from_the_usual_places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert client_arguments(HOST, None) == {"host": HOST}
    token_file = tmp_path / "token"
    token_file.write_text("sa-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    arguments = client_arguments(HOST, "team-a")
    assert isinstance(arguments["credentials"], kfp.client.ServiceAccountTokenVolumeCredentials)
    monkeypatch.setenv(TOKEN_ENV, "bearer-token")
    assert client_arguments(HOST, "team-a")["existing_token"] == "bearer-token"


def test_dry_run_never_prints_a_token(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "very-secret-token")
    out = dry_run(capsys, "--preset", "smoke")
    assert out["client"]["existing_token"] == "<set>"
    assert "very-secret-token" not in json.dumps(out)


def test_version_is_the_commit_and_marks_uncommitted_changes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GITHUB_SHA")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "-C", str(tmp_path), "add", "f.txt"], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_version(tmp_path) == head.strip()[:12]
    (tmp_path / "f.txt").write_text("b")
    assert git_version(tmp_path) == head.strip()[:12] + "-dirty"


def test_kfp_cron_accepts_five_or_six_fields() -> None:
    assert kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert kfp_cron("30 0 3 * * *") == "30 0 3 * * *"
    with pytest.raises(ConfigError):
        kfp_cron("* *")


def test_submit_refuses_a_pipeline_that_names_a_mutable_tag(capsys: pytest.CaptureFixture[str]) -> None:
    """The committed pipeline names the local placeholder tag: uploading it would run whatever that tag
    holds on the cluster (or nothing at all), so submit wants a pushed image or a release file."""
    assert images_in(COMPILED_PIPELINE) == {"autoft-step:0.1.0"}
    assert COMPILED_PIPELINE.read_text().startswith("# NOT DEPLOYABLE AS IS")
    assert main(["submit", "--host", HOST, "--dry-run", "--preset", "digits"]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["submit", "--host", HOST, "--dry-run", "--package", str(COMPILED_PIPELINE)]) == 2
    assert "names the step image by tag" in capsys.readouterr().err
    allowed = ["--package", str(COMPILED_PIPELINE), "--allow-unpinned-image"]
    assert main(["submit", "--host", HOST, "--dry-run", *allowed]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == SHA[:12]
    assert main(["submit", "--host", HOST, "--dry-run", "--image", PINNED, "--wait", "--schedule", "0 3 * * *"]) == 2


def test_a_token_command_is_rerun_when_its_token_ages_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "count"
    script = tmp_path / "mint.py"
    script.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "print(f'token-{n}')\n"
    )
    monkeypatch.setenv(TOKEN_COMMAND_ENV, f"{sys.executable} {script}")
    credentials = client_arguments(HOST, None)["credentials"]
    assert isinstance(credentials, CommandTokenCredentials)
    config = kfp_server_api.Configuration(host=HOST)
    credentials.refresh_api_key_hook(config)
    credentials.refresh_api_key_hook(config)  # still fresh: not minted again
    assert config.api_key["authorization"] == "token-1"
    credentials.max_age_s = 0  # aged out: every request mints a new one
    credentials.refresh_api_key_hook(config)
    assert config.api_key["authorization"] == "token-2"
    failing = CommandTokenCredentials(f"{sys.executable} -c 'import sys; sys.exit(\"no credentials\")'")
    with pytest.raises(ConfigError, match="no credentials"):
        failing.token()


class FakeRuns:
    """kfp.Client.get_run answering a scripted sequence of states."""

    def __init__(self, *states: str) -> None:
        self.states = list(states)

    def get_run(self, run_id: str) -> V2beta1Run:
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return V2beta1Run(run_id=run_id, state=state)


@pytest.mark.parametrize(
    ("states", "final"),
    [
        (("PENDING", "RUNNING", "SUCCEEDED"), "SUCCEEDED"),
        (("RUNNING", "FAILED"), "FAILED"),
        (("RUNNING", "CANCELING", "CANCELED"), "CANCELED"),  # kfp's own waiter would wait out its timeout here
        (("RUNNING",), "TIMED_OUT"),
    ],
)
def test_wait_ends_on_every_final_state(states: tuple[str, ...], final: str) -> None:
    assert wait_for_run(FakeRuns(*states), "r-1", timeout_s=0.05, poll_s=0.01) == final


def test_submit_wait_fails_the_job_when_the_run_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = mock.create_autospec(kfp.Client, instance=True)
    client.get_pipeline_id.return_value = "p-1"
    client.list_pipeline_versions.return_value = V2beta1ListPipelineVersionsResponse(
        pipeline_versions=[V2beta1PipelineVersion(pipeline_version_id="v-1")]
    )
    client.create_experiment.return_value = V2beta1Experiment(experiment_id="e-1")
    client.run_pipeline.return_value = V2beta1Run(run_id="r-9")
    client.get_run.side_effect = FakeRuns("RUNNING", "FAILED").get_run
    monkeypatch.setattr(kfp, "Client", lambda **kwargs: client)
    monkeypatch.setattr("pipeline.submit.time.sleep", lambda seconds: None)
    argv = ["submit", "--host", HOST, "--preset", "smoke", "--image", PINNED]
    assert main([*argv, "--wait"]) == 1
    assert "run r-9 finished: FAILED" in capsys.readouterr().out
    client.get_run.side_effect = FakeRuns("SUCCEEDED").get_run
    assert main([*argv, "--wait"]) == 0
    assert main(argv) == 0  # without --wait: submitted is success
