"""finetune_grid_point: one full fine-tune of a conventional baseline (ft, flyp) at one lr of its grid."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def finetune_grid_point(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    method: str,
    lr: float,
    run_id: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    checkpoint_root: str,
    prepared: Input[Dataset],
    zeroshot: Input[Model],
    point: Output[Artifact],
    point_metrics: Output[Metrics],
):
    """Fine-tune at ``lr`` and the fixed baselines.weight_decay, keep the best ID-val epoch (early stopping
    after baselines.patience epochs without a better one), then choose the WiSE-FT alpha (wiseft.select_on).

    The method's MLflow run receives this point's curves under ``train/lr<lr>/...`` and ``epoch/lr<lr>/...``.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        method: The grid-tuned method (ft or flyp).
        lr: This point's peak learning rate (one of baselines.lr_grid).
        run_id: The KFP run id (finds the run's MLflow tree).
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        checkpoint_root: Durable storage for the epoch checkpoints (a gs:// prefix); empty uses
            AUTOFT_CHECKPOINT_ROOT, then output_dir/checkpoints. A retry resumes from the last saved epoch.
        prepared: The prepare_data output (ID train, ID val, OOD-val).
        zeroshot: The zero-shot model fine-tuning starts from.
        point: Output folder: model/ (best ID-val epoch), wiseft/ (its WiSE-FT model) and finetune.json.
        point_metrics: Output metrics for the Kubeflow UI: lr, best ID-val, best epoch, epochs run.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from autoft.baselines import MODEL_FOLDERS, grid_hparams, grid_point_name
    from autoft.contracts import FinetuneSummary
    from autoft.durable import CHECKPOINT_ROOT_ENV, DurableCheckpoints
    from autoft.stages import stage_finetune
    from autoft.threads import configure_threads
    from components.runtime import EpochProgress, load_step_config, move_into, open_runs

    config = load_step_config(config_yaml, config_overrides, methods)
    configure_threads(parallel=None)  # the grid's points run side by side where they share a machine
    config.check_method(method, purpose="grid")
    hparams = grid_hparams(config, method, lr)
    name = grid_point_name(lr)
    runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
    # The grid's points are the method's first steps: its runs span them up to select_grid's end.
    runs.start_methods([m for m in (method, f"{method}_wiseft") if m in config.methods])
    point_run = runs.grid_point_run(method, name)  # a nested run of the method's: this point's curves
    curves = EpochProgress(runs.curves_of(point_run), f"fine-tune {method} {name}", config.finetune.epochs)
    scratch = Path(tempfile.mkdtemp(prefix=f"autoft-grid-{method}-{name}-"))
    base = (
        checkpoint_root
        or os.environ.get(CHECKPOINT_ROOT_ENV, "")
        or (f"{output_dir}/checkpoints" if output_dir else "")
    )
    durable = DurableCheckpoints.for_run(base, run_id, f"{method}-grid-{name}").root if base else ""
    try:
        result = stage_finetune(
            config,
            prepared.path,
            zeroshot.path,
            method,
            hparams,
            scratch,
            progress=False,
            observer=curves,
            durable_root=durable,
        )
        out = Path(point.path)
        staged = scratch / "point"
        staged.mkdir()
        for folder in MODEL_FOLDERS:
            shutil.move(str(scratch / folder), str(staged / folder))
        shutil.move(str(scratch / FinetuneSummary.FILE), str(staged / FinetuneSummary.FILE))
        move_into(staged, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    point.metadata.update({"method": method, "lr": lr, "best_id_val": result.best_id_val, "seconds": result.seconds})
    runs.end_grid_point(point_run, lr, result.best_id_val, result.best_epoch, len(result.history))
    point_metrics.log_metric("lr", lr)
    point_metrics.log_metric("best_id_val", result.best_id_val)
    point_metrics.log_metric("best_epoch", result.best_epoch)
    point_metrics.log_metric("epochs_run", len(result.history))
