"""`autoft compile` and `autoft submit`: the commands that need kfp, plugged into the autoft CLI.

pyproject.toml registers :func:`register` under the entry-point group ``autoft.commands``, which
``autoft.cli`` loads; the library itself never imports kfp. Heavy imports wait until a command runs,
so `autoft --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from autoft.cli import add_config_arguments, config_from_args
from autoft.config import DEFAULT_PRESET
from autoft.errors import ConfigError

# Same place as pipeline.compile.COMPILED_PIPELINE, without importing kfp to build the parser.
COMPILED_DEFAULT = Path(__file__).resolve().parent / "compiled" / "autoft_pipeline.yaml"


def cmd_compile(args: argparse.Namespace) -> None:
    if args.image:
        _use_step_image(args.image)
    from pipeline.cluster import ClusterSettings
    from pipeline.compile import all_methods, compile_pipeline, with_methods

    config = config_from_args(args, DEFAULT_PRESET)
    if args.methods == "all":
        config = with_methods(config, all_methods())
    settings = ClusterSettings(
        search_parallelism=args.search_parallelism,
        accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count,
    )
    path = compile_pipeline(config, Path(args.output) if args.output else COMPILED_DEFAULT, settings)
    print(f"compiled the pipeline for methods {config.methods} (default config: preset {config.preset!r}) -> {path}")


def _use_step_image(image: str) -> None:
    """Point the components at another image; it is read when they are imported, so only before that."""
    import sys

    loaded = sys.modules.get("components.image")
    if loaded is not None and image != loaded.STEP_IMAGE:
        raise ConfigError(f"--image {image!r}: the components were already loaded with {loaded.STEP_IMAGE!r}")
    from components.image import STEP_IMAGE_ENV

    os.environ[STEP_IMAGE_ENV] = image


def cmd_submit(args: argparse.Namespace) -> None:
    from pipeline.submit import client_arguments, execute, plan_submission

    config = config_from_args(args, DEFAULT_PRESET)
    plan = plan_submission(
        config,
        host=args.host,
        namespace=args.namespace,
        package_path=Path(args.package),
        version_name=args.version_name,
        experiment=args.experiment,
        run_name=args.run_name,
        params=args.params,
        schedule=args.schedule,
        service_account=args.service_account,
        enable_caching=args.enable_caching,
    )
    if args.dry_run:
        print(json.dumps({"client": _shown_client_arguments(args), **plan.to_json()}, indent=2, sort_keys=True))
        return
    import kfp

    client = kfp.Client(**client_arguments(args.host, args.namespace, args.ssl_ca_cert))
    ids = execute(plan, client)
    what = "recurring run" if args.schedule else "run"
    print(f"pipeline {plan.pipeline_name} version {plan.version_name}: {what} {plan.run_name!r} in {plan.experiment!r}")
    print(json.dumps(ids, indent=2, sort_keys=True))


def _shown_client_arguments(args: argparse.Namespace) -> dict[str, object]:
    """kfp.Client's arguments as a dry run shows them: credentials are named, never printed."""
    from pipeline.submit import client_arguments

    shown: dict[str, object] = {}
    for key, value in client_arguments(args.host, args.namespace, args.ssl_ca_cert).items():
        shown[key] = "<set>" if key == "existing_token" else (type(value).__name__ if key == "credentials" else value)
    return shown


def register(sub: argparse._SubParsersAction) -> None:
    """Add `compile` and `submit` to the autoft command line."""
    compile_parser = sub.add_parser(
        "compile",
        help="compile the Kubeflow pipeline to its IR YAML (pipeline/compiled/autoft_pipeline.yaml)",
        description="Compile the pipeline. The preset (default: digits) becomes the default of its config_yaml "
        "parameter and its methods the DAG's branches; the output is deterministic, so an unchanged pipeline "
        "compiles to an identical file. Set AUTOFT_STEP_IMAGE (or --image) for another step image.",
    )
    add_config_arguments(compile_parser)
    compile_parser.add_argument(
        "--methods",
        choices=["config", "all"],
        default="config",
        help="config: one branch per method of the preset/config (default); all: every method and WiSE-FT variant",
    )
    compile_parser.add_argument(
        "--output", help="where to write the IR YAML (default: pipeline/compiled/autoft_pipeline.yaml)"
    )
    compile_parser.add_argument(
        "--image", help="step image for every component (default: $AUTOFT_STEP_IMAGE or the built-in tag)"
    )
    compile_parser.add_argument(
        "--search-parallelism",
        type=int,
        default=4,
        help="most search workers of one method running at once (KFP fixes this limit at compile time)",
    )
    compile_parser.add_argument(
        "--accelerator-type", default="nvidia.com/gpu", help="GPU resource of search, fine-tuning and evaluation"
    )
    compile_parser.add_argument(
        "--accelerator-count", type=int, default=1, help="GPUs per search, fine-tuning and evaluation step (0: CPU)"
    )
    compile_parser.set_defaults(handler=cmd_compile)

    submit = sub.add_parser(
        "submit",
        help="upload the compiled pipeline (version = git commit) and start a run or a recurring run on Kubeflow",
        description="Upload pipeline/compiled/autoft_pipeline.yaml as a pipeline version named by the git commit "
        "(reused if it exists), then create a run in an experiment with the preset's config as parameters, or a "
        "recurring run with --schedule (one at a time, no catch-up). Credentials: $KFP_TOKEN as a bearer token, "
        "else a mounted KFP service-account token ($KF_PIPELINES_SA_TOKEN_PATH), else kubeconfig.",
    )
    add_config_arguments(submit)
    submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    submit.add_argument("--namespace", help="Kubeflow profile namespace for the experiment and runs (multi-user)")
    submit.add_argument("--experiment", help="experiment name (default: autoft-<preset>)")
    submit.add_argument("--run-name", help="run name (default: autoft-<preset>-<version>)")
    submit.add_argument("--version-name", help="pipeline version name (default: the git commit, 12 hex digits)")
    submit.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another pipeline parameter, e.g. --param search_workers=8 --param gate_min_gain=0.005",
    )
    submit.add_argument("--schedule", metavar="CRON", help="create a recurring run on this cron schedule instead")
    submit.add_argument(
        "--service-account", default="autoft-pipeline-runner", help="Kubernetes service account of the run's pods"
    )
    submit.add_argument(
        "--package", default=str(COMPILED_DEFAULT), help="the compiled pipeline to upload (default: the committed one)"
    )
    submit.add_argument("--enable-caching", action="store_true", help="let KFP reuse outputs of identical steps")
    submit.add_argument("--ssl-ca-cert", help="CA bundle for the KFP endpoint")
    submit.add_argument("--dry-run", action="store_true", help="print exactly what would be sent (JSON) and exit")
    submit.set_defaults(handler=cmd_submit)
