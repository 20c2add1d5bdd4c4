"""finetune: final fine-tuning with the searched hyperparameters, then the WiSE-FT alpha."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def finetune(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    method: str,
    run_id: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    checkpoint_root: str,
    prepared: Input[Dataset],
    zeroshot: Input[Model],
    hparams: Input[Artifact],
    model: Output[Model],
    wiseft_model: Output[Model],
    summary: Output[Artifact],
    finetune_metrics: Output[Metrics],
):
    """Fine-tune from the zero-shot weights, keep the best ID-val epoch, and pick the WiSE-FT alpha (wiseft.select_on).

    The method's MLflow run receives the per-step and per-epoch curves (loss, each term, lr, ID-val), the
    machine's CPU/memory/GPU use while it trains, and both classifiers as MLflow (pyfunc) models.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        method: The fine-tuned method with a search (autoft, ft_oodval or autoft_ce); ft and flyp use the grid steps.
        run_id: The KFP run id (finds the run's MLflow tree).
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        checkpoint_root: Durable storage for the epoch checkpoints (a gs:// prefix); empty uses
            AUTOFT_CHECKPOINT_ROOT, then output_dir/checkpoints. A retry resumes from the last saved epoch.
        prepared: The prepare_data output (ID train and ID val).
        zeroshot: The zero-shot model fine-tuning starts from.
        hparams: The select_best output of the method's own search or, for a control such as autoft_ce, of
            the search it borrows lr and weight decay from.
        model: Output: the fine-tuned classifier (the best ID-val epoch).
        wiseft_model: Output: its WiSE-FT interpolation with the zero-shot model (alpha per wiseft.select_on).
        summary: Output JSON (schema autoft.finetune/v2): hyperparameters, every epoch, the alpha sweep.
        finetune_metrics: Output metrics for the Kubeflow UI: best ID-val, best epoch, peak lr, WiSE-FT alpha.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from autoft.contracts import FinetuneSummary
    from autoft.distributed import resolve_nproc
    from autoft.durable import CHECKPOINT_ROOT_ENV, DurableCheckpoints
    from autoft.methods import hparams_source
    from autoft.stages import finetune_hparams, stage_finetune
    from autoft.threads import configure_threads
    from components.runtime import EpochProgress, load_step_config, move_into, open_runs, publish_final_model

    config = load_step_config(config_yaml, config_overrides, methods)
    configure_threads()
    config.check_method(method, purpose="finetune")
    chosen = finetune_hparams(method, {hparams_source(method): Path(hparams.path)})
    runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
    # The method's last step (and its WiSE-FT variant's only one): their runs span this step's work.
    own = [m for m in (method, f"{method}_wiseft") if m in config.methods]
    runs.start_methods(own)
    curves = EpochProgress(runs.training_observer(method), f"fine-tune {method}", config.finetune.epochs)
    # Epoch checkpoints and both models are written to scratch space first; only the two models and the
    # summary become artifacts (TMPDIR may point at a larger volume on a cluster).
    scratch = Path(tempfile.mkdtemp(prefix=f"autoft-finetune-{method}-"))
    # Epochs also go to durable storage keyed by run and method: a retried attempt (a new pod) resumes there.
    base = (
        checkpoint_root
        or os.environ.get(CHECKPOINT_ROOT_ENV, "")
        or (f"{output_dir}/checkpoints" if output_dir else "")
    )
    durable = DurableCheckpoints.for_run(base, run_id, method).root if base else ""
    if not durable:
        print("no checkpoint_root or AUTOFT_CHECKPOINT_ROOT: epochs stay in this pod, and a retry starts over")
    try:
        with runs.system_metrics(method):
            result = stage_finetune(
                config,
                prepared.path,
                zeroshot.path,
                method,
                chosen,
                scratch,
                progress=False,
                observer=curves,
                nproc=resolve_nproc("auto"),  # one process per GPU this pod was given (DDP); one on CPU
                durable_root=durable,
            )
        move_into(scratch / "model", Path(model.path))
        move_into(scratch / "wiseft", Path(wiseft_model.path))
        move_into(scratch / FinetuneSummary.FILE, Path(summary.path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    publish_final_model(
        config,
        runs,
        run_id,
        method,
        result,
        (model, wiseft_model, summary, finetune_metrics),
        {"seconds": result.seconds},
    )
