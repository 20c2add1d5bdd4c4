"""finetune: final fine-tuning with the searched hyperparameters, then the WiSE-FT sweep."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def finetune(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    method: str,
    prepared: Input[Dataset],
    zeroshot: Input[Model],
    hparams: Input[Artifact],
    model: Output[Model],
    wiseft_model: Output[Model],
    summary: Output[Artifact],
    finetune_metrics: Output[Metrics],
):
    """Fine-tune from the zero-shot weights, keep the best ID-val epoch, and pick the WiSE-FT alpha on ID-val.

    ``hparams`` is the select_best output of the method's own search, or, for a control such as
    ``autoft_ce``, of the search it borrows lr and weight decay from. Outputs: the fine-tuned model, its
    WiSE-FT interpolation with the zero-shot model, and a summary (epoch history, alpha sweep).
    """
    import shutil
    import tempfile
    from pathlib import Path

    from autoft.methods import BASE_METHODS
    from autoft.stages import WISEFT_FILE, hparams_for, stage_finetune
    from components.runtime import load_step_config, move_into, stopwatch

    config = load_step_config(config_yaml, config_overrides, methods)
    source = BASE_METHODS[method].hparams_from or method
    chosen = hparams_for(method, {source: Path(hparams.path)})
    # Epoch checkpoints and both models are written to scratch space first; only the two models and the
    # summary become artifacts (TMPDIR may point at a larger volume on a cluster).
    scratch = Path(tempfile.mkdtemp(prefix=f"autoft-finetune-{method}-"))
    try:
        with stopwatch() as timing:
            result = stage_finetune(config, prepared.path, zeroshot.path, chosen, scratch, progress=False)
        move_into(scratch / "model", Path(model.path))
        move_into(scratch / "wiseft", Path(wiseft_model.path))
        move_into(scratch / WISEFT_FILE, Path(summary.path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    alpha = result["wiseft"]["best_alpha"]
    model.metadata.update(
        {
            "method": method,
            "best_epoch": result["best_epoch"],
            "best_id_val": result["best_id_val"],
            "hparams": result["hparams"],
            "seconds": timing["seconds"],
        }
    )
    wiseft_model.metadata.update({"method": f"{method}_wiseft", "wiseft_alpha": alpha, "finetuned_from": method})
    summary.metadata.update({"method": method, "seconds": timing["seconds"]})
    finetune_metrics.log_metric("best_id_val", float(result["best_id_val"]))
    finetune_metrics.log_metric("best_epoch", int(result["best_epoch"]))
    finetune_metrics.log_metric("peak_lr", float(result["peak_lr"]))
    finetune_metrics.log_metric("wiseft_alpha", float(alpha))
