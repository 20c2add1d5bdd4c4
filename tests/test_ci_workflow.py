"""The retraining workflow ships what it builds: the step image is built and pushed by commit, the pipeline is
compiled against its digest, credentials are short-lived (OIDC), and a failed run fails the job.

`make lint-manifests` runs actionlint on the same file; these tests hold the properties actionlint cannot
know about.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "retrain.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def run_lines(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def uses(job: dict[str, Any]) -> list[str]:
    return [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]


def test_no_long_lived_token_anywhere() -> None:
    text = WORKFLOW.read_text()
    assert "secrets." not in text  # configuration is in variables; credentials come from OIDC
    assert "KFP_TOKEN:" not in text and "credentials_json" not in text


def test_release_builds_pushes_and_pins_the_image(workflow: dict[str, Any]) -> None:
    release = workflow["jobs"]["release"]
    assert release["needs"] == "check"
    assert release["permissions"]["id-token"] == "write"
    assert "google-github-actions/auth" in uses(release)
    auth = next(s for s in release["steps"] if s.get("uses", "").startswith("google-github-actions/auth"))
    assert set(auth["with"]) >= {"workload_identity_provider", "service_account"}
    # `make release` = images tagged by commit, pushed, and compiled against the pushed digest.
    assert "make release IMAGE_REGISTRY=" in run_lines(release)
    assert "actions/upload-artifact" in uses(release)


def test_submit_uploads_the_release_and_waits_for_the_run(workflow: dict[str, Any]) -> None:
    submit = workflow["jobs"]["submit"]
    assert submit["needs"] == "release"
    assert submit["permissions"]["id-token"] == "write"
    assert {"google-github-actions/auth", "actions/download-artifact"} <= set(uses(submit))
    script = run_lines(submit)
    assert '--package "$PACKAGE"' in script and "--wait" in script
    assert "KFP_TOKEN_COMMAND=" in script  # a fresh ID token whenever the last one ages out
    assert submit["env"]["PACKAGE"].startswith("build/release/")


def test_the_committed_pipeline_is_checked_before_anything_ships(workflow: dict[str, Any]) -> None:
    check = run_lines(workflow["jobs"]["check"])
    assert "autoft compile" in check and "git diff --exit-code -- pipeline/compiled/" in check
