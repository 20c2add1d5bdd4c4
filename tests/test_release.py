"""Releases name the step image by digest: resolution through the Docker engine's repository digests, the
refusal of images that were never pushed, and a compiled file whose every step is pinned.

The same path against a real registry on loopback (push, resolve, pull by digest, run) is part of
`make e2e-cluster` (tests/test_e2e_cluster.py).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pipeline.compile import COMPILED_PIPELINE
from pipeline.release import (
    compile_release,
    images_in,
    is_pinned,
    release_version,
    repository_of,
    resolve_image_digest,
    unpinned_images,
)

from autoft.config import resolve_config
from autoft.errors import ConfigError

DIGEST = "sha256:" + "0f" * 32


def fake_docker(tmp_path: Path, repo_digests: list[str] | None, exit_code: int = 0) -> str:
    """A `docker` executable answering `docker image inspect` with these RepoDigests."""
    script = tmp_path / "docker"
    script.write_text(
        "#!/bin/sh\n"
        f"[ {exit_code} -ne 0 ] && {{ echo 'Error: No such image: x' >&2; exit {exit_code}; }}\n"
        f"echo '{json.dumps(repo_digests)}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("127.0.0.1:5000/autoft-step:abc123", "127.0.0.1:5000/autoft-step"),
        ("europe-west4-docker.pkg.dev/p/autoft/autoft-step:0.1.0", "europe-west4-docker.pkg.dev/p/autoft/autoft-step"),
        (f"127.0.0.1:5000/autoft-step@{DIGEST}", "127.0.0.1:5000/autoft-step"),
        ("autoft-step", "autoft-step"),
    ],
)
def test_repository_of_keeps_a_registry_port(image: str, repository: str) -> None:
    assert repository_of(image) == repository


def test_digest_comes_from_the_registry_the_image_was_pushed_to(tmp_path: Path) -> None:
    other = "sha256:" + "11" * 32
    docker = fake_docker(tmp_path, [f"docker.io/library/autoft-step@{other}", f"127.0.0.1:5000/autoft-step@{DIGEST}"])
    assert resolve_image_digest("127.0.0.1:5000/autoft-step:abc", docker) == f"127.0.0.1:5000/autoft-step@{DIGEST}"
    pinned = f"r.example/autoft-step@{DIGEST}"
    assert resolve_image_digest(pinned, "/nonexistent/docker") == pinned  # already pinned: no engine asked


@pytest.mark.parametrize(
    ("digests", "exit_code", "message"),
    [
        ([], 0, "never pushed"),  # built locally, not pushed: no digest a cluster could pull
        ([f"other.example/autoft-step@{DIGEST}"], 0, "never pushed"),  # pushed elsewhere only
        (None, 1, "not on this machine"),
    ],
)
def test_unpushed_or_missing_images_are_refused(
    tmp_path: Path, digests: list[str] | None, exit_code: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_image_digest("127.0.0.1:5000/autoft-step:abc", fake_docker(tmp_path, digests, exit_code))
    with pytest.raises(ConfigError, match="give REGISTRY"):
        resolve_image_digest("", "docker")


def test_a_release_pins_every_step_and_names_the_file_by_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_SHA", "feedface" * 5)
    pinned = f"127.0.0.1:5000/autoft-step@{DIGEST}"
    path, image = compile_release(resolve_config(preset="smoke"), pinned, folder=tmp_path)
    assert (path.name, image) == ("autoft_pipeline-feedfacefeed.yaml", pinned)
    assert images_in(path) == {pinned} and unpinned_images(path) == []
    assert "autoft.image" in path.read_text() and pinned in path.read_text()  # prepare tags MLflow with it
    assert release_version(path) == "feedfacefeed-" + "0f" * 6
    # The committed file names the placeholder and says so in its first line.
    assert unpinned_images(COMPILED_PIPELINE) == ["autoft-step:0.1.0"] and not is_pinned("autoft-step:0.1.0")
