"""prepare_data: validate the run's config, write the split manifests, start the run's MLflow tree."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def prepare_data(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    candidate_method: str,
    run_id: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    step_image: str,
    prepared: Output[Dataset],
    eval_shards: int = 0,
) -> list[str]:
    """Validate the config and prepare the data; returns the evaluate loop's items: the eval set names (one
    evaluate task each), or with ``eval_shards`` that many comma-joined groups of them.

    The prepared folder holds split manifests (paths or URIs plus labels) and the OOD-val subset; large
    datasets stay where they are and are referenced. Every bad parameter is reported here, before any
    compute. This first step also starts the pipeline's MLflow run (spanning the whole pipeline) and
    records every split as an MLflow dataset (each method's child run starts with its own first step).

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for (its DAG has one branch per method).
        candidate_method: The model the gate judges and the registry receives (autoft or autoft_wiseft; empty
            when the pipeline runs no AutoFT); checked here so a typo fails before any compute.
        run_id: The KFP run id; the MLflow pipeline run is tagged with it.
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        step_image: The image the steps run in (fixed at compile time; a digest when deployed).
        prepared: Output folder: data.json (the index of splits) and one manifest per split.
        eval_shards: Evaluate tasks: 0 for one per eval set (a cluster: each in its own pod, all at once); N
            deals the sets into N tasks (one machine: fewer process start-ups; kfp.local runs 2 at a time).
    """
    from autoft.config import save_config
    from autoft.stages import stage_prepare
    from autoft.threads import configure_threads
    from components.runtime import check_candidate, load_step_config, open_runs, shard_eval_sets, stopwatch
    from components.tracking import git_sha, package_version, run_url

    config = load_step_config(config_yaml, config_overrides, methods)
    configure_threads()
    check_candidate(candidate_method, config.methods)
    shard_eval_sets([], eval_shards)  # a bad value fails before any compute
    runs = open_runs(
        config,
        mlflow_tracking_uri,
        output_dir,
        run_id,
        start=True,
        **{
            "autoft.preset": config.preset,
            "autoft.dataset": config.data.dataset,
            "autoft.metric": config.metric,
            "autoft.image": step_image,
            "autoft.version": package_version(),
            "autoft.kfp_run_url": run_url(run_id),
            "mlflow.source.git.commit": git_sha() or "unknown",
        },
    )
    with stopwatch() as timing:
        data = stage_prepare(config, prepared.path)
        save_config(config, f"{prepared.path}/config.yaml")
    runs.log_config(runs.parent_id, config)
    # Each method's run, created by the method's first step, copies these dataset inputs.
    runs.log_datasets([runs.parent_id], data, config.data.root or str(data.extra.get("source", "")))
    prepared.metadata.update(
        {
            "dataset": data.dataset,
            "preset": config.preset,
            "num_classes": len(data.class_names),
            "ood_val_set": data.ood_val_set,
            "ood_tests": list(data.ood_tests),
            "eval_sets": data.eval_sets,
            "ood_val_indices_hash": data.ood_val_indices_hash,
            "mlflow_run_id": runs.parent_id,
            "seconds": timing["seconds"],
        }
    )
    return shard_eval_sets(list(data.eval_sets), eval_shards)
