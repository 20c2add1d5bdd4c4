"""select_grid: keep the best ID-val point of a conventional baseline's lr grid."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def select_grid(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    method: str,
    run_id: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    points: Input[list[Artifact]],
    model: Output[Model],
    wiseft_model: Output[Model],
    summary: Output[Artifact],
    finetune_metrics: Output[Metrics],
):
    """Choose the grid point with the best ID-val (ties: the smaller lr) and pass on its models and summary.

    Its outputs are those of the finetune step (model, wiseft_model, summary), so evaluation and the report
    treat a grid-tuned baseline like any fine-tuned method; the summary lists every point of the grid.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        method: The grid-tuned method (ft or flyp).
        run_id: The KFP run id (finds the run's MLflow tree).
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        points: The finetune_grid_point outputs, one per lr of the grid.
        model: Output: the chosen point's fine-tuned classifier (its best ID-val epoch).
        wiseft_model: Output: its WiSE-FT interpolation with the zero-shot model (alpha per wiseft.select_on).
        summary: Output JSON (schema autoft.finetune/v2) of the chosen point, with every point under `grid`.
        finetune_metrics: Output metrics for the Kubeflow UI: chosen lr, best ID-val, best epoch, WiSE-FT alpha.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from autoft.baselines import stage_select_grid
    from autoft.contracts import FinetuneSummary
    from components.runtime import load_step_config, move_into, open_runs, publish_final_model

    config = load_step_config(config_yaml, config_overrides, methods)
    scratch = Path(tempfile.mkdtemp(prefix=f"autoft-select-grid-{method}-"))
    try:
        result = stage_select_grid(config, method, [Path(p.path) for p in points], scratch)
        move_into(scratch / "model", Path(model.path))
        move_into(scratch / "wiseft", Path(wiseft_model.path))
        move_into(scratch / FinetuneSummary.FILE, Path(summary.path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
    runs.log(
        runs.method_run(method),
        params={f"grid/lr{p.lr:g}/best_id_val": f"{p.best_id_val:.4f}" for p in result.grid},
    )
    publish_final_model(
        config,
        runs,
        run_id,
        method,
        result,
        (model, wiseft_model, summary, finetune_metrics),
        {"lr_grid": [p.lr for p in result.grid]},
    )
