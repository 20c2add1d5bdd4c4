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
    are what the next run's gate compares against. Returns ``models:/<name>/<version>``.
    """
    import json
    from pathlib import Path

    from autoft.config import ConfigError
    from autoft.tracking import TAG_KFP_RUN_ID
    from components.gate.decision import OOD_AVG_TAG
    from components.runtime import check_candidate, load_step_config, open_tracker, start_pipeline_run

    config = load_step_config(config_yaml, config_overrides, methods)
    check_candidate(candidate_method, config.methods)
    model = {"autoft": autoft, "autoft_wiseft": autoft_wiseft}.get(candidate_method)
    if model is None:
        raise ConfigError(f"no model artifact was passed for the candidate {candidate_method!r}")
    row = json.loads(Path(results.path).read_text())["methods"][candidate_method]
    name = registered_model.strip() or config.tracking.registered_model
    tracker = open_tracker(config, mlflow_tracking_uri, output_dir)
    start_pipeline_run(tracker, run_id, mlflow_run_id)
    tags = {
        "method": candidate_method,
        "preset": config.preset,
        "metric": config.metric,
        "id_test": str(row["id_test"]),
        "wiseft_alpha": str(row["wiseft_alpha"]),
        TAG_KFP_RUN_ID: run_id,
    }
    version = tracker.log_model(Path(model.path), name=name, artifact_path=f"model/{candidate_method}", tags=tags)
    if version is None:
        raise RuntimeError(f"registering {name} failed at {tracker.safe_uri}")
    decision = tracker.promote_if_better(
        name, version.version, OOD_AVG_TAG, float(row["ood_avg"]), min_delta=gate_min_gain
    )
    alias = "champion" if decision.promoted else "candidate"
    print(f"registered {candidate_method} as models:/{name}/{version.version} (alias {alias}): {decision.reason}")
    return f"models:/{name}/{version.version}"
