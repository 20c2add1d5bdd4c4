"""register: put the candidate model that passed the gate into the MLflow model registry as the champion."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def register(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    run_id: str,
    candidate_method: str,
    registered_model: str,
    gate_min_gain: float,
    mlflow_tracking_uri: str,
    output_dir: str,
    mlflow_run_id: str,
    results: Input[Artifact],
    autoft: Input[Model] = None,
    autoft_wiseft: Input[Model] = None,
) -> str:
    """Register the candidate's classifier folder as a new model version and make it the ``champion``.

    Only reached when the gate passed. autoft.tracking uploads the folder (``model.safetensors`` +
    ``model_card.json``) under the pipeline's MLflow run, creates the version (alias ``candidate``) and
    moves ``champion`` to it if its OOD average still beats the champion's, re-checked here in case
    another run promoted a model since the gate. The version's tags (preset, metric, ood_avg, KFP run)
    are what the next run's gate compares against.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        run_id: The KFP run id (a tag of the model version).
        candidate_method: The method registered (autoft or autoft_wiseft).
        registered_model: Name in the MLflow registry; empty uses tracking.registered_model from the config.
        gate_min_gain: The gate's margin, re-checked against the champion at registration time.
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        mlflow_run_id: The pipeline's MLflow run (from the report step).
        results: The report step's results.json.
        autoft: The autoft model, when the run has it.
        autoft_wiseft: The autoft_wiseft model, when the run has it.

    Returns:
        The registered version as models:/<name>/<version>.
    """
    from pathlib import Path

    from autoft.contracts import Results
    from autoft.errors import ConfigError
    from autoft.tracking import TAG_KFP_RUN_ID
    from components.gate.decision import OOD_AVG_TAG
    from components.runtime import check_candidate, load_step_config, open_tracker, start_pipeline_run

    config = load_step_config(config_yaml, config_overrides, methods)
    check_candidate(candidate_method, config.methods)
    model = {"autoft": autoft, "autoft_wiseft": autoft_wiseft}.get(candidate_method)
    if model is None:
        raise ConfigError(f"no model artifact was passed for the candidate {candidate_method!r}")
    row = Results.load(results.path).methods[candidate_method]
    name = registered_model.strip() or config.tracking.registered_model
    tracker = open_tracker(config, mlflow_tracking_uri, output_dir)
    start_pipeline_run(tracker, run_id, mlflow_run_id)
    tags = {
        "method": candidate_method,
        "preset": config.preset,
        "metric": config.metric,
        "id_test": str(row.id_test),
        "wiseft_alpha": str(row.wiseft_alpha),
        TAG_KFP_RUN_ID: run_id,
    }
    version = tracker.log_model(Path(model.path), name=name, artifact_path=f"model/{candidate_method}", tags=tags)
    if version is None:
        raise RuntimeError(f"registering {name} failed at {tracker.safe_uri}")
    decision = tracker.promote_if_better(
        name, version.version, OOD_AVG_TAG, float(row.ood_avg), min_delta=gate_min_gain
    )
    alias = "champion" if decision.promoted else "candidate"
    print(f"registered {candidate_method} as models:/{name}/{version.version} (alias {alias}): {decision.reason}")
    return f"models:/{name}/{version.version}"
