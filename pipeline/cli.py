"""`autoft compile`, `autoft release` and `autoft submit`: the commands that need kfp, plugged into the CLI.

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
from autoft.outputs import check_output

STEP_IMAGE_ENV = "AUTOFT_STEP_IMAGE"  # components.image.STEP_IMAGE_ENV, without importing the components

# Same place as pipeline.compile.COMPILED_PIPELINE, without importing kfp to build the parser.
COMPILED_DEFAULT = Path(__file__).resolve().parent / "compiled" / "autoft_pipeline.yaml"


def cluster_settings(args: argparse.Namespace):  # -> pipeline.cluster.ClusterSettings (kfp import deferred)
    from pipeline.cluster import ClusterSettings

    if args.search_parallelism < 1:
        raise ConfigError(f"--search-parallelism {args.search_parallelism}: at least 1 search worker must run at once")
    if args.accelerator_count < 0:
        raise ConfigError(f"--accelerator-count {args.accelerator_count}: must be >= 0 (0: CPU only)")
    image = {"step_image": args.image} if getattr(args, "image", None) else {}
    return ClusterSettings(
        search_parallelism=args.search_parallelism,
        accelerator_type=args.accelerator_type,
        accelerator_count=args.accelerator_count,
        **image,
    )


def cmd_compile(args: argparse.Namespace) -> None:
    from pipeline.compile import all_methods, compile_pipeline, with_methods

    config = config_from_args(args, DEFAULT_PRESET)
    if args.methods == "all":
        config = with_methods(config, all_methods())
    settings = cluster_settings(args)
    output = check_output(args.output, "file", where="--output") if args.output else COMPILED_DEFAULT
    path = compile_pipeline(config, output, settings)
    print(f"compiled the pipeline for methods {config.methods} (default config: preset {config.preset!r}) -> {path}")


def cmd_release(args: argparse.Namespace) -> None:
    from pipeline.release import RELEASE_DIR, compile_release

    config = config_from_args(args, DEFAULT_PRESET)
    folder = Path(args.output_dir) if args.output_dir else RELEASE_DIR
    path, pinned = compile_release(config, args.image, settings=cluster_settings(args), folder=folder)
    print(f"step image: {pinned}")
    print(f"deployable pipeline (upload it in the Kubeflow UI, or `autoft submit --package`): {path}")


def submit_package(args: argparse.Namespace, config) -> Path:  # config: AutoFTConfig
    """The pipeline file to upload: a fresh release for ``--image``, else ``--package`` if pinned."""
    from pipeline.release import RELEASE_DIR, compile_release, unpinned_images

    image = args.image or os.environ.get(STEP_IMAGE_ENV, "").strip()
    if args.package:
        package = Path(args.package)
        if not package.is_file():
            raise ConfigError(f"--package {package}: no such file; build one with `make release IMAGE_REGISTRY=...`")
        unpinned = unpinned_images(package)
        if unpinned and not args.allow_unpinned_image:
            raise ConfigError(
                f"{package} names the step image by tag ({', '.join(unpinned)}): a cluster would run whatever the "
                "tag holds when it pulls; upload a file from `make release` or give --image (pushed), or pass "
                "--allow-unpinned-image for a cluster that loads local tags (kind, minikube)"
            )
        return package
    if not image:
        raise ConfigError(
            "autoft submit needs the image the cluster pulls: --image REGISTRY/autoft-step:TAG (pushed; its digest "
            "is compiled in) or --package FILE from `make release` (the committed pipeline names a local placeholder "
            "tag)"
        )
    path, _ = compile_release(config, image, settings=cluster_settings(args), folder=RELEASE_DIR)
    return path


def cmd_submit(args: argparse.Namespace) -> int:
    from components.runtime import refuse_visible_passwords

    from autoft.config import urls_with_passwords

    config = config_from_args(args, DEFAULT_PRESET)
    refuse_visible_passwords(urls_with_passwords(config))  # before any image is resolved or compiled
    if args.wait_timeout < 1:
        raise ConfigError(f"--wait-timeout {args.wait_timeout}: must be at least 1 second")
    if args.wait and args.schedule:
        raise ConfigError("--wait waits for one run; a --schedule starts runs later (drop one of them)")
    package = submit_package(args, config)
    from pipeline.submit import client_arguments, execute, plan_submission, wait_for_run

    plan = plan_submission(
        config,
        host=args.host,
        namespace=args.namespace,
        package_path=package,
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
        return 0
    if args.ssl_ca_cert and not Path(args.ssl_ca_cert).is_file():
        raise ConfigError(f"--ssl-ca-cert {args.ssl_ca_cert}: no such file")
    import warnings

    import kfp

    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": every call, no action to take.
        warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
        client = kfp.Client(**client_arguments(args.host, args.namespace, args.ssl_ca_cert))
    ids = execute(plan, client)
    what = "recurring run" if args.schedule else "run"
    print(f"pipeline {plan.pipeline_name} version {plan.version_name}: {what} {plan.run_name!r} in {plan.experiment!r}")
    print(json.dumps(ids, indent=2, sort_keys=True), flush=True)
    if not args.wait:
        return 0
    state = wait_for_run(client, ids["run_id"], args.wait_timeout)
    print(f"run {ids['run_id']} finished: {state}")
    return 0 if state == "SUCCEEDED" else 1


def _shown_client_arguments(args: argparse.Namespace) -> dict[str, object]:
    """kfp.Client's arguments as a dry run shows them: credentials are named, never printed."""
    from pipeline.submit import client_arguments

    shown: dict[str, object] = {}
    for key, value in client_arguments(args.host, args.namespace, args.ssl_ca_cert).items():
        shown[key] = "<set>" if key == "existing_token" else (type(value).__name__ if key == "credentials" else value)
    return shown


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Compile-time scheduling choices (pipeline.cluster.ClusterSettings), shared by compile/release/submit."""
    parser.add_argument(
        "--search-parallelism",
        type=int,
        default=4,
        help="most search workers of one method running at once (KFP fixes this limit at compile time)",
    )
    parser.add_argument(
        "--accelerator-type", default="nvidia.com/gpu", help="GPU resource of search, fine-tuning and evaluation"
    )
    parser.add_argument(
        "--accelerator-count", type=int, default=1, help="GPUs per search, fine-tuning and evaluation step (0: CPU)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add `compile`, `release` and `submit` to the autoft command line."""
    compile_parser = sub.add_parser(
        "compile",
        help="compile the Kubeflow pipeline to its IR YAML (pipeline/compiled/autoft_pipeline.yaml)",
        description="Compile the pipeline. The preset (default: digits) becomes the default of its config_yaml "
        "parameter and its methods the DAG's branches; the output is deterministic, so an unchanged pipeline "
        "compiles to an identical file. It names the step image by tag (AUTOFT_STEP_IMAGE or --image; default "
        "the local placeholder autoft-step:0.1.0): for a cluster use `autoft release`.",
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
    add_cluster_arguments(compile_parser)
    compile_parser.set_defaults(handler=cmd_compile)

    release = sub.add_parser(
        "release",
        help="compile the deployable pipeline: the pushed step image pinned by digest, the file named by the commit",
        description="Resolve --image (pushed to its registry) to the digest the registry serves, and compile the "
        "pipeline against REGISTRY/autoft-step@sha256:... into build/release/autoft_pipeline-<commit>.yaml: the "
        "file to upload in the Kubeflow UI. `make release IMAGE_REGISTRY=...` builds, pushes and runs this.",
    )
    add_config_arguments(release)
    release.add_argument(
        "--image",
        required=True,
        help="the pushed step image: REGISTRY/autoft-step:TAG or its @sha256:... form",
    )
    release.add_argument("--output-dir", help="folder for the pipeline file (default: build/release)")
    add_cluster_arguments(release)
    release.set_defaults(handler=cmd_release)

    submit = sub.add_parser(
        "submit",
        help="release, upload (version = git commit) and start a run or a recurring run on Kubeflow",
        description="Compile the pipeline against the pushed --image pinned by digest (or take --package from "
        "`make release`), upload it as a pipeline version named by the git commit and the image digest (reused if "
        "it exists), then create a run in an experiment with the preset's config as parameters, or a recurring run "
        "with --schedule (one at a time, no catch-up); --wait follows the run and exits 1 unless it succeeds. "
        "Credentials: $KFP_TOKEN as a bearer token (e.g. a short-lived OIDC ID token), else a mounted KFP "
        "service-account token ($KF_PIPELINES_SA_TOKEN_PATH), else kubeconfig.",
    )
    add_config_arguments(submit)
    submit.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    submit.add_argument("--namespace", help="Kubeflow profile namespace for the experiment and runs (multi-user)")
    submit.add_argument("--experiment", help="experiment name (default: autoft-<preset>)")
    submit.add_argument("--run-name", help="run name (default: autoft-<preset>-<version>)")
    submit.add_argument(
        "--version-name", help="pipeline version name (default: the git commit, 12 hex digits, and the image digest)"
    )
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
        "--image", help="the pushed step image to compile against by digest (default: $AUTOFT_STEP_IMAGE)"
    )
    submit.add_argument("--package", help="upload this pipeline file (from `make release`) instead of compiling one")
    submit.add_argument(
        "--allow-unpinned-image",
        action="store_true",
        help="accept a --package naming its image by tag (clusters that load local tags: kind, minikube)",
    )
    add_cluster_arguments(submit)
    submit.add_argument("--enable-caching", action="store_true", help="let KFP reuse outputs of identical steps")
    submit.add_argument("--wait", action="store_true", help="follow the run; exit 1 unless it ends SUCCEEDED")
    submit.add_argument(
        "--wait-timeout", type=int, default=24 * 3600, metavar="SECONDS", help="how long --wait waits (default: 24 h)"
    )
    submit.add_argument("--ssl-ca-cert", help="CA bundle for the KFP endpoint")
    submit.add_argument("--dry-run", action="store_true", help="print exactly what would be sent (JSON) and exit")
    submit.set_defaults(handler=cmd_submit)
