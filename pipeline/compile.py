"""Compile the pipeline to its IR YAML (what Kubeflow runs), deterministically.

The committed ``pipeline/compiled/autoft_pipeline.yaml`` is the default preset compiled with the default
cluster settings; tests/test_pipeline_compile.py fails when it is stale (`autoft compile` refreshes it).
It names the local tag of the step image, which no registry serves, and says so in its first lines: it is
for review and for local runs. What a cluster runs comes from `make release` (pipeline/release.py), which
compiles the same pipeline against the pushed image's digest.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from components.runtime import refuse_visible_passwords
from kfp import compiler

from autoft.config import AutoFTConfig, urls_with_passwords
from autoft.errors import ConfigError
from autoft.methods import ALL_METHODS
from pipeline.autoft_pipeline import build_pipeline
from pipeline.cluster import ClusterSettings
from pipeline.release import is_pinned

COMPILED_PIPELINE = Path(__file__).resolve().parent / "compiled" / "autoft_pipeline.yaml"
# The first lines of a pipeline compiled against a tag (a YAML comment: the upload ignores it).
PLACEHOLDER_NOTE = (
    "# NOT DEPLOYABLE AS IS: the steps name the image {image!r}, a mutable local tag that no registry serves.\n"
    "# For a cluster, build, push and compile against the pushed digest in one command:\n"
    "#   make release IMAGE_REGISTRY=REGION-docker.pkg.dev/PROJECT/REPO   (docs/deploy.md)\n"
)


def all_methods() -> list[str]:
    """Every method the pipeline can run: the base methods, then the WiSE-FT variant of each fine-tuned one."""
    return list(ALL_METHODS)


def with_methods(config: AutoFTConfig, methods: list[str]) -> AutoFTConfig:
    """The config with its method list replaced (the compiled branches follow ``config.methods``)."""
    changed = config.model_copy(deep=True)
    changed.methods = list(methods)
    return changed


def compile_pipeline(
    config: AutoFTConfig, package_path: Path = COMPILED_PIPELINE, settings: ClusterSettings | None = None
) -> Path:
    """Write the IR YAML for ``config`` (its methods become the DAG's branches, it becomes the default config).

    The file is replaced in one rename, so a failed compile never leaves a truncated pipeline behind. A config
    holding a password (in a storage or tracking URL) is refused: it would be the parameter's visible default.
    """
    refuse_visible_passwords(urls_with_passwords(config))
    settings = settings or ClusterSettings()
    package_path = Path(package_path)
    package_path.parent.mkdir(parents=True, exist_ok=True)
    # The compiler picks the format from the suffix, so the temporary file keeps ``.yaml``.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{package_path.stem}.", suffix=".yaml", dir=package_path.parent)
    os.close(fd)
    try:
        compiler.Compiler().compile(build_pipeline(config, settings), tmp_name)
        if not is_pinned(settings.step_image):
            compiled = Path(tmp_name).read_text()
            Path(tmp_name).write_text(PLACEHOLDER_NOTE.format(image=settings.step_image) + compiled)
        # mkstemp creates the file private (0600); a compiled pipeline is an ordinary, shared file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, package_path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return package_path


PIPELINE_MAX_BYTES = 16 << 20  # a compiled pipeline of every method is well under 1 MiB


def read_pipeline_spec(package_path: Path = COMPILED_PIPELINE) -> dict[str, Any]:
    """The compiled IR as a mapping (the first YAML document; a second one holds kfp-kubernetes settings)."""
    from autoft.config import parse_yaml_documents

    try:
        text = Path(package_path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the pipeline file {package_path}: {error}") from None
    documents = parse_yaml_documents(text, str(package_path), max_bytes=PIPELINE_MAX_BYTES)
    if not documents or not isinstance(documents[0], dict) or "pipelineInfo" not in documents[0]:
        raise ConfigError(f"{package_path} is not a compiled KFP pipeline (no pipelineInfo)")
    return documents[0]


def pipeline_parameters(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The root parameters of a compiled pipeline: name -> {parameterType, defaultValue, description}."""
    try:
        parameters = spec["root"]["inputDefinitions"]["parameters"]
    except (KeyError, TypeError):
        raise ConfigError(
            "the pipeline file declares no root parameters: not a pipeline `autoft compile` wrote"
        ) from None
    if not isinstance(parameters, dict) or "config_yaml" not in parameters:
        raise ConfigError("the pipeline file has no config_yaml parameter: not a pipeline `autoft compile` wrote")
    return parameters


def compiled_default_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The config the pipeline was compiled from (its config_yaml default), whose methods are the branches."""
    from autoft.config import parse_yaml

    return parse_yaml(pipeline_parameters(spec)["config_yaml"]["defaultValue"], "the pipeline's config_yaml default")
