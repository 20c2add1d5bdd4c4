"""build_zeroshot: the zero-shot CLIP classifier every method starts from."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def build_zeroshot(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    run_id: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    prepared: Input[Dataset],
    zeroshot: Output[Model],
):
    """Build the zero-shot classifier: image tower plus a head of averaged, normalised prompt embeddings.

    Every search trial and fine-tuning run starts from these weights, and WiSE-FT interpolates towards them.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        run_id: The KFP run id (finds the run's MLflow tree; the zeroshot method's run spans this step).
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        prepared: The prepare_data output: class names and prompt templates come from its data.json.
        zeroshot: Output folder: model.safetensors and model_card.json.
    """
    from autoft.stages import stage_zeroshot
    from autoft.threads import configure_threads
    from components.runtime import load_step_config, open_runs, stopwatch

    config = load_step_config(config_yaml, config_overrides, methods)
    configure_threads()
    runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
    own = [m for m in ("zeroshot",) if m in config.methods]  # the zero-shot model is its only work
    runs.start_methods(own)
    with stopwatch() as timing:
        stage_zeroshot(config, prepared.path, zeroshot.path)
    runs.end_methods(own)
    zeroshot.metadata.update(
        {
            "method": "zeroshot",
            "model": config.model.name,
            "pretrained": config.model.pretrained,
            "head_mode": config.model.head_mode,
            "seconds": timing["seconds"],
        }
    )
