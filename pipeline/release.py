"""Deployable pipeline files: the step image pinned by digest, the file named by the commit.

A tag such as ``autoft-step:0.1.0`` is mutable: a pipeline version that names it runs whatever the tag
points to on the day a pod pulls it. A release therefore resolves the pushed image to its registry digest
(``REGISTRY/autoft-step@sha256:...``) and compiles the pipeline against that, so a pipeline version named
by a commit always runs that commit's image. `make release`, `autoft release` and `autoft submit --image`
all come through :func:`resolve_image_digest`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from autoft.errors import ConfigError

if TYPE_CHECKING:
    from autoft.config import AutoFTConfig
    from pipeline.cluster import ClusterSettings

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
RELEASE_DIR = Path(__file__).resolve().parents[1] / "build" / "release"
RELEASE_STEM = "autoft_pipeline"
VERSION_SHA_LENGTH = 12


def is_pinned(image: str) -> bool:
    """True for an image named by its content digest (``repo@sha256:<64 hex>``)."""
    return bool(DIGEST.search(image))


def repository_of(image: str) -> str:
    """``registry:port/path/name:tag`` -> ``registry:port/path/name`` (a port's colon is not a tag)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def resolve_image_digest(image: str, docker: str = "docker") -> str:
    """``image`` pinned by the digest its registry serves, asked of the local Docker engine.

    Docker records a repository digest when an image is pushed to (or pulled from) a registry, so the
    image must have been pushed first (`make push-images`). A reference that is already pinned is
    returned unchanged, which is how CI and tests pass a digest they already know.
    """
    if is_pinned(image):
        return image
    if not image or any(c.isspace() for c in image):
        raise ConfigError(f"step image {image!r}: give REGISTRY/autoft-step:TAG or REGISTRY/autoft-step@sha256:...")
    try:
        found = subprocess.run(
            [docker, "image", "inspect", "--format", "{{json .RepoDigests}}", image],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(
            f"cannot resolve the digest of {image!r}: {docker} failed ({error}); pass the pinned form "
            "REGISTRY/autoft-step@sha256:... instead"
        ) from None
    if found.returncode != 0:
        raise ConfigError(
            f"step image {image!r} is not on this machine's Docker engine ({found.stderr.strip()}); build and "
            "push it (`make images push-images IMAGE_REGISTRY=...`) or pass REGISTRY/autoft-step@sha256:..."
        )
    repository = repository_of(image)
    digests = [d for d in json.loads(found.stdout or "[]") or [] if repository_of(d) == repository]
    if not digests:
        raise ConfigError(
            f"step image {image!r} has no digest from {repository!r}: it was built but never pushed there; "
            "run `make push-images IMAGE_REGISTRY=...` first (a pipeline must not name a mutable tag)"
        )
    return digests[0]


def release_path(version: str, folder: Path = RELEASE_DIR) -> Path:
    """Where the deployable pipeline of ``version`` (a commit) is written."""
    return Path(folder) / f"{RELEASE_STEM}-{version}.yaml"


def images_in(package_path: Path) -> set[str]:
    """Every container image a compiled pipeline names."""
    from pipeline.compile import read_pipeline_spec

    executors = read_pipeline_spec(package_path).get("deploymentSpec", {}).get("executors", {})
    return {e["container"]["image"] for e in executors.values() if "container" in e}


def unpinned_images(package_path: Path) -> list[str]:
    """Images of a compiled pipeline that are named by a tag, not a digest (none in a release)."""
    return sorted(image for image in images_in(package_path) if not is_pinned(image))


def git_version(repo: Path | None = None) -> str:
    """The pipeline version name: the commit (12 hex digits), ``-dirty`` when tracked files changed.

    CI provides GITHUB_SHA; elsewhere git is asked. Uploading the same commit twice reuses its version.
    """
    repo = repo or Path(__file__).resolve().parents[1]
    sha = os.environ.get("GITHUB_SHA", "").strip()
    dirty = False
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
            ).stdout.strip()
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            dirty = bool(status.strip())
        except (OSError, subprocess.CalledProcessError) as error:
            raise ConfigError(f"cannot name the pipeline version: git failed ({error}); pass --version-name") from None
    return sha[:VERSION_SHA_LENGTH] + ("-dirty" if dirty else "")


def compile_release(
    config: AutoFTConfig,
    image: str,
    *,
    settings: ClusterSettings | None = None,
    folder: Path = RELEASE_DIR,
    version: str | None = None,
) -> tuple[Path, str]:
    """Compile ``config``'s pipeline against ``image`` pinned by digest; returns (file, pinned image)."""
    from dataclasses import replace

    from pipeline.cluster import ClusterSettings
    from pipeline.compile import compile_pipeline

    pinned = resolve_image_digest(image)
    settings = replace(settings or ClusterSettings(), step_image=pinned)
    path = compile_pipeline(config, release_path(version or git_version(), folder), settings)
    left = unpinned_images(path)
    if left:
        raise ConfigError(f"{path} still names images by tag: {left}")
    return path, pinned


def release_version(package_path: Path) -> str:
    """A pipeline version name: the commit, plus the step image's digest (12 hex) when it is pinned.

    Rebuilding the image of one commit gives a new digest (the build date is a label), so the digest
    keeps two builds of a commit apart instead of silently reusing the first upload.
    """
    digests = sorted({image.rsplit("@sha256:", 1)[1][:12] for image in images_in(package_path) if is_pinned(image)})
    return git_version() + "".join(f"-{digest}" for digest in digests)
